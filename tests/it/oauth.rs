//! OAUTHBEARER (RFC 7628) and XOAUTH2 over real TLS sockets, as a mail
//! client would send them: tokens signed by keys made here, a JWKS file,
//! refusals answered with RFC 7628's JSON status, the mechanisms never
//! offered or accepted in the clear, and refusals counted against the
//! same limits as wrong passwords.

use base64::prelude::{Engine as _, BASE64_STANDARD};
use serde_json::{json, Value};

use crate::support::*;
use crate::tls::{implicit, stls};

#[path = "../../src/auth/oauth_testing.rs"]
mod keys;

use keys::{forged, hs256, jwks_document, SigningKey};

const ISSUER: &str = "https://idp.example.test";
/// The JSON status of RFC 7628 §3.2.2, base64.
const INVALID_TOKEN: &str = "+ eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0=\r\n";

fn oauth_config(extra: &str) -> String {
    format!(
        "max_failures_per_address = 100\n{extra}\n[auth.oauth]\njwks_file = \"jwks.json\"\n\
         issuer = \"{ISSUER}\"\naudience = \"mailbag\"\n"
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(email: &str) -> Value {
    json!({"iss": ISSUER, "aud": "mailbag", "email": email, "exp": now() + 600, "nbf": now() - 5})
}

fn oauthbearer(user: Option<&str>, token: &str) -> String {
    let gs2 = user.map_or(String::new(), |u| format!("a={u}"));
    BASE64_STANDARD.encode(format!(
        "n,{gs2},\x01host=localhost\x01port=995\x01auth=Bearer {token}\x01\x01"
    ))
}

fn xoauth2(user: &str, token: &str) -> String {
    BASE64_STANDARD.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

/// RFC 5034 §4: an initial response that would make the AUTH line
/// longer than 255 octets is not sent with it; the client waits for the
/// empty challenge, as a token (hundreds of octets) always needs.
async fn auth<S>(c: &mut crate::tls::Lines<S>, mechanism: &str, message: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    assert_eq!(c.cmd(&format!("AUTH {mechanism}")).await, "+ \r\n");
    c.cmd(message).await
}

async fn start(extra: &str, keys: &[&SigningKey]) -> TestServer {
    let server = TestServer::start_tls(&oauth_config(extra)).await;
    // Read at each check: written after the start, as a rotation would be.
    std::fs::write(server.dir.path().join("jwks.json"), jwks_document(keys)).unwrap();
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_token_logs_in_over_tls_with_either_mechanism() {
    let ec = SigningKey::es256("ec-1");
    let rsa = SigningKey::rs256("rsa-1");
    let mut keys = vec![&ec];
    keys.extend(rsa.as_ref());
    let server = start("", &keys).await;

    let mut c = implicit(&server).await;
    c.send(b"CAPA\r\n").await;
    assert!(c.line().await.starts_with("+OK"));
    let capa = c.body().await;
    assert!(
        capa.iter()
            .any(|l| l.starts_with("SASL ") && l.ends_with(" OAUTHBEARER XOAUTH2")),
        "{capa:?}"
    );
    // The token's email names alice (the default domain's user).
    let token = ec.token(&claims("alice@localhost"));
    let reply = auth(&mut c, "OAUTHBEARER", &oauthbearer(Some("alice"), &token)).await;
    assert!(reply.starts_with("+OK Logged in."), "{reply}");
    assert!(c.cmd("STAT").await.starts_with("+OK"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));

    // XOAUTH2 after STLS, prompted, with an RS256 token when openssl can
    // make the key.
    let token = match &rsa {
        Some(rsa) => rsa.token(&claims("bob@localhost")),
        None => ec.token(&claims("bob@localhost")),
    };
    let mut c = stls(&server).await;
    let reply = auth(&mut c, "XOAUTH2", &xoauth2("bob", &token)).await;
    assert!(reply.starts_with("+OK Logged in."), "{reply}");
    c.cmd("QUIT").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_neither_offered_nor_accepted_in_the_clear() {
    let ec = SigningKey::es256("ec-1");
    // allow_plaintext: even where passwords may go in the clear, tokens
    // may not.
    let server = start("allow_plaintext = true", &[&ec]).await;
    let mut c = server.connect().await;
    c.line().await;
    let (_, capa) = c.multi("CAPA").await;
    let capa = String::from_utf8(capa).unwrap();
    assert!(capa.contains("SASL "), "{capa}");
    assert!(
        !capa.contains("OAUTHBEARER") && !capa.contains("XOAUTH2"),
        "{capa}"
    );
    let short = BASE64_STANDARD.encode("n,,\x01auth=Bearer abc\x01\x01");
    for command in [
        format!("AUTH OAUTHBEARER {short}"),
        "AUTH XOAUTH2".to_string(),
    ] {
        assert_eq!(
            c.cmd(&command).await,
            "-ERR [AUTH] Bearer tokens are accepted only over TLS; use STLS first\r\n"
        );
    }
    // Without [auth.oauth], not even over TLS.
    let plain = TestServer::start_tls("").await;
    let mut c = implicit(&plain).await;
    assert!(c.cmd("AUTH OAUTHBEARER =").await.starts_with("-ERR"));
    plain.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_the_json_status_then_fail() {
    let ec = SigningKey::es256("ec-1");
    let stranger = SigningKey::es256("ec-1");
    let server = start("", &[&ec]).await;
    let mut bad: Vec<(&str, Option<&str>, String)> = vec![
        ("expired", None, ec.token(&json!({"iss": ISSUER, "aud": "mailbag", "email": "alice@localhost", "exp": now() - 3600}))),
        ("not yet valid", None, ec.token(&json!({"iss": ISSUER, "aud": "mailbag", "email": "alice@localhost", "exp": now() + 7200, "nbf": now() + 3600}))),
        ("wrong audience", None, ec.token(&json!({"iss": ISSUER, "aud": "other", "email": "alice@localhost", "exp": now() + 600}))),
        ("wrong issuer", None, ec.token(&json!({"iss": "https://evil.test", "aud": "mailbag", "email": "alice@localhost", "exp": now() + 600}))),
        ("another key", None, stranger.token(&claims("alice@localhost"))),
        ("alg none", None, forged(&json!({"alg": "none"}), &claims("alice@localhost"), b"")),
        ("HS256 keyed with the public key", None, hs256(&json!({"alg": "HS256", "kid": "ec-1"}), &claims("alice@localhost"), &ec.public_bytes())),
        ("unknown user", None, ec.token(&claims("zed@localhost"))),
        ("names another user", Some("bob"), ec.token(&claims("alice@localhost"))),
    ];
    if let Some(rsa) = SigningKey::rs256("ec-1") {
        bad.push((
            "HS256 keyed with an RSA key",
            None,
            hs256(
                &json!({"alg": "HS256", "kid": "ec-1"}),
                &claims("alice@localhost"),
                &rsa.public_bytes(),
            ),
        ));
    }
    for (what, user, token) in &bad {
        let mut c = implicit(&server).await;
        let reply = auth(&mut c, "OAUTHBEARER", &oauthbearer(*user, token)).await;
        assert_eq!(reply, INVALID_TOKEN, "{what}");
        // RFC 7628 §3.2.3: the client answers with %x01.
        let reply = c.cmd("AQ==").await;
        assert!(
            reply.starts_with("-ERR [AUTH] Authentication failed: the token was refused"),
            "{what}: {reply}"
        );
        // The connection is still usable: a password login works.
        assert!(c.cmd(&format!("USER {}", ALICE.0)).await.starts_with("+OK"));
        assert!(
            c.cmd(&format!("PASS {}", ALICE.1)).await.starts_with("+OK"),
            "{what}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_count_against_the_same_limits_as_passwords() {
    let ec = SigningKey::es256("ec-1");
    let server = TestServer::start_tls(
        "max_failures_per_address = 3\n[auth.oauth]\njwks_file = \"jwks.json\"\n\
         issuer = \"https://idp.example.test\"\naudience = \"mailbag\"\n",
    )
    .await;
    std::fs::write(server.dir.path().join("jwks.json"), jwks_document(&[&ec])).unwrap();
    let expired = ec.token(
        &json!({"iss": ISSUER, "aud": "mailbag", "email": "alice@localhost", "exp": now() - 3600}),
    );
    // Three refusals on one connection close it, as three wrong
    // passwords do; cancelling instead of the dummy response counts too.
    let mut c = implicit(&server).await;
    for (i, answer) in ["AQ==", "*", "AQ=="].iter().enumerate() {
        let reply = auth(&mut c, "XOAUTH2", &xoauth2("alice", &expired)).await;
        assert_eq!(reply, INVALID_TOKEN);
        let reply = c.cmd(answer).await;
        assert!(
            reply.starts_with("-ERR [AUTH] Authentication failed"),
            "{i}: {reply}"
        );
    }
    assert_eq!(c.line().await, "", "closed after the third failure");
    // The address has used up its failures, as with wrong passwords: it
    // is refused from now on, whatever it would log in with.
    let mut c = server.connect().await;
    let reply = c.line().await;
    assert!(
        reply.contains("Too many failed logins from your address"),
        "{reply}"
    );
    server.stop().await;
}
