//! Who may do what: tokens and the one permission check every transport's
//! commands (and `POST /publish`) pass through.
//!
//! Auth is off unless a key is configured; then everything is allowed (but
//! `PUBLISH` under `--deny-publish`). With a key, a connection starts with the
//! anonymous permissions (`--anonymous-subscribe`, `--anonymous-publish`) and
//! gains a token's with `AUTH` (or `?token=` / `Authorization: Bearer` on the
//! web side).
//!
//! Tokens are JWTs checked by jsonwebtoken (one crypto backend: RustCrypto).
//! The algorithm named in a token's header only selects among the keys of its
//! family that the server holds: an HMAC token is never checked against a
//! public key (no key confusion), `none` is not an algorithm jsonwebtoken
//! knows, and several keys of one family may be held at once (rotation).
//!
//! Permissions are Redis globs, matched with the broker's matcher. For a
//! `PSUBSCRIBE` the rule is conservative: see [`Permissions::allows_pattern`].

use anyhow::{Context, bail};
use bytes::Bytes;
use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::broker::glob::{Glob, literal_prefix};

/// Longest token accepted; longer ones are refused before any parsing.
pub const MAX_TOKEN: usize = 8 * 1024;
/// Clock leeway on `exp` and `nbf`, in seconds.
const LEEWAY: u64 = 1;
/// Shortest HMAC secret accepted (and signed with, by `crier token`).
pub const MIN_SECRET: usize = 32;

/// What a client asks permission for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Publish,
}

/// Why a token was refused. Every reason gets the same answer on the wire
/// (`ERR invalid token`, HTTP 401); the reason is for the debug log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidToken(pub String);

/// The server's keys and anonymous permissions.
pub struct Auth {
    /// Empty when auth is off.
    keys: Vec<(DecodingKey, &'static str)>,
    anonymous: Arc<Permissions>,
}

impl std::fmt::Debug for Auth {
    /// Never the keys: secrets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("keys", &self.keys.len()).finish_non_exhaustive()
    }
}

/// Where the keys come from (the `serve` and `token` flags).
#[derive(Debug, Default, Clone)]
pub struct KeySources {
    pub hmac_secret: Option<String>,
    pub hmac_secret_file: Option<std::path::PathBuf>,
    pub public_keys: Vec<std::path::PathBuf>,
    pub jwks: Option<std::path::PathBuf>,
}

impl Auth {
    /// Loads the keys; `anonymous_*` are comma-separated globs.
    pub fn load(
        sources: &KeySources,
        anonymous_subscribe: &str,
        anonymous_publish: &str,
        deny_publish: bool,
    ) -> anyhow::Result<Auth> {
        let mut keys = Vec::new();
        for secret in hmac_secrets(sources)? {
            keys.push((DecodingKey::from_secret(&secret), "hmac secret"));
        }
        for path in &sources.public_keys {
            let pem = std::fs::read(path)
                .with_context(|| format!("--auth-public-key: cannot read {}", path.display()))?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .or_else(|_| DecodingKey::from_ec_pem(&pem))
                .or_else(|_| DecodingKey::from_ed_pem(&pem))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "--auth-public-key {}: not a PEM RSA, EC (P-256, P-384) or Ed25519 public key",
                        path.display()
                    )
                })?;
            keys.push((key, "public key"));
        }
        if let Some(path) = &sources.jwks {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--auth-jwks: cannot read {}", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text)
                .with_context(|| format!("--auth-jwks {}: not a JWK set", path.display()))?;
            if set.keys.is_empty() {
                bail!("--auth-jwks {}: no key in the set", path.display());
            }
            for jwk in &set.keys {
                // Public keys only: a shared secret belongs in the secret file.
                if let jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) = jwk.algorithm {
                    bail!("--auth-jwks {}: symmetric (oct) keys are refused", path.display());
                }
                let key = DecodingKey::from_jwk(jwk)
                    .with_context(|| format!("--auth-jwks {}: unusable key", path.display()))?;
                keys.push((key, "jwks key"));
            }
        }
        let anonymous = if keys.is_empty() {
            if !anonymous_subscribe.is_empty() || !anonymous_publish.is_empty() {
                bail!("--anonymous-subscribe and --anonymous-publish need an --auth-* key");
            }
            Permissions::everything(!deny_publish)
        } else {
            Permissions {
                subscribe: Grants::parse(anonymous_subscribe),
                publish: if deny_publish {
                    Grants::none()
                } else {
                    Grants::parse(anonymous_publish)
                },
                expires: None,
            }
        };
        Ok(Auth { keys, anonymous: Arc::new(anonymous) })
    }

    /// No keys: everything allowed (but publishing under `--deny-publish`).
    pub fn off(deny_publish: bool) -> Auth {
        Auth { keys: Vec::new(), anonymous: Arc::new(Permissions::everything(!deny_publish)) }
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// What a client with no token may do.
    pub fn anonymous(&self) -> Arc<Permissions> {
        Arc::clone(&self.anonymous)
    }

    /// Checks a token; returns the permissions it grants.
    pub fn verify(&self, token: &[u8]) -> Result<Permissions, InvalidToken> {
        let invalid = |why: &str| InvalidToken(why.to_string());
        if token.len() > MAX_TOKEN {
            return Err(invalid("longer than 8 KiB"));
        }
        let token = std::str::from_utf8(token).map_err(|_| invalid("not UTF-8"))?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| InvalidToken(e.to_string()))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY;
        validation.validate_nbf = true;
        // crier has no audience of its own: `aud`, like other claims, is ignored.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["sub"]);
        let family = header.alg.family();
        let mut last = invalid("no key for this algorithm");
        for (key, _) in self.keys.iter().filter(|(key, _)| key.family() == family) {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    tracing::debug!(user = %data.claims.sub, "token verified");
                    // The library compares whole seconds; the connection would
                    // be ended at `expires()`: refuse what is already past it.
                    let permissions = Permissions::from_claims(data.claims);
                    if permissions.expires().is_some_and(|at| at <= SystemTime::now()) {
                        return Err(invalid("expired"));
                    }
                    return Ok(permissions);
                }
                Err(error) => last = InvalidToken(error.to_string()),
            }
        }
        Err(last)
    }
}

