//! A mailbox owner's hostile Maildir against the store, `mailbag import`
//! and `mailbag mailbox`: special files named where messages are
//! expected, source directories replaced by symlinks into other users'
//! mail, files swapped between a listing and a read. Real files, real
//! sockets, the real binary.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;

use crate::maildir_trust::forge_listing;
use crate::support::*;

fn mailbag() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailbag"))
}

/// A socket in new/ that a forged listing names as a message (no `W=`, so
/// the server opens it to measure it) is left out like any file that is
/// not a message: the rest of the maildrop is served, at every login.
#[tokio::test]
async fn a_socket_named_by_a_forged_listing_does_not_lock_the_owner_out() {
    let s = TestServer::start().await;
    let own = s.deliver("alice", b"Subject: own\n\nmine\n");
    let md = s.maildir("alice");
    let _socket = UnixListener::bind(md.join("new/1700000000.sock.host")).unwrap();
    forge_listing(
        &md,
        &[format!("N {own}"), "N 1700000000.sock.host".to_string()],
    );
    for _ in 0..2 {
        let mut c = s.login(ALICE).await;
        let stat = c.ok("STAT").await;
        assert!(stat.starts_with("+OK 1 "), "{stat}");
        let (_, body) = c.multi("RETR 1").await;
        assert_eq!(body, crlf(b"Subject: own\n\nmine\n"));
        c.ok("QUIT").await;
    }
}

/// `mailbag import --from maildir:` reads only the source Maildir: a cur/
/// or new/ that its owner replaced with a symlink to another user's mail
/// is refused, and nothing of that mail reaches the target.
#[test]
fn import_never_follows_a_symlinked_source_directory() {
    for sub in ["cur", "new"] {
        let dir = tempfile::tempdir().unwrap();
        write_passwd(dir.path());
        std::fs::write(dir.path().join("mailbag.toml"), config_text(dir.path(), "")).unwrap();
        let bob = dir.path().join("mail/localhost/bob/Maildir");
        mailbag::store::maildir::deliver(&bob, b"Subject: bob's\n\nsecret of bob\n").unwrap();
        let source = dir.path().join("home/eve/Maildir");
        mailbag::store::maildir::deliver(&source, b"Subject: eve's\n\nown\n").unwrap();
        if sub == "cur" {
            std::fs::remove_dir(source.join("cur")).unwrap();
        } else {
            // Eve's own message moves to cur/ so that new/ can go.
            for e in std::fs::read_dir(source.join("new")).unwrap() {
                let e = e.unwrap();
                std::fs::rename(e.path(), source.join("cur").join(e.file_name())).unwrap();
            }
            std::fs::remove_dir(source.join("new")).unwrap();
        }
        std::os::unix::fs::symlink(bob.join("new"), source.join(sub)).unwrap();
        let mut cmd = mailbag();
        as_unprivileged(&mut cmd, dir.path());
        let out = cmd
            .arg("--config")
            .arg(dir.path().join("mailbag.toml"))
            .arg("import")
            .arg("--user")
            .arg("alice")
            .arg("--from")
            .arg(format!("maildir:{}", source.display()))
            .output()
            .unwrap();
        let alice = dir.path().join("mail/localhost/alice/Maildir");
        for (_, body) in maildir_files(&alice, "new") {
            assert!(
                !body.windows(13).any(|w| w == b"secret of bob"),
                "{sub}: bob's mail was imported for alice: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            !out.status.success(),
            "{sub}: import went through a symlink"
        );
    }
}

/// `mailbag import --from mbox:` does not follow an mbox that its owner
/// made a symlink to another user's mail file.
#[test]
fn import_never_follows_a_symlinked_mbox() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    std::fs::write(dir.path().join("mailbag.toml"), config_text(dir.path(), "")).unwrap();
    let bob = dir.path().join("mail/localhost/bob/Maildir");
    let name = mailbag::store::maildir::deliver(
        &bob,
        b"From bob Mon Jan  1 00:00:00 2024\nSubject: bob's\n\nsecret of bob\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("home/eve")).unwrap();
    let mbox = dir.path().join("home/eve/mbox");
    std::os::unix::fs::symlink(bob.join("new").join(name), &mbox).unwrap();
    let mut cmd = mailbag();
    as_unprivileged(&mut cmd, dir.path());
    let out = cmd
        .arg("--config")
        .arg(dir.path().join("mailbag.toml"))
        .arg("import")
        .arg("--user")
        .arg("alice")
        .arg("--from")
        .arg(format!("mbox:{}", mbox.display()))
        .output()
        .unwrap();
    let alice = dir.path().join("mail/localhost/alice/Maildir");
    assert!(
        maildir_files(&alice, "new").is_empty(),
        "bob's mail imported"
    );
    assert!(!out.status.success());
}

/// A sparse message of 4 TiB (a few blocks of the owner's quota) whose
/// `W=` is wrong is measured without reading its holes: login answers at
/// once with its exact size, instead of reading terabytes of zeros.
#[tokio::test]
async fn a_huge_sparse_message_is_measured_without_reading_its_holes() {
    let s = TestServer::start().await;
    s.deliver("alice", b"Subject: own\n\nmine\n");
    let md = s.maildir("alice");
    let big = md.join("new/1700000000.sparse,S=1,W=1");
    let file = std::fs::File::create(&big).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"Subject: big\n\n", 0).unwrap();
    let len: u64 = 4 << 40;
    file.set_len(len).unwrap();
    drop(file);
    let mut c = s.login(ALICE).await;
    let stat = c.ok("STAT").await;
    assert!(stat.starts_with("+OK 2 "), "{stat}");
    // Two LFs gain a CR each; the zeros end without a line end.
    assert_eq!(c.ok("LIST 1").await, format!("+OK 1 {}\r\n", len + 2 + 2));
    c.ok("QUIT").await;
}

