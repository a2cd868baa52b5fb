//! Token verification per algorithm (`AUTH`, `?token=`, `Authorization`):
//! what one core verifies per second. Keys are made with openssl when the
//! benchmark starts. Run with `cargo bench --bench auth`.

use crier::auth::{Auth, KeySources};
use divan::{Bencher, black_box};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::path::PathBuf;
use std::process::Command;
use std::sync::LazyLock;

const SECRET: &str = "a benchmark secret of at least thirty-two bytes";

fn main() {
    divan::main();
}

/// Key files for each public-key family, made once.
static KEYS: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("crier-bench-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    for (name, args) in [
        ("rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..]),
        ("ec256", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..]),
        ("ec384", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"][..]),
        ("ed25519", &["-algorithm", "ED25519"][..]),
    ] {
        let key = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        let made = Command::new("openssl").arg("genpkey").args(args).arg("-out").arg(&key).status();
        assert!(made.expect("openssl").success(), "openssl genpkey {name}");
        let made = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public)
            .status();
        assert!(made.expect("openssl").success(), "openssl pkey {name}");
    }
    dir
});

/// A server's verifier holding one key of `alg`'s family, and a token it accepts.
fn setup(alg: Algorithm) -> (Auth, String) {
    let name = match alg {
        Algorithm::ES256 => "ec256",
        Algorithm::ES384 => "ec384",
        Algorithm::EdDSA => "ed25519",
        _ => "rsa",
    };
    let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
    let sources = KeySources {
        hmac_secret: hmac.then(|| SECRET.to_string()),
        public_keys: if hmac { vec![] } else { vec![KEYS.join(format!("{name}.pub"))] },
        ..KeySources::default()
    };
    let auth = Auth::load(&sources, "", "", false).expect("keys");
    let key = if hmac {
        EncodingKey::from_secret(SECRET.as_bytes())
    } else {
        let pem = std::fs::read(KEYS.join(format!("{name}.key"))).expect("the private key");
        match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .expect("a signing key")
    };
    let claims = serde_json::json!({
        "sub": "bench", "exp": 4_000_000_000u64, "subscribe": ["news.*", "scores.*"], "publish": ["chat.*"]
    });
    let token = jsonwebtoken::encode(&Header::new(alg), &claims, &key).expect("a token");
    (auth, token)
}

#[divan::bench(args = [
    Algorithm::HS256, Algorithm::HS384, Algorithm::HS512,
    Algorithm::RS256, Algorithm::RS384, Algorithm::RS512,
    Algorithm::PS256, Algorithm::PS384, Algorithm::PS512,
    Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA,
])]
fn verify(bencher: Bencher, alg: Algorithm) {
    let (auth, token) = setup(alg);
    bencher.bench(|| auth.verify(black_box(token.as_bytes())).is_ok());
}