/// The HMAC secrets: the flag's, or each non-empty line of the file (two
/// lines while a secret is being rotated).
fn hmac_secrets(sources: &KeySources) -> anyhow::Result<Vec<Vec<u8>>> {
    let secrets = match (&sources.hmac_secret, &sources.hmac_secret_file) {
        (Some(_), Some(_)) => bail!("give --auth-hmac-secret or --auth-hmac-secret-file, not both"),
        (Some(secret), None) => vec![secret.as_bytes().to_vec()],
        (None, Some(path)) => {
            let text = std::fs::read(path).with_context(|| {
                format!("--auth-hmac-secret-file: cannot read {}", path.display())
            })?;
            let lines = text.split(|&b| b == b'\n').map(<[u8]>::trim_ascii);
            let secrets: Vec<Vec<u8>> =
                lines.filter(|line| !line.is_empty()).map(<[u8]>::to_vec).collect();
            if secrets.is_empty() {
                bail!("--auth-hmac-secret-file {}: no secret in the file", path.display());
            }
            secrets
        }
        (None, None) => return Ok(Vec::new()),
    };
    if secrets.iter().any(|secret| secret.len() < MIN_SECRET) {
        bail!("an HMAC secret must be at least {MIN_SECRET} bytes");
    }
    Ok(secrets)
}

/// The claims crier reads; others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    /// The user: required, and named in the debug log (never the token).
    sub: String,
    /// Seconds since the epoch; a fraction is allowed (RFC 7519's NumericDate).
    exp: Option<f64>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// What one client may do, and until when.
#[derive(Debug, Clone)]
pub struct Permissions {
    subscribe: Grants,
    publish: Grants,
    /// The token's `exp`, in seconds since the epoch.
    expires: Option<u64>,
}

impl Permissions {
    fn everything(publish: bool) -> Permissions {
        let publish = if publish { Grants::All } else { Grants::none() };
        Permissions { subscribe: Grants::All, publish, expires: None }
    }

    fn from_claims(claims: Claims) -> Permissions {
        Permissions {
            subscribe: Grants::from_globs(claims.subscribe.iter().map(String::as_bytes)),
            publish: Grants::from_globs(claims.publish.iter().map(String::as_bytes)),
            // Whole seconds, rounded down: never later than the token says.
            expires: claims.exp.map(|exp| exp.max(0.0) as u64),
        }
    }

