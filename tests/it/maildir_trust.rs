//! Everything inside a Maildir is its owner's input: cache files, the
//! UPDATE record, file names and the directories themselves. None of it
//! may make the server read, rename or delete anything outside that
//! Maildir's new/ and cur/, or write through a symlink; UPDATE is all or
//! nothing across a crash. Over real sockets, against real files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;

/// Sets a directory's mtime to a fixed moment long past.
fn age(dir: &Path) {
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    std::fs::File::open(dir).unwrap().set_modified(t).unwrap();
}

/// Writes a `mailbag.listing` that the old rules would trust: stamps that
/// match new/ and cur/ (aged first), taken well after their last change,
/// and a count that matches.
pub(crate) fn forge_listing<S: AsRef<str>>(maildir: &Path, names: &[S]) {
    age(&maildir.join("new"));
    age(&maildir.join("cur"));
    let stamp = 1_700_000_000i128 * 1_000_000_000;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut text = format!("mailbag-listing 1\n{stamp} {stamp} {now} {}\n", names.len());
    for name in names {
        text.push_str(name.as_ref());
        text.push('\n');
    }
    text.push_str(".\n");
    std::fs::write(maildir.join("mailbag.listing"), text).unwrap();
}

fn stat_count(reply: &str) -> usize {
    reply.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_forged_listing_cannot_reach_outside_the_maildir() {
    let s = TestServer::start().await;
    s.deliver("alice", b"Subject: own\n\nmine\n");
    let bobs = s.deliver("bob", b"Subject: bob's\n\nsecret of bob\n");
    let secret = s.dir.path().join("secret");
    std::fs::write(&secret, b"outside the mail root\n").unwrap();
    let md = s.maildir("alice");
    let own = s.files("alice")[0].clone();
    let outside = "C ../../../../../secret".to_string();
    let other = format!("C ../../../bob/Maildir/new/{bobs}");
    let own_line = format!("N {}", own.trim_start_matches("new/"));
    forge_listing(&md, &[&own_line, &outside, &other]);

    let mut c = s.login(ALICE).await;
    assert_eq!(stat_count(&c.ok("STAT").await), 1);
    let (_, body) = c.multi("RETR 1").await;
    assert_eq!(body, crlf(b"Subject: own\n\nmine\n"));
    for n in [2, 3] {
        assert!(c.cmd(&format!("RETR {n}")).await.starts_with("-ERR"));
        assert!(c.cmd(&format!("DELE {n}")).await.starts_with("-ERR"));
    }
    c.ok("DELE 1").await;
    c.ok("QUIT").await;

    assert_eq!(std::fs::read(&secret).unwrap(), b"outside the mail root\n");
    assert!(!s.dir.path().join("secret:2,S").exists());
    assert_eq!(s.files("bob"), vec![format!("new/{bobs}")]);
    assert!(s.files("alice").is_empty());
}

#[tokio::test]
async fn names_in_a_forged_size_cache_or_update_record_are_inert() {
    let s = TestServer::start().await;
    let bobs = s.deliver("bob", b"bob\n");
    // A message without W=, so the size cache is consulted for it.
    let md = s.maildir("alice");
    s.deliver("alice", b"x\n");
    std::fs::write(md.join("new/1700000000.plain"), b"plain\n").unwrap();
    std::fs::write(
        md.join("mailbag.sizes"),
        format!("mailbag-sizes 1\n999 ../../../bob/Maildir/new/{bobs}\n999 ../../../../../x\n"),
    )
    .unwrap();
    // The record of an interrupted UPDATE, naming bob's message.
    let hex: String = format!("../../../bob/Maildir/new/{bobs}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        md.join("mailbag.update"),
        format!("mailbag-update 1\nN {hex}\n.\n"),
    )
    .unwrap();
    let mut c = s.login(ALICE).await;
    let stat = c.ok("STAT").await;
    assert_eq!(stat_count(&stat), 2, "{stat}");
    let (_, list) = c.multi("LIST").await;
    assert!(
        String::from_utf8_lossy(&list).contains(" 7\r\n"),
        "{list:?}"
    );
    c.ok("QUIT").await;
    assert_eq!(s.files("bob"), vec![format!("new/{bobs}")]);
    assert!(!md.join("mailbag.update").exists());
}

/// Replaces `link` (a directory) with a symlink to `target`.
fn symlink_dir(target: &Path, link: &Path) {
    std::fs::remove_dir_all(link).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// Which directory of a Maildir a case replaces.
type Pick = dyn Fn(&Path) -> PathBuf;

#[tokio::test]
async fn a_symlinked_directory_never_reaches_another_users_mail() {
    // (directory of alice's replaced, the same directory of bob's)
    let cases: [(&str, &Pick); 4] = [
        ("cur", &|md| md.join("cur")),
        ("new", &|md| md.join("new")),
        ("the Maildir", &|md| md.to_path_buf()),
        ("the user directory", &|md| {
            md.parent().unwrap().to_path_buf()
        }),
    ];
    for (what, pick) in cases {
        let s = TestServer::start().await;
        s.deliver("alice", b"alice's\n");
        let bobs = s.deliver("bob", b"bob's\n");
        // Bob's message in both new/ and cur/, so either link finds it.
        let bob_md = s.maildir("bob");
        std::fs::copy(
            bob_md.join("new").join(&bobs),
            bob_md.join("cur").join(format!("{bobs}:2,")),
        )
        .unwrap();
        let before = s.files("bob");
        symlink_dir(&pick(&bob_md), &pick(&s.maildir("alice")));

        let mut c = s.connect().await;
        c.line().await;
        c.ok("USER alice").await;
        let reply = c.cmd("PASS wonderland").await;
        assert!(reply.starts_with("-ERR [SYS/PERM]"), "{what}: {reply}");
        let _ = c.cmd("QUIT").await;
        assert_eq!(s.files("bob"), before, "{what}");

        // Delivery refuses the same link, and bob's mail is unchanged.
        let store = mailbag::store::maildir::MaildirStore::new(
            s.dir.path().join("mail"),
            "{root}/{domain}/{user}/Maildir".into(),
            "localhost".into(),
        );
        assert!(
            store.deliver("alice", b"new\n".to_vec()).await.is_err(),
            "{what}"
        );
        assert_eq!(s.files("bob"), before, "{what}");
    }
}

#[tokio::test]
async fn symlinked_lock_cache_and_record_files_never_write_through() {
    let s = TestServer::start().await;
    s.deliver("alice", b"one\n");
    std::fs::write(s.maildir("alice").join("new/1700000001.nosize"), b"two\n").unwrap();
    let md = s.maildir("alice");
    let victim = s.dir.path().join("victim");
    let original = b"do not touch\n";
    for name in [
        "mailbag.sizes",
        "mailbag.sizes.tmp",
        "mailbag.listing",
        "mailbag.listing.tmp",
        "mailbag.update",
        "mailbag.update.tmp",
    ] {
        std::fs::write(&victim, original).unwrap();
        // The directories' times are put back below: a listing cached
        // by the round before would be trusted, and miss the delivery.
        let _ = std::fs::remove_file(md.join("mailbag.listing"));
        let _ = std::fs::remove_file(md.join(name));
        std::os::unix::fs::symlink(&victim, md.join(name)).unwrap();
        // One more message, deleted in the session: UPDATE writes its
        // record. Settled directories, so that the listing is cached.
        s.deliver("alice", b"three\n");
        age(&md.join("new"));
        age(&md.join("cur"));
        let mut c = s.login(ALICE).await;
        assert_eq!(stat_count(&c.ok("STAT").await), 3, "{name}");
        c.multi("RETR 1").await;
        c.ok("DELE 3").await;
        c.ok("QUIT").await;
        assert_eq!(std::fs::read(&victim).unwrap(), original, "{name}");
        assert!(victim.is_file(), "{name}");
        assert_eq!(s.files("alice").len(), 2, "{name}");
    }

    // A symlinked lock file: refused, and not written or truncated.
    std::fs::write(&victim, original).unwrap();
    let _ = std::fs::remove_file(md.join("mailbag.lock"));
    std::os::unix::fs::symlink(&victim, md.join("mailbag.lock")).unwrap();
    let mut c = s.connect().await;
    c.line().await;
    c.ok("USER alice").await;
    let reply = c.cmd("PASS wonderland").await;
    assert!(reply.starts_with("-ERR [SYS/PERM]"), "{reply}");
    assert_eq!(std::fs::read(&victim).unwrap(), original);
}

#[tokio::test]
async fn sizes_in_names_that_cannot_be_right_are_measured() {
    let s = TestServer::start().await;
    let md = s.maildir("alice");
    s.deliver("alice", b"seed\n");
    std::fs::remove_file(md.join("new").join(&s.files("alice")[0][4..])).unwrap();
    // 5 octets on disk, 7 with CRLF.
    for (i, w) in ["18446744073709551615", "18446744073709551614", "1", "11"]
        .iter()
        .enumerate()
    {
        std::fs::write(
            md.join("new").join(format!("170000000{i}.x,S=5,W={w}")),
            b"a\nb\n\n",
        )
        .unwrap();
    }
    // A W= that can be right is believed (9 is within 5..=10, though the
    // file measures 8).
    std::fs::write(md.join("new/1700000009.y,S=5,W=9"), b"a\nb\n\n").unwrap();
    let mut c = s.login(ALICE).await;
    assert_eq!(c.ok("STAT").await, "+OK 5 41\r\n");
    let (_, list) = c.multi("LIST").await;
    assert_eq!(list, b"1 8\r\n2 8\r\n3 8\r\n4 8\r\n5 9\r\n");
    let (_, body) = c.multi("RETR 1").await;
    assert_eq!(body.len(), 8);
    c.ok("QUIT").await;
}

#[tokio::test]
async fn a_message_that_cannot_be_read_is_left_out_and_reported() {
    let s = TestServer::start().await;
    s.deliver("alice", b"Subject: one\n\nfirst\n");
    s.deliver("alice", b"Subject: two\n\nsecond\n");
    let md = s.maildir("alice");
    // Not a regular file, named by the listing cache (a scan would skip
    // it): a FIFO and a symlink without W=, which must be measured.
    nix::unistd::mkfifo(
        &md.join("new/1700000001.fifo"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/hostname", md.join("new/1700000003.link")).unwrap();
    for _ in 0..2 {
        // new/x is "N x", cur/x is "C x".
        let names: Vec<String> = s
            .files("alice")
            .iter()
            .map(|f| format!("{} {}", f[..1].to_uppercase(), &f[4..]))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        forge_listing(&md, &names);
        let mut c = s.login(ALICE).await;
        assert_eq!(stat_count(&c.ok("STAT").await), 2);
        for n in [1, 2] {
            c.multi(&format!("RETR {n}")).await;
        }
        let (_, summary) = c.multi("SUMMARY").await;
        let summary = String::from_utf8_lossy(&summary).into_owned();
        assert!(
            summary.ends_with("2 messages could not be read and are not listed\r\n"),
            "{summary}"
        );
        c.ok("QUIT").await;
    }
}

/// A reused listing is not checked file by file (that would cost one
/// `fstatat` per message at every login): a `W=` name it gives for a FIFO
/// is listed, and answered with an error when retrieved, never read.
#[tokio::test]
async fn a_fifo_with_a_size_in_a_forged_listing_is_never_read() {
    let s = TestServer::start().await;
    s.deliver("alice", b"Subject: one\n\nfirst\n");
    let md = s.maildir("alice");
    nix::unistd::mkfifo(
        &md.join("new/1700000002.fifo,S=1,W=2"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    for _ in 0..2 {
        let names: Vec<String> = s
            .files("alice")
            .iter()
            .map(|f| format!("{} {}", f[..1].to_uppercase(), &f[4..]))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        forge_listing(&md, &names);
        let mut c = s.login(ALICE).await;
        let count = stat_count(&c.ok("STAT").await);
        assert!(count == 1 || count == 2, "{count}");
        if count == 2 {
            // The FIFO's timestamp sorts it first.
            let reply = c.cmd("RETR 1").await;
            assert!(reply.starts_with("-ERR"), "{reply}");
        }
        let (_, body) = c.multi(&format!("RETR {count}")).await;
        assert!(String::from_utf8_lossy(&body).contains("first"));
        c.ok("QUIT").await;
    }
}

#[tokio::test]
async fn a_failed_seen_mark_does_not_undo_or_misreport_deletions() {
    let s = TestServer::start().await;
    let kept = s.deliver("alice", b"read me\n");
    s.deliver("alice", b"delete me\n");
    let md = s.maildir("alice");
    // The seen-mark renames into this name: a directory, so it fails.
    std::fs::create_dir(md.join("cur").join(format!("{kept}:2,S"))).unwrap();
    let mut c = s.login(ALICE).await;
    assert_eq!(stat_count(&c.ok("STAT").await), 2);
    c.multi("RETR 1").await;
    c.ok("DELE 2").await;
    let reply = c.cmd("QUIT").await;
    assert!(reply.starts_with("+OK"), "{reply}");
    assert_eq!(
        s.files("alice"),
        vec![format!("cur/{kept}:2,S"), format!("new/{kept}")]
    );
}

#[tokio::test]
async fn a_recorded_update_is_finished_at_the_next_open() {
    let s = TestServer::start().await;
    let bases: Vec<String> = (0..4)
        .map(|i| s.deliver("alice", format!("m{i}\n").as_bytes()))
        .collect();
    let md = s.maildir("alice");
    // Moved by another program since the record was written: found by
    // its base name.
    std::fs::rename(
        md.join("new").join(&bases[1]),
        md.join("cur").join(format!("{}:2,S", bases[1])),
    )
    .unwrap();
    let hex = |name: &str| -> String { name.bytes().map(|b| format!("{b:02x}")).collect() };
    std::fs::write(
        md.join("mailbag.update"),
        format!(
            "mailbag-update 1\nN {}\nN {}\n.\n",
            hex(&bases[0]),
            hex(&bases[1])
        ),
    )
    .unwrap();
    let mut c = s.login(ALICE).await;
    assert_eq!(stat_count(&c.ok("STAT").await), 2);
    c.ok("QUIT").await;
    assert_eq!(
        s.files("alice"),
        vec![format!("new/{}", bases[2]), format!("new/{}", bases[3])]
    );
    assert!(!md.join("mailbag.update").exists());
}

fn mailbag() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailbag"))
}

/// Starts `mailbag serve` with the config already in `dir` (as nobody
/// when the tests run as root: see [`as_unprivileged`]).
fn serve(dir: &Path) -> Child {
    let mut cmd = mailbag();
    as_unprivileged(&mut cmd, dir);
    serve_with(cmd, dir)
}

/// Starts `mailbag serve` as `cmd` says.
fn serve_with(mut cmd: Command, dir: &Path) -> Child {
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("mailbag.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn connect_retrying(addr: SocketAddr) -> Client {
    for _ in 0..400 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            return Client {
                stream: tokio::io::BufReader::new(s),
            };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server at {addr} never came up");
}

async fn login_to(addr: SocketAddr) -> (Client, String) {
    let mut c = connect_retrying(addr).await;
    c.line().await;
    c.ok("USER alice").await;
    let reply = c.cmd("PASS wonderland").await;
    (c, reply)
}

/// A server process killed at a random moment while it runs UPDATE
/// leaves all of the session's deletions done, or none of them.
#[tokio::test]
async fn update_is_all_or_nothing_when_the_process_is_killed() {
    const ROUNDS: usize = 24;
    const MESSAGES: usize = 40;
    const DELETED: usize = 30;
    let mut outcomes = [0usize; 2];
    // A small xorshift seeded from the clock: different moments each run,
    // printed so that a failure can be looked at again.
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        write_passwd(dir.path());
        let maildir = dir.path().join("mail/localhost/alice/Maildir");
        let mut bases = Vec::new();
        for i in 0..MESSAGES {
            let base =
                mailbag::store::maildir::deliver(&maildir, format!("message {i}\n").as_bytes())
                    .unwrap();
            bases.push(base);
        }
        let port = free_port();
        let text = config_text(dir.path(), "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
        std::fs::write(dir.path().join("mailbag.toml"), text).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut child = serve(dir.path());
        let (mut c, reply) = login_to(addr).await;
        assert!(reply.starts_with("+OK"), "{reply}");
        let mut dele = String::new();
        for n in 1..=DELETED {
            dele.push_str(&format!("DELE {n}\r\n"));
        }
        c.send(dele.as_bytes()).await;
        for _ in 0..DELETED {
            assert!(c.line().await.starts_with("+OK"));
        }
        c.send(b"QUIT\r\n").await;
        // Somewhere from before the server reads QUIT to after it answers.
        let wait = Duration::from_micros(next() % 6_000);
        std::thread::sleep(wait);
        child.kill().unwrap();
        child.wait().unwrap();

        let mut child = serve(dir.path());
        let (mut c, reply) = login_to(addr).await;
        assert!(reply.starts_with("+OK"), "{reply}");
        c.ok("QUIT").await;
        child.kill().unwrap();
        child.wait().unwrap();

        let mut present = Vec::new();
        for sub in ["new", "cur"] {
            for e in std::fs::read_dir(maildir.join(sub)).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                present.push(name.split(':').next().unwrap().to_string());
            }
        }
        let gone: Vec<usize> = (0..MESSAGES)
            .filter(|&i| !present.contains(&bases[i]))
            .collect();
        assert!(
            gone.is_empty() || gone == (0..DELETED).collect::<Vec<_>>(),
            "round {round} (killed after {wait:?}): gone {gone:?}"
        );
        outcomes[usize::from(!gone.is_empty())] += 1;
    }
    println!("kept all {}, deleted all {}", outcomes[0], outcomes[1]);
}

/// A maildrop with cache files, lock file and one message that an
/// administrator's root-run command left root-owned with mode 0600, served
/// by a server that runs as `nobody`: login works, the rest is served
/// byte-exact, nothing is lost.
#[tokio::test]
async fn root_owned_files_in_a_maildrop_do_not_lock_the_user_out() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to make files another user cannot write");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .map_or(nobody.gid, |g| g.gid);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    write_passwd(dir.path());
    let maildir = dir.path().join("mail/localhost/alice/Maildir");
    let messages: Vec<Vec<u8>> = (0..4)
        .map(|i| format!("Subject: {i}\n\nbody {i}\n").into_bytes())
        .collect();
    let bases: Vec<String> = messages
        .iter()
        .map(|m| mailbag::store::maildir::deliver(&maildir, m).unwrap())
        .collect();
    // One without W=, so that the size cache has something to hold.
    std::fs::write(maildir.join("cur/1600000000.plain:2,"), b"plain one\n").unwrap();
    chown_tree(dir.path(), nobody.uid.as_raw(), nogroup.as_raw());
    for (name, content) in [
        ("mailbag.lock", &b""[..]),
        ("mailbag.sizes", b"mailbag-sizes 1\n11 1600000000.plain\n"),
        ("mailbag.listing", b"mailbag-listing 1\n"),
    ] {
        let path = maildir.join(name);
        std::fs::write(&path, content).unwrap();
        std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let unreadable = maildir.join("new").join(&bases[1]);
    std::os::unix::fs::chown(&unreadable, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o600)).unwrap();

    let port = free_port();
    let text = config_text(
        dir.path(),
        "\n[server]\nuser = \"nobody\"\ngroup = \"nogroup\"\n",
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.path().join("mailbag.toml"), text).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Started as root: it drops to nobody itself, after binding.
    let mut child = serve_with(mailbag(), dir.path());
    for round in 0..2 {
        let (mut c, reply) = login_to(addr).await;
        assert!(
            reply.starts_with("+OK Logged in. Maildrop has 4 messages"),
            "round {round}: {reply}"
        );
        let mut got = Vec::new();
        for n in 1..=4 {
            got.push(c.multi(&format!("RETR {n}")).await.1);
        }
        let mut want: Vec<Vec<u8>> = vec![crlf(b"plain one\n")];
        want.extend([0, 2, 3].map(|i| crlf(&messages[i])));
        assert_eq!(got, want, "round {round}");
        let (_, summary) = c.multi("SUMMARY").await;
        assert!(
            String::from_utf8_lossy(&summary)
                .ends_with("1 message could not be read and is not listed\r\n"),
            "{summary:?}"
        );
        if round == 1 {
            c.ok("DELE 4").await;
        }
        c.ok("QUIT").await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Nothing lost: the unreadable message and the lock file are as they
    // were, and only the deleted message is gone.
    assert!(unreadable.is_file());
    assert_eq!(
        std::fs::metadata(maildir.join("mailbag.lock"))
            .unwrap()
            .len(),
        0
    );
    let mut left = Vec::new();
    for sub in ["new", "cur"] {
        for e in std::fs::read_dir(maildir.join(sub)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            left.push(name.split(':').next().unwrap().to_string());
        }
    }
    left.sort();
    let mut want = vec![
        "1600000000.plain".to_string(),
        bases[0].clone(),
        bases[1].clone(),
        bases[2].clone(),
    ];
    want.sort();
    assert_eq!(left, want);
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}
