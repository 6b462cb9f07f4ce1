//! Attacks on authentication and its files, kept as regressions: the
//! server secret's file (`auth.secret_file`) is made safely when servers
//! start together and is never read when others could read it or when it
//! is a link; guesses and their answers (see also `guessing`).

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};

use mailbag::auth::secret::ServerSecret;

#[test]
fn servers_started_together_all_get_the_one_secret() {
    // Each round: a fresh directory, eight first starts at once. Every
    // one must get a secret (none may read a half-written file), and all
    // the same one.
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailbag.secret");
        let barrier = Arc::new(Barrier::new(8));
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let (path, barrier) = (path.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    ServerSecret::load_or_create(&path).map(|s| s.scram_salt("probe"))
                })
            })
            .collect();
        let salts: Vec<_> = starts
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("round {round}: a concurrent first start failed: {e:#}"));
        assert!(salts.windows(2).all(|w| w[0] == w[1]), "round {round}");
        // Nothing but the secret is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("mailbag.secret")]);
    }
}

#[test]
fn a_secret_others_may_read_or_a_link_to_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailbag.secret");
    let made = ServerSecret::load_or_create(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Copied with a careless umask: group and others may read it.
    for mode in [0o644, 0o640, 0o604, 0o620] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = ServerSecret::load_or_create(&path).unwrap_err();
        let text = format!("{e:#} {:?}", std::error::Error::source(&e));
        assert!(text.contains("chmod 600"), "{mode:o}: {text}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let again = ServerSecret::load_or_create(&path).unwrap();
    assert_eq!(made.scram_salt("x"), again.scram_salt("x"));

    // A link at the path, even to a good secret, is not followed, and
    // nothing is created through it.
    let link = dir.path().join("link.secret");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let e = ServerSecret::load_or_create(&link).unwrap_err();
    assert!(format!("{:?}", std::error::Error::source(&e)).contains("symbolic link"));
    let dangling = dir.path().join("dangling.secret");
    let target = dir.path().join("made-through-the-link");
    std::os::unix::fs::symlink(&target, &dangling).unwrap();
    assert!(ServerSecret::load_or_create(&dangling).is_err());
    assert!(!target.exists());

    // A FIFO in its place is refused at once instead of hanging start-up.
    let fifo = dir.path().join("fifo.secret");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(ServerSecret::load_or_create(&fifo).is_err());
}

/// The salt and iteration count SCRAM-SHA-256 shows for `name` (the
/// server's first step), then the exchange cancelled.
async fn scram_first_step(c: &mut crate::support::Client, name: &str) -> (String, u32) {
    use base64::prelude::*;
    let first = BASE64_STANDARD.encode(format!("n,,n={name},r=clientnonce"));
    let challenge = c.cmd(&format!("AUTH SCRAM-SHA-256 {first}")).await;
    let server_first = challenge
        .trim_end()
        .strip_prefix("+ ")
        .and_then(|b| BASE64_STANDARD.decode(b).ok())
        .map(|b| String::from_utf8(b).unwrap())
        .unwrap_or_else(|| panic!("no SCRAM challenge: {challenge}"));
    let field = |key: &str| {
        server_first
            .split(',')
            .find_map(|f| f.strip_prefix(key))
            .unwrap_or_else(|| panic!("{server_first}"))
            .to_string()
    };
    let answer = c.cmd("*").await;
    assert!(answer.starts_with("-ERR"), "{answer}");
    (field("s="), field("i=").parse().unwrap())
}

/// Stored SCRAM keys for `password` at `iterations`.
fn stored_scram(password: &[u8], iterations: u32) -> String {
    use base64::prelude::*;
    let keys = mailbag::auth::ScramKeys::derive(password, b"0123456789abcdef", iterations);
    format!(
        "{{SCRAM-SHA-256}}{iterations},{},{},{}",
        BASE64_STANDARD.encode(&keys.salt),
        BASE64_STANDARD.encode(keys.stored_key),
        BASE64_STANDARD.encode(keys.server_key)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_unusual_scram_iteration_count_does_not_single_them_out() {
    use crate::support::*;
    // Two users store keys at the usual 4096 iterations, one at 10000.
    let s = TestServer::start_with_dir(|dir| {
        std::fs::write(
            dir.join("passwd"),
            format!(
                "carol:{}\nerin:{}\ndave:{}\n",
                stored_scram(b"pw", 4096),
                stored_scram(b"pw", 4096),
                stored_scram(b"pw", 10000)
            ),
        )
        .unwrap();
        "failure_delay_ms = 0\nmax_failures_per_address = 100000\n".to_string()
    })
    .await;
    let mut c = s.connect().await;
    c.line().await;
    assert_eq!(scram_first_step(&mut c, "dave").await.1, 10000);
    assert_eq!(scram_first_step(&mut c, "carol").await.1, 4096);
    // Made-up names show both counts (about one in three 10000), so
    // 10000 does not mean "dave exists"; each name always the same.
    let mut shown = Vec::new();
    for i in 0..40 {
        let name = format!("someone{i}");
        let first = scram_first_step(&mut c, &name).await;
        assert_eq!(scram_first_step(&mut c, &name).await, first, "{name}");
        shown.push(first.1);
    }
    let unusual = shown.iter().filter(|&&i| i == 10000).count();
    assert!(shown.iter().all(|i| [4096, 10000].contains(i)), "{shown:?}");
    assert!(
        (3..=30).contains(&unusual),
        "made-up names showing 10000: {unusual} of 40: {shown:?}"
    );
}

/// Names no login can produce: USER and SASL SASLprep what the client
/// sends, so `\u{fb01}le` arrives as `file` and `\u{ff42}ob` as `bob`.
const SASLPREP_CHANGES: [&str; 4] = [
    "\u{fb01}le",
    "\u{ff42}\u{ff4f}\u{ff42}",
    "bob\u{ff20}example.org",
    "e\u{301}mile",
];

#[test]
fn names_saslprep_would_change_are_refused_by_user_add_and_the_passwd_file() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    crate::support::write_passwd(dir.path());
    let config = dir.path().join("mailbag.toml");
    std::fs::write(&config, crate::support::config_text(dir.path(), "")).unwrap();
    for name in SASLPREP_CHANGES {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mailbag"));
        let mut child = crate::support::as_unprivileged(&mut command, dir.path())
            .args(["user", "add", name, "--password-stdin", "--config"])
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(b"pw\n");
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name:?} was added");
        assert!(stderr.contains("SASLprep"), "{name:?}: {stderr}");
        // A passwd-file naming it is refused at the line, as any bad name.
        let file = dir.path().join("hand-edited");
        std::fs::write(&file, format!("{name}:{{PLAIN}}pw\n")).unwrap();
        let e = mailbag::auth::passwd_file::PasswdFile::open(&file)
            .err()
            .unwrap_or_else(|| panic!("{name:?} was read"));
        assert!(e.to_string().contains(":1: invalid user name"), "{e}");
    }
    let passwd = std::fs::read_to_string(dir.path().join("passwd")).unwrap();
    assert_eq!(passwd.lines().count(), 2, "{passwd}");
}

#[tokio::test]
async fn a_lookalike_user_name_logs_into_the_one_account_it_maps_to_or_none() {
    use crate::support::*;
    // USER sends names through SASLprep: the full-width spelling of
    // alice is alice, and counts as alice's failures.
    let s = TestServer::start_with("max_failures_per_address = 100\n").await;
    let mut c = s.connect().await;
    c.line().await;
    c.ok("USER \u{ff41}lice").await;
    c.ok("PASS wonderland").await;
    c.ok("QUIT").await;
    // A name that SASLprep refuses (private use) is refused as a name.
    let mut c = s.connect().await;
    c.line().await;
    let answer = c.cmd("USER \u{e000}alice").await;
    assert!(answer.starts_with("-ERR [AUTH]"), "{answer}");
}

/// One login from `source` with `password`; the server's answer to PASS.
async fn login_from(
    addr: std::net::SocketAddr,
    source: &str,
    user: &str,
    password: &str,
) -> String {
    let mut c = crate::guessing::connect_from(source, addr).await;
    let greeting = c.line().await;
    if !greeting.starts_with("+OK") {
        // A blocked address is refused at the greeting.
        return greeting;
    }
    let answer = c.cmd(&format!("USER {user}")).await;
    if !answer.starts_with("+OK") {
        return answer;
    }
    c.cmd(&format!("PASS {password}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_at_ones_own_account_that_have_expired_buy_no_guesses_later() {
    use crate::support::*;
    // Four failures block an address; a failure is remembered for one
    // second after the last.
    let s = TestServer::start_with(
        "failure_delay_ms = 0\nmax_failures_per_address = 4\nfailure_window_secs = 1\n",
    )
    .await;
    let from = "127.0.0.77";
    // Banked: three failed logins at one's own account (alice)...
    for _ in 0..3 {
        let answer = login_from(s.addr, from, "alice", "typo").await;
        assert!(answer.starts_with("-ERR [AUTH]"), "{answer}");
    }
    // ...forgotten once the window has passed.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for _ in 0..3 {
        let answer = login_from(s.addr, from, "bob", "guess").await;
        assert!(answer.starts_with("-ERR [AUTH]"), "{answer}");
    }
    let own = login_from(s.addr, from, ALICE.0, ALICE.1).await;
    assert!(own.starts_with("+OK"), "{own}");
    // The login forgives its own attempt only: one more guess at bob is
    // checked (it reaches the limit), the next is refused unchecked.
    let mut checked = 0;
    for _ in 0..6 {
        let answer = login_from(s.addr, from, "bob", "guess").await;
        if answer.starts_with("-ERR [AUTH]") {
            checked += 1;
        } else {
            assert!(answer.contains("Too many failed logins"), "{answer}");
            break;
        }
    }
    assert_eq!(checked, 1, "guesses at bob checked after the login");
}

#[test]
fn handing_the_lmtp_socket_over_never_follows_a_link_put_in_its_place() {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED handing_the_lmtp_socket_over: it needs root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let to = mailbag::privileges::Target {
        uid: nobody.uid,
        gid: nobody.gid,
    };
    let dir = tempfile::tempdir().unwrap();
    // Root's file, and a link to it where the socket was.
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "root's").unwrap();
    let socket = dir.path().join("lmtp.sock");
    std::os::unix::fs::symlink(&precious, &socket).unwrap();
    assert!(mailbag::privileges::give(&socket, to).is_err());
    assert_eq!(std::fs::metadata(&precious).unwrap().uid(), 0);
    // A plain file there is not a socket either.
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, "").unwrap();
    assert!(mailbag::privileges::give(&socket, to).is_err());
    assert_eq!(std::fs::metadata(&socket).unwrap().uid(), 0);
    // The socket itself is handed over.
    std::fs::remove_file(&socket).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    mailbag::privileges::give(&socket, to).unwrap();
    assert_eq!(
        std::fs::symlink_metadata(&socket).unwrap().uid(),
        nobody.uid.as_raw()
    );
}

