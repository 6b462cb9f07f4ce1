//! Fuzz target: the SASL step machines (PLAIN, LOGIN, CRAM-MD5,
//! SCRAM-SHA-256) on any sequence of responses, base64 or not, as POP3
//! AUTH would feed them. Never panics; challenges and identities stay
//! bounded by what the client sent; identities handed to the password
//! database are non-empty and SASLprepped (no control characters); a
//! finished SCRAM exchange stays finished.
#![no_main]

use std::sync::OnceLock;

use base64::prelude::{Engine as _, BASE64_STANDARD};
use libfuzzer_sys::fuzz_target;
use mailbag_proto::sasl::scram::ScramKeys;
use mailbag_proto::sasl::oauth::{Format, OAuth};
use mailbag_proto::sasl::{cram_md5::CramMd5, login::Login, plain::Plain, Exchange, Step};

const CHALLENGE: &str = "<1896.697170952@postoffice.example.net>";
const SERVER_NONCE: &str = "3rfcNHYJY1ZVvWVs7j";

/// Deriving keys costs 4096 PBKDF2 rounds: once per process.
fn keys() -> ScramKeys {
    static KEYS: OnceLock<ScramKeys> = OnceLock::new();
    KEYS.get_or_init(|| ScramKeys::derive(b"pencil", b"QSXCR+Q6sek8bf92", 4096))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let mut exchange = match (control & 3, control & 0x18) {
        (0, 0x08) => Exchange::OAuth(OAuth::new(Format::OAuthBearer, control & 0x10 != 0)),
        (1, 0x08) => Exchange::OAuth(OAuth::new(Format::XOAuth2, control & 0x10 != 0)),
        (0, _) => Exchange::Plain(Plain::default()),
        (1, _) => Exchange::Login(Login::default()),
        (2, _) => Exchange::CramMd5(CramMd5::new(CHALLENGE.into())),
        _ => Exchange::ScramSha256(Box::default()),
    };
    let base64 = control & 4 != 0;
    let mut finished = false;
    // LOGIN's user name and SCRAM's nonce come from earlier responses.
    let mut longest = 0;
    for line in input.split(|&b| b == b'\n') {
        // The POP3 core decodes base64 and refuses what does not decode;
        // raw lines reach the mechanism's own parsing with any bytes.
        let decoded;
        let response = if base64 {
            match BASE64_STANDARD.decode(line) {
                Ok(d) => {
                    decoded = d;
                    &decoded[..]
                }
                Err(_) => continue,
            }
        } else {
            line
        };
        longest = longest.max(response.len());
        let mut step = exchange.step(response);
        if let (Step::Token { .. }, Exchange::OAuth(m)) = (&step, &mut exchange) {
            check(&step, longest);
            // The driver refused the token: RFC 7628's status follows.
            step = m.rejected();
            assert!(matches!(step, Step::Challenge(_)), "{step:?}");
        }
        if let (Step::ScramLookup { .. }, Exchange::ScramSha256(m)) = (&step, &mut exchange) {
            check(&step, longest);
            step = m.keys(keys(), SERVER_NONCE);
            assert!(matches!(step, Step::Challenge(_)), "{step:?}");
        }
        check(&step, longest);
        if let Exchange::ScramSha256(_) = exchange {
            if finished {
                assert!(matches!(step, Step::Failed(_)), "{step:?} after the end");
            }
            if matches!(step, Step::Failed(_) | Step::Authenticated) {
                finished = true;
            }
        }
    }
});

/// `longest`: the longest response so far.
fn check(step: &Step, longest: usize) {
    // SASLprep (NFKC) may expand a character up to 18 times.
    let bound = 64 * longest + 64;
    let identity = |s: &str| {
        assert!(!s.is_empty());
        assert!(
            s.len() <= bound,
            "{} octets from responses of at most {longest}",
            s.len()
        );
        assert!(!s.chars().any(char::is_control), "{s:?}");
    };
    match step {
        Step::Challenge(c) => assert!(c.len() <= longest + 256, "{} octets of challenge", c.len()),
        Step::Password {
            user,
            authzid,
            password,
        } => {
            identity(user);
            identity(password.expose());
            if let Some(a) = authzid {
                identity(a);
                assert_ne!(a, user);
            }
        }
        Step::CramMd5 {
            user,
            challenge,
            digest,
        } => {
            identity(user);
            assert_eq!(challenge, CHALLENGE);
            let d = digest.expose();
            assert!(d.len() == 32 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        }
        Step::ScramLookup { user, authzid } => {
            identity(user);
            if let Some(a) = authzid {
                identity(a);
                assert_ne!(a, user);
            }
        }
        Step::Token { user, token } => {
            if let Some(u) = user {
                identity(u);
            }
            let t = token.expose();
            assert!(!t.is_empty() && t.len() <= longest);
            assert!(!t.chars().any(|c| c.is_control() || c == ' '), "{t:?}");
        }
        Step::Authenticated | Step::Failed(_) => {}
    }
}