/// A name whose `W=` the file's length contradicts is measured once and
/// its size remembered in `mailbag.sizes`: the next login takes it from
/// there instead of reading the file again (so hard links to one large
/// file, with wrong sizes in their names, cost one reading, not one per
/// link per login).
#[tokio::test]
async fn a_contradicted_size_is_measured_once_then_remembered() {
    let s = TestServer::start().await;
    let md = s.maildir("alice");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    let first = md.join("new/1700000000.link0,S=1,W=1");
    std::fs::write(&first, vec![b'x'; 300_000]).unwrap();
    for n in 1..4 {
        std::fs::hard_link(&first, md.join(format!("new/170000000{n}.link{n},S=1,W=1"))).unwrap();
    }
    let mut c = s.login(ALICE).await;
    assert_eq!(c.ok("STAT").await, "+OK 4 1200008\r\n");
    c.ok("QUIT").await;
    let sizes = std::fs::read_to_string(md.join("mailbag.sizes")).unwrap();
    for n in 0..4 {
        let line = format!("300002 170000000{n}.link{n},S=1,W=1\n");
        assert!(sizes.contains(&line), "{sizes}");
    }
    // What the cache says is what the next login reports: it did not
    // read the files again.
    std::fs::write(
        md.join("mailbag.sizes"),
        sizes.replace("300002 1700000002.link2,", "7 1700000002.link2,"),
    )
    .unwrap();
    let mut c = s.login(ALICE).await;
    assert_eq!(c.ok("LIST 3").await, "+OK 3 7\r\n");
    c.ok("QUIT").await;
}

/// Makes `path` a sparse message: a header, then zeros to `len` octets.
fn sparse_message(path: &Path, subject: &str, len: u64) {
    let file = std::fs::File::create(path).unwrap();
    let header = format!("Subject: {subject}\n\n");
    std::os::unix::fs::FileExt::write_all_at(&file, header.as_bytes(), 0).unwrap();
    file.set_len(len).unwrap();
}

/// SUMMARY of a 4 TiB sparse message reads a bounded part of it and says
/// so, instead of reading terabytes of zeros while the client waits for
/// one line.
#[tokio::test]
async fn summary_of_a_huge_sparse_message_reads_a_bounded_part() {
    let s = TestServer::start().await;
    let md = s.maildir("alice");
    s.deliver("alice", b"Subject: own\n\nmine\n");
    sparse_message(&md.join("new/1700000000.sparse"), "huge", 4 << 40);
    let mut c = s.login(ALICE).await;
    let (_, body) = c.multi("SUMMARY").await;
    let body = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert!(lines[0].contains("huge"), "{body}");
    assert!(lines[0].contains("not fully checked"), "{body}");
    assert!(lines[1].contains("own"), "{body}");
    assert!(!lines[1].contains("not fully checked"), "{body}");
    c.ok("QUIT").await;
}

/// One SUMMARY reads a bounded amount in all: hard links to one file,
/// each within the per-message bound, are read whole (and a bare CR at
/// its very end found) until the SUMMARY's budget is spent, and then
/// only as far as their headers are parsed.
#[tokio::test]
async fn summary_reads_a_bounded_amount_over_all_messages() {
    let s = TestServer::start().await;
    let md = s.maildir("alice");
    s.deliver("alice", b"Subject: seed\n\n");
    std::fs::remove_file(md.join("new").join(&s.files("alice")[0][4..])).unwrap();
    let first = md.join("new/1700000000.link0");
    let mut message = b"Subject: linked\n\n".to_vec();
    let line = [&[b'x'; 79][..], b"\n"].concat();
    while message.len() < 32 << 20 {
        message.extend_from_slice(&line);
    }
    message.extend_from_slice(b"bare\rCR\n");
    std::fs::write(&first, &message).unwrap();
    for n in 1..16 {
        std::fs::hard_link(&first, md.join(format!("new/17000000{n:02}.link{n}"))).unwrap();
    }
    let mut c = s.login(ALICE).await;
    let (_, body) = c.multi("SUMMARY").await;
    let body = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 16, "{body}");
    assert!(lines[0].contains("bare CR"), "{body}");
    assert!(!lines[15].contains("bare CR"), "{body}");
    c.ok("QUIT").await;
}