#[test]
fn root_refuses_a_config_someone_else_could_have_written() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED root_refuses_a_config_someone_else_could_have_written: it needs root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let run = |config: &std::path::Path, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mailbag"))
            .args(args)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let commands: [&[&str]; 6] = [
        &["serve"],
        &["check-config"],
        &["user", "list"],
        &["mailbox", "inspect", "alice"],
        &["migrate"],
        &["deliver", "--user", "alice"],
    ];
    let dir = tempfile::tempdir().unwrap();
    let setup = |sub: &str| {
        let d = dir.path().join(sub);
        std::fs::create_dir(&d).unwrap();
        crate::support::write_passwd(&d);
        let config = d.join("mailbag.toml");
        std::fs::write(
            &config,
            format!(
                "{}\n[server]\nuser = \"nobody\"\n",
                crate::support::config_text(&d, "")
            ),
        )
        .unwrap();
        (d, config)
    };
    // A config that another user owns.
    let (_, owned) = setup("owned");
    std::os::unix::fs::chown(&owned, Some(nobody.uid.as_raw()), None).unwrap();
    // One that group and others may write.
    let (_, open) = setup("open");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
    // A link from a good place to one of those.
    let (_, linked) = setup("linked");
    std::fs::remove_file(&linked).unwrap();
    std::os::unix::fs::symlink(&owned, &linked).unwrap();
    for config in [&owned, &open, &linked] {
        for args in commands {
            let (ok, stderr) = run(config, args);
            assert!(!ok, "{args:?} {}: accepted", config.display());
            assert!(
                stderr.contains("refusing to read") && stderr.contains("as root"),
                "{args:?} {}: {stderr}",
                config.display()
            );
        }
    }
    // Root's own config is read, even in a directory another user owns
    // (whatever they put there instead would be theirs, and refused).
    let (theirs, good) = setup("good");
    std::os::unix::fs::chown(&theirs, Some(nobody.uid.as_raw()), None).unwrap();
    let (_, stderr) = run(&good, &["check-config"]);
    assert!(!stderr.contains("refusing to read"), "{stderr}");
}

