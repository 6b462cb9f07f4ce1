//! The mbox store against its spool's owner (who writes the spool and the
//! files beside it at any moment) and against hostile content: real
//! spools in a temporary spool directory, the server on a real socket.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::mbox::{entry, MboxServer};
use crate::support::Client;

const BOB: &[u8] = b"Subject: for bob only\n\nthe secret\n";

fn write_bob(d: &Path) {
    std::fs::write(d.join("mail/bob"), entry("x@example.org", BOB)).unwrap();
}

fn two_for_alice(d: &Path) {
    let spool = [
        entry("a@example.org", b"Subject: one\n\nfirst\n"),
        entry("b@example.org", b"Subject: two\n\nsecond\n"),
    ]
    .concat();
    std::fs::write(d.join("mail/alice"), spool).unwrap();
}

/// USER and PASS for alice: the answer to PASS.
async fn pass(s: &MboxServer) -> (Client, String) {
    let mut c = Client::connect(s.addr()).await;
    c.line().await;
    c.ok("USER alice").await;
    let reply = c.cmd("PASS wonderland").await;
    (c, reply)
}

/// A spool that is a hard link to another user's is neither served nor
/// rewritten: alice would read bob's mail and delete it.
#[tokio::test]
async fn a_spool_hard_linked_to_another_users_is_not_served() {
    let s = MboxServer::start(|d| {
        write_bob(d);
        std::fs::hard_link(d.join("mail/bob"), d.join("mail/alice")).unwrap();
    })
    .await;
    let bob = s.dir.path().join("mail/bob");
    let before = std::fs::read(&bob).unwrap();
    let (mut c, reply) = pass(&s).await;
    if reply.starts_with("+OK") {
        let (_, list) = c.multi("LIST").await;
        assert!(list.is_empty(), "bob's spool served to alice: {list:?}");
        c.cmd("DELE 1").await;
        c.cmd("QUIT").await;
    } else {
        assert!(reply.starts_with("-ERR [SYS/PERM]"), "{reply}");
    }
    assert_eq!(std::fs::read(&bob).unwrap(), before);
    s.stop().await;
}

/// LMTP does not append to a spool that is a hard link to another file.
#[tokio::test]
async fn lmtp_never_appends_to_a_hard_linked_spool() {
    let s = MboxServer::start_with("[lmtp]\nlisten = [\"127.0.0.1:0\"]", |d| {
        write_bob(d);
        std::fs::hard_link(d.join("mail/bob"), d.join("mail/alice")).unwrap();
    })
    .await;
    let bob = s.dir.path().join("mail/bob");
    let before = std::fs::read(&bob).unwrap();
    let mut c = Client::connect(s.lmtp_addr.unwrap()).await;
    assert!(c.line().await.starts_with("220 "));
    c.send(b"LHLO client.example\r\n").await;
    while c.line().await.starts_with("250-") {}
    assert!(c.cmd("MAIL FROM:<m@example.org>").await.starts_with("250"));
    let rcpt = c.cmd("RCPT TO:<alice>").await;
    if rcpt.starts_with("250") {
        assert!(c.cmd("DATA").await.starts_with("354"));
        c.send(b"Subject: into bob\r\n\r\nplanted\r\n.\r\n").await;
        let done = c.line().await;
        assert!(!done.starts_with("250"), "delivered: {done}");
    }
    assert_eq!(std::fs::read(&bob).unwrap(), before);
    s.stop().await;
}

/// The journal's temporary name, taken by the spool's owner during the
/// session with a hard link to another file, does not make UPDATE
/// truncate and overwrite that file.
#[tokio::test]
async fn a_hard_link_under_the_journals_temporary_name_is_not_written() {
    let s = MboxServer::start(|d| {
        write_bob(d);
        two_for_alice(d);
    })
    .await;
    let bob = s.dir.path().join("mail/bob");
    let before = std::fs::read(&bob).unwrap();
    let mut c = s.login().await;
    std::fs::hard_link(&bob, s.dir.path().join("mail/alice.mailbag-journal.new")).unwrap();
    c.ok("DELE 1").await;
    c.ok("QUIT").await;
    assert_eq!(std::fs::read(&bob).unwrap(), before);
    assert_eq!(
        std::fs::read(s.spool()).unwrap(),
        entry("b@example.org", b"Subject: two\n\nsecond\n")
    );
    assert_eq!(std::fs::metadata(&bob).unwrap().nlink(), 1);
    s.stop().await;
}

