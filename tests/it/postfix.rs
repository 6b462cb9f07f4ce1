//! Issue 16: a real Postfix (a private instance on loopback) delivers
//! with `local(8)` into mbox spools of throwaway system accounts while
//! POP3 sessions run; poplib, curl and fetchmail retrieve what Postfix
//! wrote byte-exact, and a delivery during a session is kept by its
//! QUIT. The POP3 passwords come from a passwd-file naming the same
//! accounts, so this runs without the `pam` feature. Needs root.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mailbag::auth::passwd_file::PasswdFile;
use mailbag::config::Config;
use mailbag::server::Server;
use mailbag::store::mbox::MboxStore;
use tokio_util::sync::CancellationToken;

use crate::support::accounts::{sweep, Account};
use crate::support::postfix::Postfix;
use crate::support::{config_text, crlf, Client};

const PASSWORD: &str = "postfix-pw";

fn message(n: u32) -> Vec<u8> {
    format!(
        "From: Sender <sender@localhost>\nSubject: message {n}\n\n\
         line one of {n}\n.a line with a dot\nFrom the body, quoted by Postfix\n\n\
         last line\n"
    )
    .into_bytes()
}

async fn poplib_retr(port: u16, user: &str, n: usize) -> Vec<u8> {
    // poplib strips dot-stuffing and line ends; joined with CRLF again,
    // the message is what the server sent.
    let script = format!(
        "import poplib, sys\n\
         p = poplib.POP3('127.0.0.1', {port}, timeout=20)\n\
         p.user('{user}')\n\
         p.pass_('{PASSWORD}')\n\
         lines = p.retr({n})[1]\n\
         sys.stdout.buffer.write(b''.join(l + b'\\r\\n' for l in lines))\n\
         p.quit()\n"
    );
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "poplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

async fn curl_retr(port: u16, user: &str, n: usize) -> Vec<u8> {
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--user"])
        .arg(format!("{user}:{PASSWORD}"))
        .arg(format!("pop3://127.0.0.1:{port}/{n}"))
        .output()
        .await
        .expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every message fetchmail hands its MDA, one file each, in order.
async fn fetchmail_all(port: u16, user: &str, work: &Path) -> Vec<Vec<u8>> {
    let out_dir = work.join("fetched");
    std::fs::create_dir_all(&out_dir).unwrap();
    let rc = work.join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "poll 127.0.0.1 service {port} protocol pop3\n\
             \tuser \"{user}\" password \"{PASSWORD}\" keep fetchall sslproto ''\n\
             \tmda \"/bin/sh -c 'cat > {out}/$(date +%s%N)'\"\n",
            out = out_dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = tokio::process::Command::new("fetchmail")
        .arg("-f")
        .arg(&rc)
        .args(["--nodetach", "--invisible", "--norewrite"])
        .env("HOME", work)
        .output()
        .await
        .expect("fetchmail");
    assert!(
        out.status.code() == Some(0),
        "fetchmail: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_local_delivers_into_spools_that_clients_fetch_byte_exact() {
    let test = "postfix_local_delivers_into_spools_that_clients_fetch_byte_exact";
    let Some(postfix) = Postfix::start(test) else {
        return;
    };
    sweep();
    let user = Account::create("pfx", "not the pop3 password", false, &[]);

    // mailbag on the spools Postfix writes, users from a passwd-file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("passwd"),
        format!("{}:{{PLAIN}}{PASSWORD}\n", user.name),
    )
    .unwrap();
    let config_path = dir.path().join("mailbag.toml");
    std::fs::write(
        &config_path,
        config_text(
            dir.path(),
            &format!("[store.mbox]\npath = \"{}/%u\"\n", postfix.spools.display()),
        )
        .replace("[store]\n", "[store]\nkind = \"mbox\"\n"),
    )
    .unwrap();
    let config = Config::load(&config_path).unwrap();
    let passdb = PasswdFile::open_with(
        &config.auth.passwd_file,
        None,
        mailbag::auth::secret::ServerSecret::load_or_create(&config.auth.secret_file).unwrap(),
    )
    .unwrap();
    let store = MboxStore::new(&config.store.mbox.path, config.store.mbox.lock_options()).unwrap();
    let server = Server::bind(config, store, passdb).await.unwrap();
    let addr = server.local_addrs()[0];
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(server.run(shutdown.clone()));

    postfix.send(&user.name, &message(1)).await;
    postfix.send(&user.name, &message(2)).await;
    let stored = postfix.wait_for(&user.name, 2).await;
    for (i, m) in stored.iter().enumerate() {
        let n = i + 1;
        // Postfix adds headers of its own; the body is as sent, with
        // `From ` quoted.
        let body = format!(
            "\n\nline one of {n}\n.a line with a dot\n>From the body, quoted by Postfix\n\nlast line\n"
        );
        let subject = format!("\nSubject: message {n}\n");
        let text = String::from_utf8_lossy(m);
        assert!(text.ends_with(&body) && text.contains(&subject), "{text}");
        assert_eq!(
            poplib_retr(addr.port(), &user.name, n).await,
            crlf(m),
            "poplib {n}"
        );
        assert_eq!(
            curl_retr(addr.port(), &user.name, n).await,
            crlf(m),
            "curl {n}"
        );
    }
    let fetched = fetchmail_all(addr.port(), &user.name, dir.path()).await;
    assert_eq!(fetched.len(), 2);
    for (got, m) in fetched.iter().zip(&stored) {
        // fetchmail hands its MDA the message with LF line ends.
        assert_eq!(
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(m),
            "fetchmail"
        );
    }

    // A delivery during a session is neither blocked nor lost: the
    // session deletes message 1 and quits; the spool keeps 2 and 3.
    let mut c = Client::connect(addr).await;
    c.line().await;
    c.ok(&format!("USER {}", user.name)).await;
    c.ok(&format!("PASS {PASSWORD}")).await;
    assert!(c.ok("STAT").await.starts_with("+OK 2 "));
    postfix.send(&user.name, &message(3)).await;
    let during = postfix.wait_for(&user.name, 3).await;
    assert!(
        c.ok("STAT").await.starts_with("+OK 2 "),
        "the session's view holds"
    );
    c.ok("DELE 1").await;
    c.ok("QUIT").await;
    let after = postfix.wait_for(&user.name, 2).await;
    assert_eq!(after, during[1..].to_vec());
    assert_eq!(
        curl_retr(addr.port(), &user.name, 2).await,
        crlf(&during[2]),
        "the message delivered during the session"
    );

    shutdown.cancel();
    let _ = handle.await;
    drop(postfix);
}