#[test]
fn user_add_refuses_a_second_name_for_an_existing_users_maildrop() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    crate::support::write_passwd(dir.path());
    let config = dir.path().join("mailbag.toml");
    // The default template, {root}/{domain}/{user}/Maildir, and the
    // default domain "localhost".
    std::fs::write(&config, crate::support::config_text(dir.path(), "")).unwrap();
    let add = |name: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mailbag"));
        let mut child = crate::support::as_unprivileged(&mut command, dir.path())
            .args(["user", "add", name, "--password-stdin", "--config"])
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(b"intruder\n");
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // alice@localhost is alice's maildrop under another name.
    let (ok, stderr) = add("alice@localhost");
    assert!(!ok, "alice@localhost was added beside alice");
    assert!(
        stderr.contains("share the maildrop") && stderr.contains("alice"),
        "{stderr}"
    );
    // A name of its own, or alice at another domain, is fine.
    assert!(add("carol").0);
    assert!(add("alice@example.org").0);
    let passwd = std::fs::read_to_string(dir.path().join("passwd")).unwrap();
    assert!(!passwd.contains("alice@localhost"), "{passwd}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_users_unusual_scram_iteration_count_does_not_single_them_out() {
    use mailbag::auth::PassDb;
    let test = "postgres_users_unusual_scram_iteration_count_does_not_single_them_out";
    let Some(cluster) = crate::support::pg::cluster(test) else {
        return;
    };
    let url = cluster.database("scram_spread").await;
    // Beside alice (plaintext: keys derived at 4096) and bob (ARGON2ID:
    // no keys), carol stores keys at 4096 and dave at 10000.
    let client = crate::support::pg::connect(&url).await;
    for (name, iterations) in [("carol", 4096), ("dave", 10000)] {
        client
            .execute(
                "INSERT INTO users (name, secret) VALUES ($1, $2)",
                &[&name, &stored_scram(b"pw", iterations)],
            )
            .await
            .unwrap();
    }
    let store = cluster.store(&url);
    let passdb = mailbag::auth::postgres::PgPassDb::new(std::sync::Arc::clone(store.pool()))
        .await
        .with_secret(ServerSecret::random());
    assert_eq!(passdb.scram_keys("dave").await.unwrap().1.iterations, 10000);
    let mut shown = Vec::new();
    for i in 0..40 {
        let name = format!("someone{i}");
        let keys = passdb.scram_keys(&name).await.unwrap().1;
        assert_eq!(passdb.scram_keys(&name).await.unwrap().1, keys);
        shown.push(keys.iterations);
    }
    let unusual = shown.iter().filter(|&&i| i == 10000).count();
    assert!(shown.iter().all(|i| [4096, 10000].contains(i)), "{shown:?}");
    assert!(
        (3..=30).contains(&unusual),
        "made-up names showing 10000: {unusual} of 40: {shown:?}"
    );
}