/// A forged listing of more names than any listing is trusted with (a
/// few megabytes of short made-up names, each of which would become an
/// entry of every login's snapshot) is ignored: the directories are
/// scanned, and the listing is replaced by what they hold.
#[tokio::test]
async fn a_listing_of_millions_of_made_up_names_is_not_trusted() {
    let s = TestServer::start().await;
    let own = s.deliver("alice", b"Subject: own\n\nmine\n");
    let md = s.maildir("alice");
    let mut names = vec![format!("N {own}")];
    names.extend((0..(1 << 20)).map(|n| format!("N {n:x}")));
    forge_listing(&md, &names);
    let mut c = s.login(ALICE).await;
    assert!(c.ok("STAT").await.starts_with("+OK 1 "));
    c.ok("QUIT").await;
    let listing = std::fs::metadata(md.join("mailbag.listing")).map_or(0, |m| m.len());
    assert!(
        listing < 4096,
        "the forged listing was kept: {listing} octets"
    );
}

/// An UPDATE record of more deletions than any UPDATE may make (a few
/// megabytes of short made-up names, which would cost the login over a
/// gigabyte of memory to read) is not one mailbag wrote: it is removed
/// and nothing it names is deleted.
#[tokio::test]
async fn an_update_record_of_millions_of_names_is_not_trusted() {
    let s = TestServer::start().await;
    let own = s.deliver("alice", b"Subject: own\n\nmine\n");
    let md = s.maildir("alice");
    let hex: String = own.bytes().map(|b| format!("{b:02x}")).collect();
    let mut record = format!("mailbag-update 1\nN {hex}\n");
    for _ in 0..(1 << 20) {
        record.push_str("N 61\n");
    }
    record.push_str(".\n");
    std::fs::write(md.join("mailbag.update"), record).unwrap();
    let mut c = s.login(ALICE).await;
    assert!(c.ok("STAT").await.starts_with("+OK 1 "));
    c.ok("QUIT").await;
    assert_eq!(s.files("alice"), vec![format!("new/{own}")]);
    assert!(!md.join("mailbag.update").exists());
}

/// A size cache of more entries than any cache is trusted with (a few
/// megabytes of short made-up lines) is no cache: what it says of a real
/// message is not believed, the message is measured.
#[tokio::test]
async fn a_size_cache_of_millions_of_lines_is_not_trusted() {
    let s = TestServer::start().await;
    let md = s.maildir("alice");
    s.deliver("alice", b"seed\n");
    std::fs::remove_file(md.join("new").join(&s.files("alice")[0][4..])).unwrap();
    std::fs::write(md.join("new/1700000000.nosize"), b"Subject: own\n\nmine\n").unwrap();
    let mut cache = String::from("mailbag-sizes 1\n");
    for n in 0..(1 << 20) {
        cache.push_str(&format!("1 0{n:x}\n"));
    }
    cache.push_str("7 1700000000.nosize\n");
    std::fs::write(md.join("mailbag.sizes"), cache).unwrap();
    let mut c = s.login(ALICE).await;
    assert_eq!(c.ok("LIST 1").await, "+OK 1 22\r\n");
    c.ok("QUIT").await;
}

/// `mailbag import --to mbox:` never writes through a symlink that the
/// owner of the target's directory put there, pointing at another
/// user's message: the export is refused and that message is unchanged.
#[test]
fn export_to_an_mbox_never_writes_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    std::fs::write(dir.path().join("mailbag.toml"), config_text(dir.path(), "")).unwrap();
    let bob = dir.path().join("mail/localhost/bob/Maildir");
    let name = mailbag::store::maildir::deliver(&bob, b"Subject: bob's\n\nbob\n").unwrap();
    let alice = dir.path().join("mail/localhost/alice/Maildir");
    mailbag::store::maildir::deliver(&alice, b"Subject: alice's\n\nalice\n").unwrap();
    std::fs::create_dir_all(dir.path().join("home/eve")).unwrap();
    let mbox = dir.path().join("home/eve/export.mbox");
    let victim = bob.join("new").join(name);
    std::os::unix::fs::symlink(&victim, &mbox).unwrap();
    let mut cmd = mailbag();
    as_unprivileged(&mut cmd, dir.path());
    let out = cmd
        .arg("--config")
        .arg(dir.path().join("mailbag.toml"))
        .arg("import")
        .arg("--user")
        .arg("alice")
        .arg("--to")
        .arg(format!("mbox:{}", mbox.display()))
        .output()
        .unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"Subject: bob's\n\nbob\n");
    assert!(!out.status.success());
}