/// A journal forged by the spool's owner with a checksum over a terabyte
/// (a sparse file) is not read through at login: a journal longer than
/// the spool cannot be one mailbag wrote for it.
#[tokio::test]
async fn a_forged_journal_of_a_terabyte_is_not_hashed() {
    let s = MboxServer::start(two_for_alice).await;
    let meta = std::fs::metadata(s.spool()).unwrap();
    let huge: u64 = 1 << 40;
    let mut header = b"mailbag-mbox-j1\n".to_vec();
    for word in [meta.dev(), meta.ino(), huge, huge] {
        header.extend_from_slice(&word.to_le_bytes());
    }
    header.extend_from_slice(&[0u8; 32]);
    let journal = s.dir.path().join("mail/alice.mailbag-journal");
    let f = std::fs::File::create(&journal).unwrap();
    f.write_all_at(&header, 0).unwrap();
    f.set_len(header.len() as u64 + huge + 32).unwrap();
    drop(f);
    let mut c = s.login().await;
    assert!(c.ok("STAT").await.starts_with("+OK 2 "));
    c.ok("QUIT").await;
    assert!(!journal.exists());
    s.stop().await;
}

/// A sparse spool (a hole of 64 MiB inside a message) is not rewritten:
/// UPDATE would write the hole out as zeros, into a journal in the spool
/// directory that no quota of the owner's covers, and into the spool.
#[tokio::test]
async fn a_sparse_spool_is_not_written_out_at_update() {
    let hole: u64 = 64 << 20;
    let s = MboxServer::start(|d| {
        let first = entry("a@example.org", b"Subject: one\n\nfirst\n");
        let head = b"From b@example.org Sun Dec  6 22:00:00 2026\nSubject: hole\n\n";
        let f = std::fs::File::create(d.join("mail/alice")).unwrap();
        f.write_all_at(&first, 0).unwrap();
        f.write_all_at(head, first.len() as u64).unwrap();
        let end = (first.len() + head.len()) as u64 + hole;
        f.write_all_at(b"\nend\n\n", end).unwrap();
    })
    .await;
    let before = std::fs::metadata(s.spool()).unwrap();
    let mut c = s.login().await;
    assert!(c.ok("STAT").await.starts_with("+OK 2 "));
    c.ok("DELE 1").await;
    let quit = c.cmd("QUIT").await;
    let after = std::fs::metadata(s.spool()).unwrap();
    assert!(
        after.blocks() * 512 < 1 << 20,
        "the hole was written out ({} octets allocated); QUIT: {quit}",
        after.blocks() * 512
    );
    assert!(quit.starts_with("-ERR"), "{quit}");
    assert_eq!(after.len(), before.len());
    let left: Vec<_> = std::fs::read_dir(s.dir.path().join("mail"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("journal"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    s.stop().await;
}

/// A FIFO or a symlink under the journal's name is removed as a journal
/// that does not check out: it neither hangs the login nor locks the
/// user out for good, and nothing it points to is read or written.
#[tokio::test]
async fn a_fifo_or_symlink_as_the_journal_does_not_lock_the_user_out() {
    for kind in ["fifo", "symlink"] {
        let s = MboxServer::start(|d| {
            write_bob(d);
            two_for_alice(d);
            let journal = d.join("mail/alice.mailbag-journal");
            match kind {
                "fifo" => nix::unistd::mkfifo(&journal, nix::sys::stat::Mode::S_IRWXU).unwrap(),
                _ => std::os::unix::fs::symlink(d.join("mail/bob"), &journal).unwrap(),
            }
        })
        .await;
        let bob = s.dir.path().join("mail/bob");
        let before = std::fs::read(&bob).unwrap();
        let mut c = s.login().await;
        assert!(c.ok("STAT").await.starts_with("+OK 2 "), "{kind}");
        c.ok("DELE 1").await;
        c.ok("QUIT").await;
        assert!(!s.dir.path().join("mail/alice.mailbag-journal").exists());
        assert_eq!(std::fs::read(&bob).unwrap(), before, "{kind}");
        assert_eq!(
            std::fs::read(s.spool()).unwrap(),
            entry("b@example.org", b"Subject: two\n\nsecond\n"),
            "{kind}"
        );
        s.stop().await;
    }
}