/// One wrong guess at bob with `mechanism` on a greeted connection; the
/// server's last answer.
async fn guess_with(mut c: crate::support::Client, mechanism: usize) -> String {
    use base64::prelude::*;
    let b64 = |s: &[u8]| BASE64_STANDARD.encode(s);
    match mechanism {
        0 => {
            c.send(b"USER bob\r\nPASS wrong\r\n").await;
            let first = c.line().await;
            assert!(first.starts_with("+OK"), "{first}");
            c.line().await
        }
        1 => c.cmd("APOP bob 0123456789abcdef0123456789abcdef").await,
        2 => {
            let challenge = c.cmd("AUTH CRAM-MD5").await;
            if !challenge.starts_with("+ ") {
                return challenge;
            }
            c.cmd(&b64(b"bob 0123456789abcdef0123456789abcdef")).await
        }
        3 => c.cmd(&format!("AUTH PLAIN {}", b64(b"\0bob\0wrong"))).await,
        _ => {
            let first = c
                .cmd(&format!(
                    "AUTH SCRAM-SHA-256 {}",
                    b64(b"n,,n=bob,r=clientnonce")
                ))
                .await;
            let Some(server_first) = first
                .trim_end()
                .strip_prefix("+ ")
                .and_then(|b| BASE64_STANDARD.decode(b).ok())
            else {
                return first;
            };
            let server_first = String::from_utf8(server_first).unwrap();
            let nonce = server_first.split(',').next().unwrap();
            let proof = b64(&[0u8; 32]);
            c.cmd(&b64(format!("c=biws,{nonce},p={proof}").as_bytes()))
                .await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_mixing_every_mechanism_in_parallel_are_checked_at_most_the_limit() {
    use crate::guessing::{connect_from, GUESSING};
    use crate::support::*;
    let s = TestServer::start_with(GUESSING).await;
    // 60 connections from one address, twelve per mechanism (USER/PASS,
    // APOP, CRAM-MD5, PLAIN, SCRAM-SHA-256), all greeted, then all at once.
    let mut clients = Vec::new();
    for i in 0..60 {
        let mut c = connect_from("127.0.0.5", s.addr).await;
        let greeting = c.line().await;
        assert!(greeting.starts_with("+OK"), "{greeting}");
        clients.push((c, i % 5));
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(c, mechanism)| tokio::spawn(guess_with(c, mechanism)))
        .collect();
    let (mut checked, mut refused, mut other) = (0, 0, Vec::new());
    for task in tasks {
        let answer = task.await.unwrap();
        if answer.starts_with("-ERR [AUTH] Authentication failed") {
            checked += 1;
        } else if answer.starts_with("-ERR [SYS/TEMP] Too many failed logins") {
            refused += 1;
        } else {
            other.push(answer);
        }
    }
    assert!(other.is_empty(), "{other:?}");
    assert_eq!((checked, refused), (10, 50));
    // And the address stays refused, whatever the mechanism.
    for mechanism in 0..5 {
        let mut c = connect_from("127.0.0.5", s.addr).await;
        let greeting = c.line().await;
        let answer = if greeting.starts_with("+OK") {
            guess_with(c, mechanism).await
        } else {
            greeting
        };
        assert!(
            answer.contains("Too many failed logins"),
            "{mechanism}: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_as_a_block_ends_get_one_check() {
    use crate::guessing::{parallel_guesses, GUESSING};
    use crate::support::*;
    // Blocked for one second; failures remembered for ten minutes.
    let s = TestServer::start_with(&format!("address_block_secs = 1\n{GUESSING}")).await;
    let first = parallel_guesses(s.addr, "127.0.0.6", "bob", 20).await;
    assert_eq!((first.checked, first.refused), (10, 10), "{first:?}");
    // Reconnecting the moment the block ends, many at once: the address
    // is still over its limit, so one guess is checked and blocks it again.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let after = parallel_guesses(s.addr, "127.0.0.6", "nobody-here", 20).await;
    assert_eq!((after.checked, after.refused), (1, 19), "{after:?}");
}

mod probes {
    //! Measurements of what tells a known user from an unknown one, over
    //! real sockets. Run by hand (`--ignored --nocapture`): they print
    //! figures and assert only what does not depend on the clock.

    use std::time::{Duration, Instant};

    use base64::prelude::*;

    use crate::guessing::connect_from;
    use crate::support::*;

    /// A passwd-file with one user per kind of secret: plaintext
    /// (`alice`), Argon2id (`bob`), stored SCRAM keys at the usual 4096
    /// iterations (`carol`) and at an unusual 10000 (`dave`).
    fn users(dir: &std::path::Path) -> String {
        let argon =
            mailbag::auth::scheme::hash(mailbag::auth::scheme::Scheme::Argon2id, b"builder")
                .unwrap();
        let scram = |iterations: u32| {
            let keys = mailbag::auth::ScramKeys::derive(b"pw", b"0123456789abcdef", iterations);
            format!(
                "{{SCRAM-SHA-256}}{iterations},{},{},{}",
                BASE64_STANDARD.encode(&keys.salt),
                BASE64_STANDARD.encode(keys.stored_key),
                BASE64_STANDARD.encode(keys.server_key)
            )
        };
        std::fs::write(
            dir.join("passwd"),
            format!(
                "alice:{{PLAIN}}wonderland\nbob:{argon}\ncarol:{}\ndave:{}\n\
                 erin:{{NOPE}}x\nfrank:{{ARGON2ID}}garbage\ngina:\nhank:{{SCRAM-SHA-256}}bad\n\
                 ivan:{{SHA512-CRYPT}}$6$short\n",
                scram(4096),
                scram(10000)
            ),
        )
        .unwrap();
        "failure_delay_ms = 0\nmax_failures_per_address = 100000\n\
         [limits]\nmax_connections_per_address = 500\n"
            .to_string()
    }

    fn median(mut v: Vec<Duration>) -> Duration {
        v.sort();
        v[v.len() / 2]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement: run by hand with --nocapture"]
    async fn probe_failure_answers_and_scram_first_steps() {
        let s = TestServer::start_with_dir(users).await;
        let names = [
            "alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank", "ivan", "nobody",
            "Bob",
        ];
        let tries = 9;
        let mut source = 0u32;
        let n = names.len();
        let (mut pass_times, mut scram_times) = (vec![Vec::new(); n], vec![Vec::new(); n]);
        let (mut answers, mut firsts) = (vec![Vec::new(); n], vec![Vec::new(); n]);
        // Names interleaved, so that every name meets the same padding.
        for _ in 0..tries {
            for (i, name) in names.iter().enumerate() {
                source += 1;
                let from = format!("127.1.{}.{}", source / 250, source % 250 + 1);
                let mut c = connect_from(&from, s.addr).await;
                c.line().await;
                c.ok(&format!("USER {name}")).await;
                let began = Instant::now();
                let answer = c.cmd("PASS wrong-password").await;
                pass_times[i].push(began.elapsed());
                answers[i].push(answer);
                let first = BASE64_STANDARD.encode(format!("n,,n={name},r=clientnonce"));
                let began = Instant::now();
                let challenge = c.cmd(&format!("AUTH SCRAM-SHA-256 {first}")).await;
                scram_times[i].push(began.elapsed());
                let server_first = challenge
                    .trim_end()
                    .strip_prefix("+ ")
                    .and_then(|b| BASE64_STANDARD.decode(b).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or(challenge.clone());
                // The nonce differs each time; salt and iterations should not.
                let stable: Vec<&str> = server_first
                    .split(',')
                    .filter(|f| !f.starts_with("r="))
                    .collect();
                firsts[i].push(stable.join(","));
                c.cmd("*").await;
            }
        }
        for (i, name) in names.iter().enumerate() {
            answers[i].dedup();
            firsts[i].dedup();
            println!(
                "{name:>7}: PASS failure median {:>9.3?} (min {:.3?}, max {:.3?}); \
                 SCRAM first step median {:>9.3?} (min {:.3?}); answers {:?}; first step {:?}",
                median(pass_times[i].clone()),
                pass_times[i].iter().min().unwrap(),
                pass_times[i].iter().max().unwrap(),
                median(scram_times[i].clone()),
                scram_times[i].iter().min().unwrap(),
                answers[i],
                firsts[i],
            );
        }
    }
}
