//! Signing keys made with openssl at test time, and tokens minted with them.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::path::PathBuf;

/// The HMAC secret of every test server with HMAC auth.
pub const SECRET: &str = "a test secret that is at least 32 bytes long";

/// A private key and its public key file for each public-key family.
pub struct Keys {
    pub dir: PathBuf,
}

impl Keys {
    pub fn create() -> Keys {
        let dir = super::temp_dir("keys");
        let openssl = |args: &[&str]| super::openssl(&dir, args);
        for (name, args) in [
            ("rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..]),
            ("ec256", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..]),
            ("ec384", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"][..]),
            ("ed25519", &["-algorithm", "ED25519"][..]),
        ] {
            let key = format!("{name}.key");
            let mut genpkey = vec!["genpkey"];
            genpkey.extend_from_slice(args);
            genpkey.extend_from_slice(&["-out", &key]);
            openssl(&genpkey);
            openssl(&["pkey", "-in", &key, "-pubout", "-out", &format!("{name}.pub")]);
        }
        Keys { dir }
    }

    /// The public key files, as `--auth-public-key` values.
    pub fn public_keys(&self) -> Vec<String> {
        ["rsa", "ec256", "ec384", "ed25519"]
            .iter()
            .map(|name| self.dir.join(format!("{name}.pub")).display().to_string())
            .collect()
    }

    /// The private key that signs `alg`.
    pub fn private_key(&self, alg: Algorithm) -> PathBuf {
        let name = match alg {
            Algorithm::ES256 => "ec256",
            Algorithm::ES384 => "ec384",
            Algorithm::EdDSA => "ed25519",
            _ => "rsa",
        };
        self.dir.join(format!("{name}.key"))
    }

    /// A token signed with `alg` carrying `claims`.
    pub fn mint(&self, alg: Algorithm, claims: &serde_json::Value) -> String {
        let key = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                EncodingKey::from_secret(SECRET.as_bytes())
            }
            _ => {
                let pem = std::fs::read(self.private_key(alg)).expect("the private key");
                match alg {
                    Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
                    Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                    _ => EncodingKey::from_rsa_pem(&pem),
                }
                .expect("a signing key")
            }
        };
        jsonwebtoken::encode(&Header::new(alg), claims, &key).expect("a token")
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Seconds since the epoch, plus `delta`.
pub fn now_plus(delta: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    now + delta
}

/// A token signed with the test secret (HS256).
pub fn hmac_token(claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).expect("a token")
}
