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

/// A small RFC 7662 introspection endpoint on loopback HTTPS: it knows
/// the client `mailbag` / `s3cret` and answers by token. `good-alice`
/// (chunked) and `good-bob` (Content-Length) are active; `revoked` is
/// not; `silent` is never answered; `flood` gets an answer larger than
/// any introspection answer.
struct Idp {
    port: u16,
    /// GETs of /jwks.json answered.
    jwks_fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Idp {
    /// Serves `jwks` at /jwks.json too.
    async fn start(jwks: String) -> Idp {
        let jwks_fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let fetches = std::sync::Arc::clone(&jwks_fetches);
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        mailbag::server::tls::write_self_signed(&["localhost"], &cert, &key).unwrap();
        let acceptor = mailbag::server::tls::Tls::load(&cert, &key)
            .unwrap()
            .acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let (jwks, fetches) = (jwks.clone(), std::sync::Arc::clone(&fetches));
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        Idp::answer(tls, &jwks, &fetches).await;
                    }
                });
            }
        });
        Idp {
            port,
            jwks_fetches,
            dir,
            task,
        }
    }

    async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut stream: S,
        jwks: &str,
        fetches: &std::sync::atomic::AtomicUsize,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        let (head, body) = loop {
            let Ok(n) = stream.read(&mut buf).await else {
                return;
            };
            if n == 0 || request.len() > 65536 {
                return;
            }
            request.extend_from_slice(&buf[..n]);
            let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&request[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                break (
                    head,
                    String::from_utf8_lossy(&request[end + 4..end + 4 + length]).to_string(),
                );
            }
        };
        let expected = format!(
            "Authorization: Basic {}",
            BASE64_STANDARD.encode("mailbag:s3cret")
        );
        let json = |v: Value| v.to_string();
        let token = body
            .strip_prefix("token=")
            .and_then(|rest| rest.split('&').next())
            .unwrap_or("");
        let exp = now() + 600;
        let response = if head.starts_with("GET /jwks.json HTTP/1.1\r\n") {
            fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{jwks}",
                jwks.len()
            )
        } else if !head.starts_with("POST /introspect HTTP/1.1\r\n")
            || !head.lines().any(|l| l == expected)
        {
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_string()
        } else {
            match token {
                "good-alice" => {
                    let body = json(json!({"active": true, "username": "alice", "exp": exp}));
                    let (a, b) = body.split_at(10);
                    format!(
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n\
                         {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                        a.len(),
                        b.len()
                    )
                }
                "good-bob" => {
                    let body = json(json!({"active": true, "username": "bob", "exp": exp}));
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                }
                "silent" => {
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    return;
                }
                "flood" => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n{}",
                    " ".repeat(200_000)
                ),
                _ => {
                    let body = json(json!({"active": false}));
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                }
            }
        };
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    fn config(&self, secret: &str) -> String {
        format!(
            "max_failures_per_address = 100\n[auth.oauth]\n\
             introspection_url = \"https://localhost:{}/introspect\"\n\
             client_id = \"mailbag\"\nclient_secret = \"{secret}\"\nca_file = \"{}\"\n\
             user_claim = \"username\"\ntimeout_ms = 300\n",
            self.port,
            self.dir.path().join("cert.pem").display()
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_logs_active_tokens_in_and_refuses_the_rest() {
    let idp = Idp::start(String::new()).await;
    let server = TestServer::start_tls(&idp.config("s3cret")).await;
    let mut c = implicit(&server).await;
    let reply = auth(&mut c, "OAUTHBEARER", &oauthbearer(None, "good-alice")).await;
    assert!(reply.starts_with("+OK Logged in."), "{reply}");
    c.cmd("QUIT").await;
    let mut c = implicit(&server).await;
    let reply = auth(&mut c, "XOAUTH2", &xoauth2("bob", "good-bob")).await;
    assert!(reply.starts_with("+OK Logged in."), "{reply}");
    c.cmd("QUIT").await;
    // Revoked: RFC 7628's status, then the failure.
    let mut c = implicit(&server).await;
    let reply = auth(&mut c, "OAUTHBEARER", &oauthbearer(None, "revoked")).await;
    assert_eq!(reply, INVALID_TOKEN);
    assert!(c.cmd("AQ==").await.starts_with("-ERR [AUTH]"));
    // An endpoint that does not answer in time, or answers too much, is
    // a temporary failure, not a refusal of the user.
    for token in ["silent", "flood"] {
        let reply = auth(&mut c, "OAUTHBEARER", &oauthbearer(None, token)).await;
        assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{token}: {reply}");
    }
    server.stop().await;

    // Wrong client credentials: the endpoint refuses us, so no one can
    // log in, and they are told to try later.
    let server = TestServer::start_tls(&idp.config("wrong")).await;
    let mut c = implicit(&server).await;
    let reply = auth(&mut c, "OAUTHBEARER", &oauthbearer(None, "good-alice")).await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_fetched_from_a_jwks_url_are_cached_between_logins() {
    let ec = SigningKey::es256("ec-1");
    let idp = Idp::start(jwks_document(&[&ec])).await;
    let server = TestServer::start_tls(&format!(
        "[auth.oauth]\njwks_url = \"https://localhost:{}/jwks.json\"\nca_file = \"{}\"\n\
         issuer = \"{ISSUER}\"\naudience = \"mailbag\"\njwks_refresh_secs = 3600\n",
        idp.port,
        idp.dir.path().join("cert.pem").display()
    ))
    .await;
    for user in ["alice", "bob"] {
        let mut c = implicit(&server).await;
        let token = ec.token(&claims(&format!("{user}@localhost")));
        let reply = auth(&mut c, "OAUTHBEARER", &oauthbearer(None, &token)).await;
        assert!(reply.starts_with("+OK Logged in."), "{reply}");
        c.cmd("QUIT").await;
    }
    // Fetched once, used for both logins.
    assert_eq!(
        idp.jwks_fetches.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    server.stop().await;
}
