//! SASL AUTH (RFC 5034) over real sockets, against the passwd-file, and
//! with curl as a real client.

use base64::prelude::{Engine as _, BASE64_STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::support::*;
use crate::tls::Lines;

pub fn b64(bytes: &[u8]) -> String {
    BASE64_STANDARD.encode(bytes)
}

pub fn unb64(line: &str) -> Vec<u8> {
    BASE64_STANDARD
        .decode(line.trim_end().strip_prefix("+ ").expect("a challenge"))
        .unwrap()
}

async fn connect(s: &TestServer) -> Lines<tokio::net::TcpStream> {
    let mut c = Lines::new(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    c.line().await;
    c
}

#[tokio::test]
async fn auth_plain_and_login_log_in() {
    let s = TestServer::start().await;
    let mut c = connect(&s).await;
    let out = c
        .cmd(&format!("AUTH PLAIN {}", b64(b"\0alice\0wonderland")))
        .await;
    assert!(out.starts_with("+OK Logged in"), "{out}");
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    let mut c = connect(&s).await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ \r\n");
    let out = c.cmd(&b64(b"bob\0bob\0builder")).await;
    assert!(out.starts_with("+OK Logged in"), "{out}");
    let mut c = connect(&s).await;
    assert_eq!(c.cmd("AUTH LOGIN").await, "+ VXNlcm5hbWU6\r\n");
    assert_eq!(c.cmd(&b64(b"alice")).await, "+ UGFzc3dvcmQ6\r\n");
    assert!(c
        .cmd(&b64(b"wonderland"))
        .await
        .starts_with("+OK Logged in"));
}

#[tokio::test]
async fn auth_plain_refuses_another_authzid_and_bad_input() {
    let s = TestServer::start().await;
    let mut c = connect(&s).await;
    let out = c
        .cmd(&format!("AUTH PLAIN {}", b64(b"bob\0alice\0wonderland")))
        .await;
    assert!(
        out.starts_with("-ERR [AUTH] Authentication failed: logging in as another user"),
        "{out}"
    );
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ \r\n");
    assert!(c
        .cmd("not*base64")
        .await
        .starts_with("-ERR [AUTH] AUTH response is not valid base64"));
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ \r\n");
    assert_eq!(c.cmd("*").await, "-ERR AUTH cancelled\r\n");
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ \r\n");
    let huge = "A".repeat(20_000);
    assert!(c
        .cmd(&huge)
        .await
        .starts_with("-ERR [AUTH] AUTH response too long"));
    // The session goes on with normal commands afterwards.
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
}

#[tokio::test]
async fn a_master_user_may_name_another_maildrop_as_authzid() {
    let s = TestServer::start_with("master_users = [\"bob\"]").await;
    s.deliver("alice", b"Subject: for alice\n\nx\n");
    let mut c = connect(&s).await;
    let out = c
        .cmd(&format!("AUTH PLAIN {}", b64(b"alice\0bob\0builder")))
        .await;
    assert!(
        out.starts_with("+OK Logged in. Maildrop has 1 message"),
        "{out}"
    );
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    // alice is no master user: she cannot name bob.
    let mut c = connect(&s).await;
    let out = c
        .cmd(&format!("AUTH PLAIN {}", b64(b"bob\0alice\0wonderland")))
        .await;
    assert!(
        out.starts_with("-ERR [AUTH] Authentication failed: logging in as another user"),
        "{out}"
    );
}

/// RFC 2195 with the key and challenge the server gives.
pub fn cram_md5(key: &[u8], challenge: &[u8]) -> String {
    let mut mac = <Hmac<md5::Md5> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(challenge);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn auth_cram_md5_for_a_plaintext_user_only() {
    let s = TestServer::start().await;
    let mut c = connect(&s).await;
    let challenge = unb64(&c.cmd("AUTH CRAM-MD5").await);
    assert!(challenge.starts_with(b"<") && challenge.ends_with(b">"));
    let answer = format!("alice {}", cram_md5(b"wonderland", &challenge));
    assert!(c
        .cmd(&b64(answer.as_bytes()))
        .await
        .starts_with("+OK Logged in"));
    // bob's ARGON2ID hash cannot answer CRAM-MD5.
    let mut c = connect(&s).await;
    let challenge = unb64(&c.cmd("AUTH CRAM-MD5").await);
    let answer = format!("bob {}", cram_md5(b"builder", &challenge));
    assert!(c
        .cmd(&b64(answer.as_bytes()))
        .await
        .starts_with("-ERR [AUTH]"));
}

/// The client side of RFC 5802 §3.
pub async fn scram(c: &mut Lines<tokio::net::TcpStream>, user: &str, password: &str) -> String {
    let first_bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
    let server_first = unb64(
        &c.cmd(&format!(
            "AUTH SCRAM-SHA-256 {}",
            b64(format!("n,,{first_bare}").as_bytes())
        ))
        .await,
    );
    let server_first = String::from_utf8(server_first).unwrap();
    let mut nonce = "";
    let mut salt = Vec::new();
    let mut iterations = 0;
    for field in server_first.split(',') {
        match field.split_at(2) {
            ("r=", v) => nonce = v,
            ("s=", v) => salt = BASE64_STANDARD.decode(v).unwrap(),
            ("i=", v) => iterations = v.parse().unwrap(),
            _ => {}
        }
    }
    assert!(
        nonce.starts_with("fyko+d2lbbFgONRv9qkxdawL") && nonce.len() > 30,
        "{server_first}"
    );
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
    let mac = |k: &[u8], m: &[u8]| {
        let mut h = <Hmac<Sha256> as KeyInit>::new_from_slice(k).unwrap();
        h.update(m);
        h.finalize().into_bytes().to_vec()
    };
    let client_key = mac(&salted, b"Client Key");
    let stored_key = Sha256::digest(&client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth = format!("{first_bare},{server_first},{without_proof}");
    let proof: Vec<u8> = client_key
        .iter()
        .zip(mac(&stored_key, auth.as_bytes()))
        .map(|(a, b)| a ^ b)
        .collect();
    let reply = c
        .cmd(&b64(format!("{without_proof},p={}", b64(&proof)).as_bytes()))
        .await;
    if !reply.starts_with("+ ") {
        return reply;
    }
    let server_key = mac(&salted, b"Server Key");
    let expected = format!("v={}", b64(&mac(&server_key, auth.as_bytes())));
    assert_eq!(unb64(&reply), expected.as_bytes(), "server signature");
    c.cmd("").await
}

#[tokio::test]
async fn auth_scram_sha_256_with_stored_keys_and_plaintext_users() {
    let s = TestServer::start_with("trusted_networks = []").await;
    let stored =
        mailbag::auth::scheme::hash(mailbag::auth::scheme::Scheme::ScramSha256, b"pencil").unwrap();
    let mut passwd = std::fs::read_to_string(s.dir.path().join("passwd")).unwrap();
    passwd.push_str(&format!("user:{stored}\n"));
    std::fs::write(s.dir.path().join("passwd"), passwd).unwrap();
    let mut c = connect(&s).await;
    let out = scram(&mut c, "user", "pencil").await;
    assert!(out.starts_with("+OK Logged in"), "{out}");
    let mut c = connect(&s).await;
    assert!(scram(&mut c, "alice", "wonderland")
        .await
        .starts_with("+OK Logged in"));
    let mut c = connect(&s).await;
    assert!(scram(&mut c, "user", "pen")
        .await
        .starts_with("-ERR [AUTH]"));
    let mut c = connect(&s).await;
    assert!(scram(&mut c, "nobody", "pencil")
        .await
        .starts_with("-ERR [AUTH]"));
}

#[tokio::test]
async fn bare_auth_lists_mechanisms_for_old_clients() {
    let s = TestServer::start().await;
    let mut c = connect(&s).await;
    assert_eq!(c.cmd("AUTH").await, "+OK SASL mechanisms follow\r\n");
    assert_eq!(
        c.body().await,
        ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"]
    );
}

#[tokio::test]
async fn curl_logs_in_with_each_mechanism() {
    let s = TestServer::start().await;
    s.deliver("alice", b"Subject: hi\n\nsasl body\n");
    for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5"] {
        let out = tokio::process::Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--user",
                "alice:wonderland",
                "--login-options",
            ])
            .arg(format!("AUTH={mechanism}"))
            .arg(format!("pop3://127.0.0.1:{}/1", s.addr.port()))
            .output()
            .await
            .expect("curl is installed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("sasl body"),
            "{mechanism}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn utf8_user_names_and_8bit_headers() {
    let s = TestServer::start().await;
    let mut passwd = std::fs::read_to_string(s.dir.path().join("passwd")).unwrap();
    passwd.push_str("jos\u{e9}:{PLAIN}p\u{e4}ss\n");
    std::fs::write(s.dir.path().join("passwd"), passwd).unwrap();
    let message =
        "Subject: caf\u{e9} \u{2615}\nFrom: Jos\u{e9} <jos\u{e9}@example.org>\n\nh\u{e9}\n";
    s.deliver("jos\u{e9}", message.as_bytes());
    let mut c = s.connect().await;
    c.line().await;
    let (_, capa) = c.multi("CAPA").await;
    assert!(String::from_utf8_lossy(&capa).contains("UTF8 USER\r\n"));
    c.ok("UTF8").await;
    // NFKC per SASLprep: "e" + combining acute is the same name.
    c.ok("USER jose\u{301}").await;
    c.ok("PASS p\u{e4}ss").await;
    let (_, body) = c.multi("RETR 1").await;
    assert_eq!(body, crlf(message.as_bytes()));
}

/// Python's poplib upgrades with STLS (checking the certificate), then
/// runs AUTH PLAIN and an independent SCRAM-SHA-256 client (RFC 5802,
/// written with hashlib) through poplib's line layer.
const PYTHON_SASL_CLIENT: &str = r#"
import base64, hashlib, hmac, os, poplib, ssl, sys
host, port, cafile, mech, user, password = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=cafile)
p = poplib.POP3(host, int(port), timeout=20)
caps = p.capa()
assert "STLS" in caps and "PLAIN" not in caps.get("SASL", []), caps
p.stls(context=ctx)
caps = p.capa()
assert "PLAIN" in caps["SASL"] and "SCRAM-SHA-256" in caps["SASL"], caps
b64 = lambda b: base64.b64encode(b).decode()
def challenge(resp):
    assert resp.startswith(b"+ "), resp
    return base64.b64decode(resp[2:])
if mech == "PLAIN":
    resp = p._shortcmd("AUTH PLAIN " + b64(b"\0" + user.encode() + b"\0" + password.encode()))
else:
    cnonce = b64(os.urandom(18))
    first_bare = "n=%s,r=%s" % (user, cnonce)
    p._putcmd("AUTH SCRAM-SHA-256 " + b64(("n,," + first_bare).encode()))
    server_first = challenge(p._getline()[0]).decode()
    f = dict(kv.split("=", 1) for kv in server_first.split(","))
    assert f["r"].startswith(cnonce)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(f["s"]), int(f["i"]))
    mac = lambda k, m: hmac.new(k, m, hashlib.sha256).digest()
    client_key = mac(salted, b"Client Key")
    final_bare = "c=biws,r=" + f["r"]
    auth = ",".join([first_bare, server_first, final_bare]).encode()
    sig = mac(hashlib.sha256(client_key).digest(), auth)
    proof = bytes(a ^ b for a, b in zip(client_key, sig))
    p._putcmd(b64((final_bare + ",p=" + b64(proof)).encode()))
    v = challenge(p._getline()[0])
    assert v == b"v=" + base64.b64encode(mac(mac(salted, b"Server Key"), auth)), v
    p._putcmd("")
    resp = p._getresp()
print(resp.decode())
print(p.stat())
p.quit()
"#;

#[tokio::test]
async fn python_poplib_stls_then_plain_and_scram() {
    let s = TestServer::start_tls("trusted_networks = []").await;
    s.deliver("alice", b"Subject: x\n\ny\n");
    for mechanism in ["PLAIN", "SCRAM"] {
        let out = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(PYTHON_SASL_CLIENT)
            .arg("localhost")
            .arg(s.addr.port().to_string())
            .arg(s.dir.path().join("tls/cert.pem"))
            .args([mechanism, "alice", "wonderland"])
            .output()
            .await
            .expect("python3 is on every machine");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.starts_with("+OK Logged in") && stdout.contains("(1, "),
            "{mechanism}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A connection from a chosen loopback address, greeted.
async fn connect_from(s: &TestServer, source: &str) -> (Lines<tokio::net::TcpStream>, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut c = Lines::new(socket.connect(s.addr).await.unwrap());
    let greeting = c.line().await;
    (c, greeting)
}

/// The salt and iteration count SCRAM's first step shows for `user`.
async fn scram_first_step(s: &TestServer, user: &str) -> (String, String) {
    scram_first_step_at(s.addr, user).await
}

/// [`scram_first_step`] on any server.
pub async fn scram_first_step_at(addr: std::net::SocketAddr, user: &str) -> (String, String) {
    let mut c = Lines::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    c.line().await;
    let challenge = c
        .cmd(&format!(
            "AUTH SCRAM-SHA-256 {}",
            b64(format!("n,,n={user},r=abcdefghijklmnop").as_bytes())
        ))
        .await;
    let server_first = String::from_utf8(unb64(&challenge)).unwrap();
    let field = |name: &str| {
        server_first
            .split(',')
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_else(|| panic!("{server_first}"))
            .to_string()
    };
    (field("s="), field("i="))
}

#[tokio::test]
async fn scram_shows_an_unknown_user_the_same_salt_on_every_node_and_after_a_restart() {
    let shared = tempfile::tempdir().unwrap();
    let secret = shared.path().join("mailbag.secret");
    let extra = format!("secret_file = {:?}\n", secret.display().to_string());
    let a = TestServer::start_with(&extra).await;
    let b = TestServer::start_with(&extra).await;
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let stored =
        mailbag::auth::scheme::hash(mailbag::auth::scheme::Scheme::ScramSha256, b"pencil").unwrap();
    for s in [&a, &b] {
        let mut passwd = std::fs::read_to_string(s.dir.path().join("passwd")).unwrap();
        passwd.push_str(&format!("user:{stored}\n"));
        std::fs::write(s.dir.path().join("passwd"), passwd).unwrap();
    }
    let nobody = scram_first_step(&a, "nobody").await;
    assert_eq!(scram_first_step(&b, "nobody").await, nobody);
    // Alice's keys are derived from her plaintext secret, with a salt made
    // up like an unknown user's: the same everywhere too.
    let alice = scram_first_step(&a, "alice").await;
    assert_eq!(scram_first_step(&b, "alice").await, alice);
    assert_ne!(alice.0, nobody.0);
    // An unknown name shows the iteration count real users show.
    let (_, user_iterations) = scram_first_step(&a, "user").await;
    assert_eq!(nobody.1, user_iterations);
    a.stop().await;
    let again = TestServer::start_with(&extra).await;
    assert_eq!(scram_first_step(&again, "nobody").await, nobody);
    assert_eq!(scram_first_step(&again, "alice").await, alice);
}

#[tokio::test]
async fn a_scram_exchange_cannot_start_while_its_address_is_refused() {
    let s = TestServer::start_with(crate::guessing::GUESSING).await;
    // Opened before the address is refused.
    let (mut early, greeting) = connect_from(&s, "127.0.0.2").await;
    assert!(greeting.starts_with("+OK"), "{greeting}");
    for _ in 0..10 {
        let (mut c, greeting) = connect_from(&s, "127.0.0.2").await;
        assert!(greeting.starts_with("+OK"), "{greeting}");
        let out = c
            .cmd(&format!("AUTH PLAIN {}", b64(b"\0alice\0guess")))
            .await;
        assert!(out.starts_with("-ERR [AUTH]"), "{out}");
    }
    // The right password, on the connection opened earlier.
    let out = c_first_step(&mut early, "alice").await;
    assert!(
        out.starts_with("-ERR [SYS/TEMP] Too many failed logins"),
        "{out}"
    );
    // Another address logs in as usual.
    let (mut other, _) = connect_from(&s, "127.0.0.3").await;
    let out = scram(&mut other, "alice", "wonderland").await;
    assert!(out.starts_with("+OK Logged in"), "{out}");
}

async fn c_first_step(c: &mut Lines<tokio::net::TcpStream>, user: &str) -> String {
    c.cmd(&format!(
        "AUTH SCRAM-SHA-256 {}",
        b64(format!("n,,n={user},r=abcdefghijklmnop").as_bytes())
    ))
    .await
}

#[tokio::test]
async fn scram_first_steps_count_against_the_address() {
    let s = TestServer::start_with(crate::guessing::GUESSING).await;
    // Looking keys up without ever sending a proof is an attempt too.
    for i in 0..10 {
        let (mut c, greeting) = connect_from(&s, "127.0.0.2").await;
        assert!(greeting.starts_with("+OK"), "lookup {i}: {greeting}");
        let challenge = c_first_step(&mut c, &format!("user{i}")).await;
        assert!(challenge.starts_with("+ "), "{challenge}");
        let out = c.cmd("*").await;
        assert!(out.starts_with("-ERR"), "{out}");
    }
    let (_, greeting) = connect_from(&s, "127.0.0.2").await;
    assert!(
        greeting.starts_with("-ERR [SYS/TEMP] Too many failed logins"),
        "{greeting}"
    );
}

#[tokio::test]
async fn a_cancelled_scram_exchange_is_forgotten_when_that_user_logs_in() {
    let s = TestServer::start_with(crate::guessing::GUESSING).await;
    // A client that starts SCRAM, gives up and logs in with PLAIN, again
    // and again, is a person, not a guesser: the address is never refused.
    for i in 0..12 {
        let (mut c, greeting) = connect_from(&s, "127.0.0.2").await;
        assert!(greeting.starts_with("+OK"), "login {i}: {greeting}");
        assert!(c_first_step(&mut c, "alice").await.starts_with("+ "));
        assert!(c.cmd("*").await.starts_with("-ERR"));
        let out = c
            .cmd(&format!("AUTH PLAIN {}", b64(b"\0alice\0wonderland")))
            .await;
        assert!(out.starts_with("+OK Logged in"), "login {i}: {out}");
        assert!(c.cmd("QUIT").await.starts_with("+OK"));
    }
}

#[tokio::test]
async fn scram_exchanges_left_by_hanging_up_count_against_the_address() {
    let s = TestServer::start_with(crate::guessing::GUESSING).await;
    // Keys looked up, then the connection dropped mid-exchange: each is
    // a failed attempt once the server sees the client gone.
    for i in 0..10 {
        let (mut c, greeting) = connect_from(&s, "127.0.0.2").await;
        assert!(greeting.starts_with("+OK"), "lookup {i}: {greeting}");
        let challenge = c_first_step(&mut c, &format!("user{i}")).await;
        assert!(challenge.starts_with("+ "), "{challenge}");
    }
    // The sessions end as the server reads each hang-up.
    for _ in 0..200 {
        let (_, greeting) = connect_from(&s, "127.0.0.2").await;
        if greeting.starts_with("-ERR [SYS/TEMP] Too many failed logins") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the address was never refused");
}
