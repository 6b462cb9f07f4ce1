//! Keys and tokens made in tests: an ES256 key from `ring`, an RS256 key
//! from `openssl genpkey` (ring cannot make RSA keys), JWKS documents for
//! them, and signed or forged tokens. Shared by the unit tests of
//! `oauth.rs` and the integration tests (`tests/it/oauth.rs`).
#![allow(dead_code)]

use base64::prelude::{Engine as _, BASE64_URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{json, Value};

/// A signing key and its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub jwk: Value,
    sign: Signer,
}

enum Signer {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

fn b64(bytes: &[u8]) -> String {
    BASE64_URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// A fresh P-256 key.
    pub fn es256(kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..]),
        });
        SigningKey {
            kid: kid.into(),
            jwk,
            sign: Signer::Es256(pair),
        }
    }

    /// A fresh 2048-bit RSA key, or `None` without `openssl`.
    pub fn rs256(kid: &str) -> Option<SigningKey> {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
            ])
            .output()
            .ok()?;
        // OpenSSL 3 writes PKCS#1 in DER; others PKCS#8.
        let pair = RsaKeyPair::from_pkcs8(&out.stdout)
            .or_else(|_| RsaKeyPair::from_der(&out.stdout))
            .ok()?;
        let components: signature::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
        let jwk = json!({
            "kty": "RSA", "kid": kid, "alg": "RS256",
            "n": b64(&components.n), "e": b64(&components.e),
        });
        Some(SigningKey {
            kid: kid.into(),
            jwk,
            sign: Signer::Rs256(pair),
        })
    }

    /// The key's modulus (RSA) or point (EC): what an attacker would
    /// use as an HMAC secret.
    pub fn public_bytes(&self) -> Vec<u8> {
        match &self.sign {
            Signer::Es256(pair) => pair.public_key().as_ref().to_vec(),
            Signer::Rs256(pair) => pair.public().as_ref().to_vec(),
        }
    }

    /// A token with `claims`, signed, with this key's `alg` and `kid`.
    pub fn token(&self, claims: &Value) -> String {
        let alg = match self.sign {
            Signer::Es256(_) => "ES256",
            Signer::Rs256(_) => "RS256",
        };
        self.token_with_header(&json!({"alg": alg, "typ": "JWT", "kid": self.kid}), claims)
    }

    /// A token with any header, signed by this key.
    pub fn token_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match &self.sign {
            Signer::Es256(pair) => pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Rs256(pair) => {
                let mut sig = vec![0u8; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                sig
            }
        };
        format!("{input}.{}", b64(&sig))
    }
}

/// A JWKS document holding `keys`.
pub fn jwks_document(keys: &[&SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// An unsigned token of any header and claims, with `signature`.
pub fn forged(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// HS256 over a token's signing input with `secret`.
pub fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}
