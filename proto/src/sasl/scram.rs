//! SCRAM-SHA-256 (RFC 5802, RFC 7677), server side, without channel
//! binding. The server stores only the salt, the iteration count and two
//! keys derived from the password ([`ScramKeys`]), never the password.
//! No IO; the nonce and the keys come from the driver.

use base64::prelude::{Engine as _, BASE64_STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{saslprep, Failure, Step};

type HmacSha256 = Hmac<Sha256>;

/// RFC 7677 §4: at least 4096 iterations.
pub const MIN_ITERATIONS: u32 = 4096;
/// More iterations than this is a typo or an attack on the server's CPU.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// What the server keeps for a user (RFC 5802 §3).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// The salt.
    pub salt: Vec<u8>,
    /// The PBKDF2 iteration count.
    pub iterations: u32,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(***)")
    }
}

impl ScramKeys {
    /// Derives the keys from a (SASLprepped) password.
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ScramKeys {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        ScramKeys {
            salt: salt.to_vec(),
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Whether `password` derives these keys, in constant time.
    pub fn matches_password(&self, password: &[u8]) -> bool {
        let derived = ScramKeys::derive(password, &self.salt, self.iterations);
        derived.stored_key.ct_eq(&self.stored_key).into()
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[derive(Debug)]
enum Phase {
    ClientFirst,
    Lookup {
        gs2_header: String,
        bare: String,
        client_nonce: String,
    },
    ClientFinal {
        gs2_header: String,
        auth_prefix: String,
        nonce: String,
        keys: ScramKeys,
    },
    /// The server signature went out as a challenge; RFC 5034 has no
    /// success-with-data, so the client answers it with an empty response.
    Verified,
    Done,
}

/// The SCRAM-SHA-256 exchange.
#[derive(Debug)]
pub struct ScramSha256 {
    phase: Phase,
}

impl Default for ScramSha256 {
    fn default() -> Self {
        ScramSha256 {
            phase: Phase::ClientFirst,
        }
    }
}

impl ScramSha256 {
    /// Feeds one response.
    pub fn step(&mut self, response: &[u8]) -> Step {
        let Ok(text) = std::str::from_utf8(response) else {
            self.phase = Phase::Done;
            return Step::Failed(Failure::Malformed);
        };
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::ClientFirst if text.is_empty() => {
                // No initial response: an empty challenge asks for it.
                self.phase = Phase::ClientFirst;
                Step::Challenge(Vec::new())
            }
            Phase::ClientFirst => self.client_first(text),
            Phase::ClientFinal {
                gs2_header,
                auth_prefix,
                nonce,
                keys,
            } => self.client_final(text, &gs2_header, &auth_prefix, &nonce, &keys),
            Phase::Verified if text.is_empty() => Step::Authenticated,
            Phase::Lookup { .. } | Phase::Verified | Phase::Done => {
                Step::Failed(Failure::Malformed)
            }
        }
    }

    fn client_first(&mut self, text: &str) -> Step {
        // gs2-header: "n" or "y" (no channel binding), then authzid.
        let mut parts = text.splitn(3, ',');
        let (Some(cb), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
        else {
            return Step::Failed(Failure::Malformed);
        };
        if cb != "n" && cb != "y" {
            return Step::Failed(Failure::Malformed);
        }
        let mut fields = bare.split(',');
        let (Some(n), Some(r)) = (fields.next(), fields.next()) else {
            return Step::Failed(Failure::Malformed);
        };
        if n.starts_with("m=") {
            // RFC 5802 §5.1: an unknown mandatory extension.
            return Step::Failed(Failure::Malformed);
        }
        let (Some(name), Some(client_nonce)) = (n.strip_prefix("n="), r.strip_prefix("r=")) else {
            return Step::Failed(Failure::Malformed);
        };
        if client_nonce.is_empty() || !client_nonce.bytes().all(is_nonce_char) {
            return Step::Failed(Failure::Malformed);
        }
        let Some(user) = unescape(name)
            .and_then(|u| saslprep(&u))
            .filter(|u| !u.is_empty())
        else {
            return Step::Failed(Failure::Malformed);
        };
        let acting_for = match authzid {
            "" => None,
            a => {
                let Some(a) = a.strip_prefix("a=").and_then(unescape) else {
                    return Step::Failed(Failure::Malformed);
                };
                match saslprep(&a) {
                    Some(a) if a == user => None,
                    Some(a) if !a.is_empty() => Some(a),
                    _ => return Step::Failed(Failure::AuthzidRefused),
                }
            }
        };
        self.phase = Phase::Lookup {
            gs2_header: format!("{cb},{authzid},"),
            bare: bare.to_owned(),
            client_nonce: client_nonce.to_owned(),
        };
        Step::ScramLookup {
            user,
            authzid: acting_for,
        }
    }

    /// Continues after [`Step::ScramLookup`] with the user's keys (made-up
    /// ones for an unknown user, so that the exchange looks the same) and
    /// a fresh random server nonce of printable characters other than `,`.
    pub fn keys(&mut self, keys: ScramKeys, server_nonce: &str) -> Step {
        let Phase::Lookup {
            gs2_header,
            bare,
            client_nonce,
        } = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return Step::Failed(Failure::Malformed);
        };
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64_STANDARD.encode(&keys.salt),
            keys.iterations
        );
        self.phase = Phase::ClientFinal {
            gs2_header,
            auth_prefix: format!("{bare},{server_first},"),
            nonce,
            keys,
        };
        Step::Challenge(server_first.into_bytes())
    }

    fn client_final(
        &mut self,
        text: &str,
        gs2_header: &str,
        auth_prefix: &str,
        nonce: &str,
        keys: &ScramKeys,
    ) -> Step {
        let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
            return Step::Failed(Failure::Malformed);
        };
        let mut fields = without_proof.split(',');
        let (Some(c), Some(r)) = (fields.next(), fields.next()) else {
            return Step::Failed(Failure::Malformed);
        };
        let Ok(proof) = BASE64_STANDARD.decode(proof) else {
            return Step::Failed(Failure::Malformed);
        };
        if c.strip_prefix("c=") != Some(&BASE64_STANDARD.encode(gs2_header))
            || r.strip_prefix("r=") != Some(nonce)
            || proof.len() != 32
        {
            return Step::Failed(Failure::Rejected);
        }
        let auth_message = format!("{auth_prefix}{without_proof}");
        let signature = hmac(&keys.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let stored: [u8; 32] = Sha256::digest(&client_key).into();
        if !bool::from(stored.ct_eq(&keys.stored_key)) {
            return Step::Failed(Failure::Rejected);
        }
        let server_signature = hmac(&keys.server_key, auth_message.as_bytes());
        self.phase = Phase::Verified;
        Step::Challenge(format!("v={}", BASE64_STANDARD.encode(server_signature)).into_bytes())
    }
}

/// RFC 5802 §7: printable ASCII except `,`.
fn is_nonce_char(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

/// RFC 5802 §5.1: `=2C` is `,` and `=3D` is `=`; any other `=` is an error.
fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "2C" => ',',
            "3D" => '=',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc7677_keys() -> ScramKeys {
        let salt = BASE64_STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        ScramKeys::derive(b"pencil", &salt, 4096)
    }

    #[test]
    fn rfc7677_example_exchange() {
        let mut m = ScramSha256::default();
        assert_eq!(
            m.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"),
            Step::ScramLookup {
                user: "user".into(),
                authzid: None,
            }
        );
        assert_eq!(
            m.keys(rfc7677_keys(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"),
            Step::Challenge(
                b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
                    .to_vec()
            )
        );
        assert_eq!(
            m.step(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
            Step::Challenge(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec())
        );
        assert_eq!(m.step(b""), Step::Authenticated);
    }

    #[test]
    fn wrong_proof_or_nonce_is_rejected() {
        let mut m = ScramSha256::default();
        m.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        m.keys(rfc7677_keys(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        assert_eq!(
            m.step(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
            Step::Failed(Failure::Rejected)
        );
        let mut m = ScramSha256::default();
        m.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        m.keys(rfc7677_keys(), "other");
        assert_eq!(
            m.step(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
            Step::Failed(Failure::Rejected)
        );
    }

    #[test]
    fn malformed_client_first_fails() {
        for bad in [
            &b"p=tls-unique,,n=user,r=abc"[..],
            b"n,,n=user",
            b"n,,r=abc,n=user",
            b"n,,n=us=41er,r=abc",
            b"n,,m=ext,n=user,r=abc",
            b"x",
        ] {
            assert_eq!(
                ScramSha256::default().step(bad),
                Step::Failed(Failure::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            ScramSha256::default().step(b"n,a=other,n=user,r=abc"),
            Step::ScramLookup {
                user: "user".into(),
                authzid: Some("other".into()),
            }
        );
        assert_eq!(
            ScramSha256::default().step(b"n,,n=a=2Cb=3D,r=abc"),
            Step::ScramLookup {
                user: "a,b=".into(),
                authzid: None,
            }
        );
    }

    #[test]
    fn keys_check_passwords() {
        let keys = rfc7677_keys();
        assert!(keys.matches_password(b"pencil"));
        assert!(!keys.matches_password(b"pen"));
    }
}
