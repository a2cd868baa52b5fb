//! `crier token`: mints a signed token for development and tests, with the
//! HMAC secret the server verifies with (the same flags and environment as
//! `crier serve`), or a private key for the public-key algorithms.

use anyhow::{Context, bail};
use clap::Args;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Secret;

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The user (`sub` claim).
    #[arg(long)]
    pub sub: String,
    /// Channels (comma-separated globs) the holder may subscribe to.
    #[arg(long, default_value = "")]
    pub subscribe: String,
    /// Channels (comma-separated globs) the holder may publish to.
    #[arg(long, default_value = "")]
    pub publish: String,
    /// Lifetime: seconds, or a number with s, m, h or d (`exp` claim).
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Signing algorithm: HS256/384/512 (HMAC secret), RS*/PS* (RSA), ES256/384, EdDSA.
    #[arg(long, default_value = "HS256")]
    pub alg: String,
    /// HMAC secret (as for `crier serve`).
    #[arg(long, env = "CRIER_AUTH_HMAC_SECRET", hide_env_values = true)]
    pub auth_hmac_secret: Option<Secret>,
    /// File of HMAC secrets (as for `crier serve`): signs with the first.
    #[arg(long, env = "CRIER_AUTH_HMAC_SECRET_FILE")]
    pub auth_hmac_secret_file: Option<PathBuf>,
    /// PEM private key (PKCS#8) for the public-key algorithms.
    #[arg(long)]
    pub private_key: Option<PathBuf>,
}

#[derive(Serialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
    subscribe: Vec<String>,
    publish: Vec<String>,
}

/// Prints the token on standard output.
pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let alg: Algorithm =
        args.alg.parse().map_err(|_| anyhow::anyhow!("--alg: unknown algorithm {}", args.alg))?;
    let key = encoding_key(&args, alg)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?;
    let globs = |list: &str| {
        list.split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from).collect()
    };
    let claims = Claims {
        sub: args.sub.clone(),
        iat: now.as_secs(),
        exp: now.as_secs() + parse_ttl(&args.ttl)?,
        subscribe: globs(&args.subscribe),
        publish: globs(&args.publish),
    };
    let token =
        jsonwebtoken::encode(&Header::new(alg), &claims, &key).context("signing the token")?;
    println!("{token}");
    Ok(())
}

fn encoding_key(args: &TokenArgs, alg: Algorithm) -> anyhow::Result<EncodingKey> {
    let family = alg.family();
    if family == AlgorithmFamily::Hmac {
        let secret = match (&args.auth_hmac_secret, &args.auth_hmac_secret_file) {
            (Some(secret), None) => secret.0.as_bytes().to_vec(),
            // The first secret of the file: the one servers list first.
            (None, Some(path)) => std::fs::read(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .split(|&b| b == b'\n')
                .map(<[u8]>::trim_ascii)
                .find(|line| !line.is_empty())
                .unwrap_or_default()
                .to_vec(),
            _ => bail!("{alg:?} needs --auth-hmac-secret or --auth-hmac-secret-file"),
        };
        if secret.len() < crate::auth::MIN_SECRET {
            bail!("an HMAC secret must be at least {} bytes", crate::auth::MIN_SECRET);
        }
        return Ok(EncodingKey::from_secret(&secret));
    }
    let Some(path) = &args.private_key else {
        bail!("{alg:?} needs --private-key");
    };
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let key = match family {
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    };
    key.with_context(|| format!("--private-key {}: not a key for {alg:?}", path.display()))
}

/// `90`, `90s`, `15m`, `2h`, `7d` in seconds.
fn parse_ttl(ttl: &str) -> anyhow::Result<u64> {
    let (number, unit) = match ttl.char_indices().last() {
        Some((at, unit @ ('s' | 'm' | 'h' | 'd'))) => (&ttl[..at], unit),
        _ => (ttl, 's'),
    };
    let number: u64 =
        number.parse().map_err(|_| anyhow::anyhow!("--ttl: expected e.g. 90s, 15m, 1h or 7d"))?;
    let scale = match unit {
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => 1,
    };
    Ok(number.saturating_mul(scale))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_lifetimes() {
        assert_eq!(super::parse_ttl("90").ok(), Some(90));
        assert_eq!(super::parse_ttl("15m").ok(), Some(900));
        assert_eq!(super::parse_ttl("2h").ok(), Some(7200));
        assert_eq!(super::parse_ttl("7d").ok(), Some(604_800));
        assert!(super::parse_ttl("soon").is_err());
    }
}