    /// May `action` be done on channel `name`?
    pub fn allows(&self, action: Action, name: &[u8]) -> bool {
        let grants = match action {
            Action::Subscribe => &self.subscribe,
            Action::Publish => &self.publish,
        };
        match grants {
            Grants::All => true,
            Grants::Some(list) => list.iter().any(|grant| grant.glob.matches(name)),
        }
    }

    /// May the client `PSUBSCRIBE` to `pattern`? Only when every channel the
    /// pattern could match is sure to be allowed: some grant is `*`, or is
    /// the same pattern, or is `L*` with `L` free of special characters and
    /// the pattern's literal prefix starts with `L` (then every channel it
    /// matches starts with `L`). Anything else is refused, even when a
    /// smarter analysis could allow it.
    pub fn allows_pattern(&self, pattern: &[u8]) -> bool {
        let list = match &self.subscribe {
            Grants::All => return true,
            Grants::Some(list) => list,
        };
        let prefix = &pattern[..literal_prefix(pattern)];
        list.iter().any(|grant| {
            let text = &grant.text[..];
            if text == pattern {
                return true;
            }
            match text.split_last() {
                Some((b'*', literal)) => {
                    literal_prefix(literal) == literal.len() && prefix.starts_with(literal)
                }
                _ => false,
            }
        })
    }

    /// When a connection holding the token is ended: its `exp`, plus the
    /// leeway verification allows, so the two agree.
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires.map(|secs| UNIX_EPOCH + Duration::from_secs(secs.saturating_add(LEEWAY)))
    }
}

/// Channels allowed for one action.
#[derive(Debug, Clone)]
enum Grants {
    All,
    Some(Arc<[Grant]>),
}

#[derive(Debug)]
struct Grant {
    text: Bytes,
    glob: Glob,
}

impl Grants {
    fn none() -> Grants {
        Grants::Some(Arc::from(Vec::new()))
    }

    /// Comma-separated globs (a flag's value).
    fn parse(globs: &str) -> Grants {
        Grants::from_globs(
            globs.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::as_bytes),
        )
    }

    fn from_globs<'a>(globs: impl Iterator<Item = &'a [u8]>) -> Grants {
        let list: Vec<Grant> =
            globs.map(|g| Grant { text: Bytes::copy_from_slice(g), glob: Glob::new(g) }).collect();
        Grants::Some(Arc::from(list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(subscribe: &[&str]) -> Permissions {
        Permissions {
            subscribe: Grants::from_globs(subscribe.iter().map(|g| g.as_bytes())),
            publish: Grants::none(),
            expires: None,
        }
    }

    #[test]
    fn channels_match_the_granted_globs() {
        let permissions = granted(&["news.*", "chat.room[12]"]);
        assert!(permissions.allows(Action::Subscribe, b"news.eu"));
        assert!(permissions.allows(Action::Subscribe, b"chat.room2"));
        assert!(!permissions.allows(Action::Subscribe, b"chat.room3"));
        assert!(!permissions.allows(Action::Subscribe, b"news"));
        assert!(!permissions.allows(Action::Publish, b"news.eu"));
    }

    #[test]
    fn a_pattern_is_allowed_only_when_surely_covered() {
        let permissions = granted(&["news.*", "scores.?", "x\\*"]);
        let cases: [(&str, bool); 14] = [
            ("news.*", true),       // the same pattern
            ("news.sport.*", true), // every match starts with "news."
            ("news.eu", true),      // a literal under the prefix
            ("news.\\*", true),     // literal prefix "news." before the escape
            ("news.[ab]", true),    // prefix "news." before the class
            ("news*", false),       // would match "newsroom"
            ("news", false),        // not under "news." at all
            ("new?.*", false),      // "newt.x"
            ("[n]ews.*", false),    // unsure: refused
            ("*", false),           // everything
            ("scores.?", true),     // the same pattern, even with a `?`
            ("scores.*", false),    // "scores.10" is not "scores.?"
            ("x\\*", true),         // the same escaped pattern
            ("x*", false),          // a grant with an escape covers only itself
        ];
        for (pattern, expected) in cases {
            assert_eq!(permissions.allows_pattern(pattern.as_bytes()), expected, "{pattern}");
        }
        assert!(granted(&["*"]).allows_pattern(b"[weird"));
        assert!(!granted(&[]).allows_pattern(b"a"));
    }
}
