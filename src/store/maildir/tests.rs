//! Tests of the Maildir store against real temporary directories.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::*;

fn store(dir: &Path) -> MaildirStore {
    MaildirStore::new(
        dir.to_path_buf(),
        "{root}/{domain}/{user}/Maildir".into(),
        "example.org".into(),
    )
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn put(md: &Path, sub: &str, name: &str, content: &[u8]) {
    std::fs::create_dir_all(md.join(sub)).unwrap();
    std::fs::write(md.join(sub).join(name), content).unwrap();
}

async fn read_all(maildrop: &mut MaildirMaildrop, index: usize) -> Result<Vec<u8>, StoreError> {
    let mut file = maildrop.read(index).await?;
    let mut out = Vec::new();
    file.read_to_end(&mut out).await.unwrap();
    Ok(out)
}

fn setup() -> (tempfile::TempDir, MaildirStore, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let md = store.maildir_path("alice").unwrap();
    (dir, store, md)
}

#[test]
fn path_template_and_refusals() {
    let s = store(Path::new("/data"));
    assert_eq!(
        s.maildir_path("bob@example.com").unwrap(),
        Path::new("/data/example.com/bob/Maildir")
    );
    assert_eq!(
        s.maildir_path("bob").unwrap(),
        Path::new("/data/example.org/bob/Maildir")
    );
    let by_name = MaildirStore::new("/d".into(), "{root}/{name}".into(), String::new());
    assert_eq!(by_name.maildir_path("a@b").unwrap(), Path::new("/d/a@b"));
    assert_eq!(by_name.maildir_path("a").unwrap(), Path::new("/d/a"));

    let long = "a".repeat(256);
    for bad in [
        "../x", "a/b", ".hidden", "a\0b", "a\\b", "a\nb", "", "@x", "x@", "x@.y", "x@a..b",
        "x@y@z", "a..b", &long,
    ] {
        assert!(
            matches!(s.maildir_path(bad), Err(StoreError::Permanent(_))),
            "{bad:?} accepted"
        );
    }
    let outside = MaildirStore::new("/d".into(), "/elsewhere/{user}".into(), String::new());
    assert!(outside.maildir_path("a").is_err());
    let unknown = MaildirStore::new("/d".into(), "{root}/{uid}".into(), String::new());
    assert!(unknown.maildir_path("a").is_err());
}

#[tokio::test]
async fn missing_maildir_opens_empty_and_is_created() {
    let (_dir, store, md) = setup();
    let maildrop = store.open("alice".into()).await.unwrap();
    assert!(maildrop.messages().is_empty());
    for sub in ["tmp", "new", "cur"] {
        assert!(md.join(sub).is_dir());
    }
}

#[tokio::test]
async fn sizes_from_names_files_and_order() {
    let (_dir, store, md) = setup();
    // W= is trusted even though the content differs.
    put(&md, "cur", "1000.a,S=5,W=7:2,S", b"12345");
    put(&md, "new", "1001.b", b"a\nb\n");
    put(&md, "cur", "1002.c:2,RS", b"a\r\nb\r\n");
    // S= is the on-disk length, not the CRLF size.
    put(&md, "new", "1003.d,S=4", b"x\ny\n");
    put(&md, "new", "999.e,S=1", b"z");
    put(&md, "new", "notime", b"");
    put(&md, "new", ".dotfile", b"hidden");
    std::os::unix::fs::symlink("/etc/passwd", md.join("new/1004.link")).unwrap();
    std::fs::create_dir(md.join("cur/1005.dir")).unwrap();

    let maildrop = store.open("alice".into()).await.unwrap();
    let got: Vec<(&str, u64)> = maildrop
        .messages()
        .iter()
        .map(|m| (m.uid.as_str(), m.size))
        .collect();
    assert_eq!(
        got,
        vec![
            ("999.e,S=1", 3),
            ("1000.a,S=5,W=7", 7),
            ("1001.b", 6),
            ("1002.c", 6),
            ("1003.d,S=4", 6),
            ("notime", 0),
        ]
    );
}

#[tokio::test]
async fn lf_and_crlf_files_measure_the_same() {
    let (_dir, store, md) = setup();
    put(&md, "new", "1.lf", b"Subject: x\n\nbody\n");
    put(&md, "new", "2.crlf", b"Subject: x\r\n\r\nbody\r\n");
    put(&md, "new", "3.mixed", b"Subject: x\r\n\nbody");
    let maildrop = store.open("alice".into()).await.unwrap();
    let sizes: Vec<u64> = maildrop.messages().iter().map(|m| m.size).collect();
    assert_eq!(sizes, vec![20, 20, 20]);
}

#[tokio::test]
async fn many_unsized_files_are_measured_in_parallel_and_exactly() {
    let (_dir, store, md) = setup();
    // Enough names without W= to take the parallel path; each message a
    // different mix of line endings, so a size mixed up between threads
    // would show.
    let n = 3000u64;
    for i in 0..n {
        let body = format!("Subject: {i}\n\n{}", "x\n".repeat(i as usize % 17));
        put(
            &md,
            if i % 2 == 0 { "new" } else { "cur" },
            &format!("{}.M{i}P1.host", 1_700_000_000 + i),
            body.as_bytes(),
        );
    }
    let maildrop = store.open("alice".into()).await.unwrap();
    assert_eq!(maildrop.messages().len(), n as usize);
    for (i, m) in maildrop.messages().iter().enumerate() {
        let i = i as u64;
        let body = format!("Subject: {i}\n\n{}", "x\n".repeat(i as usize % 17));
        assert_eq!(
            m.size,
            mailbag_proto::dot::canonical_size(body.as_bytes()),
            "message {i}"
        );
    }
}

#[tokio::test]
async fn same_base_in_new_and_cur_is_one_message_from_cur() {
    let (_dir, store, md) = setup();
    put(&md, "new", "1.dup", b"old\n");
    put(&md, "cur", "1.dup:2,S", b"new\n");
    let mut maildrop = store.open("alice".into()).await.unwrap();
    assert_eq!(maildrop.messages().len(), 1);
    assert_eq!(read_all(&mut maildrop, 0).await.unwrap(), b"new\n");
}

#[tokio::test]
async fn uidl_stable_across_retrieval_rename() {
    let (_dir, store, md) = setup();
    let delivered = deliver(&md, b"hello\n").unwrap();
    let odd = "1700000001.has spaces and a very long name that goes well past seventy octets";
    put(&md, "new", odd, b"odd\n");
    put(&md, "cur", "1700000002.flagged:2,T", b"t\n");

    let first = store.open("alice".into()).await.unwrap();
    let before: Vec<MessageInfo> = first.messages().to_vec();
    assert_eq!(before.len(), 3);
    assert_eq!(before[0].uid.len(), 40);
    assert_eq!(before[2].uid, delivered);
    first.commit(&[], &[0, 1, 2, 2]).await.unwrap();

    assert_eq!(
        names(&md.join("cur")),
        vec![
            format!("{odd}:2,S"),
            "1700000002.flagged:2,ST".to_string(),
            format!("{delivered}:2,S"),
        ]
    );
    assert!(names(&md.join("new")).is_empty());
    let again = store.open("alice".into()).await.unwrap();
    assert_eq!(again.messages(), &before[..]);
}

#[tokio::test]
async fn second_open_is_locked_until_drop() {
    let (_dir, store, _md) = setup();
    let first = store.open("alice".into()).await.unwrap();
    assert!(matches!(
        store.open("alice".into()).await,
        Err(StoreError::Locked)
    ));
    // Another user is independent.
    let _bob = store.open("bob".into()).await.unwrap();
    drop(first);
    let second = store.open("alice".into()).await.unwrap();
    second.commit(&[], &[]).await.unwrap();
    store.open("alice".into()).await.unwrap();
}

#[tokio::test]
async fn commit_deletes_marks_seen_and_spares_later_delivery() {
    let (_dir, store, md) = setup();
    let a = deliver(&md, b"a\n").unwrap();
    let b = deliver(&md, b"b\n").unwrap();
    put(&md, "cur", "1.c:2,RF", b"c\n");
    let maildrop = store.open("alice".into()).await.unwrap();
    let late = store.deliver("alice", b"late\n".to_vec()).await.unwrap();
    let uids: Vec<&str> = maildrop.messages().iter().map(|m| m.uid.as_str()).collect();
    assert_eq!(uids, vec!["1.c", a.as_str(), b.as_str()]);

    // Message 2 (a) deleted and retrieved: deletion wins.
    maildrop.commit(&[1], &[0, 1, 2]).await.unwrap();
    assert_eq!(names(&md.join("new")), vec![late.clone()]);
    assert_eq!(
        names(&md.join("cur")),
        vec!["1.c:2,FRS".to_string(), format!("{b}:2,S")]
    );
    assert_eq!(
        std::fs::read(md.join("new").join(&late)).unwrap(),
        b"late\n"
    );
    let reopened = store.open("alice".into()).await.unwrap();
    assert_eq!(reopened.messages().len(), 3);
}

#[tokio::test]
async fn read_follows_external_rename_and_reports_vanished() {
    let (_dir, store, md) = setup();
    let a = deliver(&md, b"first\n").unwrap();
    let b = deliver(&md, b"second\n").unwrap();
    let mut maildrop = store.open("alice".into()).await.unwrap();

    // An IMAP client marks it read and flagged meanwhile.
    std::fs::rename(
        md.join("new").join(&a),
        md.join("cur").join(format!("{a}:2,FS")),
    )
    .unwrap();
    assert_eq!(read_all(&mut maildrop, 0).await.unwrap(), b"first\n");
    std::fs::remove_file(md.join("new").join(&b)).unwrap();
    assert!(matches!(
        read_all(&mut maildrop, 1).await,
        Err(StoreError::Vanished)
    ));
    assert!(maildrop.read(2).await.is_err());

    // Deleting an externally renamed or vanished message is fine.
    maildrop.commit(&[0, 1], &[]).await.unwrap();
    assert!(names(&md.join("cur")).is_empty());
}

#[tokio::test]
async fn read_refuses_a_symlink_swapped_in() {
    let (dir, store, md) = setup();
    put(&md, "new", "1.x", b"x\n");
    let mut maildrop = store.open("alice".into()).await.unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"secret").unwrap();
    std::fs::remove_file(md.join("new/1.x")).unwrap();
    std::os::unix::fs::symlink(&secret, md.join("new/1.x")).unwrap();
    assert!(matches!(
        read_all(&mut maildrop, 0).await,
        Err(StoreError::Permanent(_))
    ));
}

#[tokio::test]
async fn read_refuses_a_fifo_swapped_in_without_waiting_for_a_writer() {
    let (_dir, store, md) = setup();
    put(&md, "new", "1.x", b"x\n");
    let mut maildrop = store.open("alice".into()).await.unwrap();
    std::fs::remove_file(md.join("new/1.x")).unwrap();
    let fifo = md.join("new/1.x");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // A blocking open would hold its thread until a writer came: read on
    // a thread of its own, so that such a failure is seen and then freed.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let read = runtime.block_on(read_all(&mut maildrop, 0));
        let _ = tx.send(matches!(read, Err(StoreError::Permanent(_))));
    });
    let refused = rx.recv_timeout(Duration::from_secs(5));
    if refused.is_err() {
        // Let the stuck open finish.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    }
    reader.join().unwrap();
    assert_eq!(refused, Ok(true), "the FIFO was not refused at once");
}

#[tokio::test]
async fn small_messages_are_read_whole_and_exactly() {
    let (_dir, store, md) = setup();
    let small = READ_WHOLE_OCTETS as usize;
    let sizes = [0, 1, 4095, 4096, 4097, 100_000, small, small + 1];
    for (n, &size) in sizes.iter().enumerate() {
        let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        put(&md, "cur", &format!("{n}.x:2,"), &body);
    }
    let mut maildrop = store.open("alice".into()).await.unwrap();
    let mut seen = Vec::new();
    for index in 0..sizes.len() {
        let whole = read_all(&mut maildrop, index).await.unwrap();
        assert!(whole
            .iter()
            .enumerate()
            .all(|(i, &b)| b == b'a' + (i % 26) as u8));
        // Up to READ_WHOLE_OCTETS in memory, larger ones streamed.
        let reader = maildrop.read(index).await.unwrap();
        assert_eq!(
            reader.in_memory(),
            (whole.len() <= small).then_some(&whole[..])
        );
        seen.push(whole.len());
    }
    seen.sort_unstable();
    assert_eq!(seen, sizes);
}

#[tokio::test]
async fn size_cache_is_written_used_and_garbage_ignored() {
    let (_dir, store, md) = setup();
    put(&md, "new", "1.a", b"a\nb\n");
    put(&md, "new", "2.b", b"ccc");
    deliver(&md, b"w\n").unwrap();
    drop(store.open("alice".into()).await.unwrap());
    let cache = std::fs::read_to_string(md.join("mailbag.sizes")).unwrap();
    let mut lines: Vec<&str> = cache.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["5 2.b", "6 1.a", "mailbag-sizes 1"]);

    // A warm open trusts the cache for names on disk (messages are immutable).
    std::fs::write(
        md.join("mailbag.sizes"),
        "mailbag-sizes 1\n9 1.a\n5 2.b\n7 gone\n",
    )
    .unwrap();
    let sizes: Vec<u64> = store
        .open("alice".into())
        .await
        .unwrap()
        .messages()
        .iter()
        .map(|m| m.size)
        .collect();
    assert_eq!(sizes, vec![9, 5, 3]);
    let pruned = std::fs::read_to_string(md.join("mailbag.sizes")).unwrap();
    assert!(!pruned.contains("gone"));

    for garbage in [
        &b"\xff\x00garbage\n\n"[..],
        b"mailbag-sizes 1\nx 1.a\n-4 2.b\n 1.a\n",
    ] {
        std::fs::write(md.join("mailbag.sizes"), garbage).unwrap();
        let sizes: Vec<u64> = store
            .open("alice".into())
            .await
            .unwrap()
            .messages()
            .iter()
            .map(|m| m.size)
            .collect();
        assert_eq!(sizes, vec![6, 5, 3]);
    }
}

#[tokio::test]
async fn store_deliver_resolves_the_user() {
    let (_dir, store, md) = setup();
    let base = store.deliver("alice", b"x".to_vec()).await.unwrap();
    assert!(base.ends_with(",S=1,W=3"));
    assert!(md.join("new").join(&base).is_file());
    assert!(store.deliver("../x", b"x".to_vec()).await.is_err());
}

/// Prints cold and warm open times for 100,000 tiny messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing figures, run by hand"]
async fn timing_100k() {
    const N: usize = 100_000;
    let (_dir, store, md) = setup();
    deliver::create_maildir(&md).unwrap();
    let t = Instant::now();
    // Named as deliver() names them, written without fsync to keep setup short.
    for i in 0..N {
        let base = format!("{}.M{i}P1Q{i}.host,S=4,W=6", 1_700_000_000 + i);
        std::fs::write(md.join("new").join(base), b"x\ny\n").unwrap();
    }
    // A second maildir whose names carry no W= (sizes from files, then the cache).
    let plain = store.maildir_path("plain").unwrap();
    deliver::create_maildir(&plain).unwrap();
    for i in 0..N {
        std::fs::write(
            plain
                .join("cur")
                .join(format!("{}.{i}.host:2,S", 1_700_000_000 + i)),
            b"x\ny\n",
        )
        .unwrap();
    }
    println!("setup {:?}", t.elapsed());

    for user in ["alice", "plain"] {
        for round in ["cold", "warm", "warm"] {
            let t = Instant::now();
            let maildrop = store.open(user.into()).await.unwrap();
            let uids = maildrop
                .messages()
                .iter()
                .map(|m| m.uid.len())
                .sum::<usize>();
            let elapsed = t.elapsed();
            assert_eq!(maildrop.messages().len(), N);
            println!("{user} {round}: open+UIDL {elapsed:?} ({uids} uid octets)");
        }
    }
}

#[tokio::test]
async fn commit_follows_a_whole_maildrop_moved_by_another_program() {
    let (_dir, store, md) = setup();
    let bases: Vec<String> = (0..20)
        .map(|i| deliver(&md, format!("m{i}\n").as_bytes()).unwrap())
        .collect();
    let mut maildrop = store.open("alice".into()).await.unwrap();
    for base in &bases {
        let to = md.join("cur").join(format!("{base}:2,F"));
        std::fs::rename(md.join("new").join(base), to).unwrap();
    }
    assert_eq!(read_all(&mut maildrop, 3).await.unwrap(), b"m3\n");
    std::fs::rename(
        md.join("cur").join(format!("{}:2,F", bases[5])),
        md.join("cur").join(format!("{}:2,FT", bases[5])),
    )
    .unwrap();
    let deleted: Vec<usize> = (0..10).collect();
    let retrieved: Vec<usize> = (5..20).collect();
    maildrop.commit(&deleted, &retrieved).await.unwrap();
    let mut want: Vec<String> = bases[10..].iter().map(|b| format!("{b}:2,FS")).collect();
    want.sort();
    assert_eq!(names(&md.join("cur")), want);
}

#[test]
fn root_with_dot_dot_still_confines_users() {
    let s = MaildirStore::new("/data/../srv".into(), "{root}/{user}".into(), String::new());
    assert_eq!(s.maildir_path("a").unwrap(), Path::new("/data/../srv/a"));
    let bare = MaildirStore::new("/srv".into(), "{root}/{user}/../x".into(), String::new());
    assert!(bare.maildir_path("a").is_err());
    let same = MaildirStore::new("/srv".into(), "{root}".into(), String::new());
    assert!(same.maildir_path("a").is_err());
}

/// Sets a directory's mtime to a fixed moment long past (the same one
/// every time, so that putting it back restores it exactly).
fn age(dir: &Path) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    std::fs::File::open(dir).unwrap().set_modified(t).unwrap();
}

#[tokio::test]
async fn a_settled_listing_is_reused_until_a_directory_changes() {
    let (_dir, store, md) = setup();
    put(&md, "new", "1700000001.a,S=5,W=6", b"one\n\n");
    put(&md, "cur", "1700000002.b,S=5,W=6:2,S", b"two\n\n");
    age(&md.join("new"));
    age(&md.join("cur"));
    let first = store.open("alice".into()).await.unwrap();
    assert_eq!(first.messages().len(), 2);
    drop(first);
    assert!(
        md.join(listing::FILE).exists(),
        "a settled listing is cached"
    );
    // A file slipped in with the directory's time put back: only a cache
    // would miss it, which shows the cache is what the next open reads.
    put(&md, "new", "1700000003.c,S=5,W=6", b"thr\n\n");
    age(&md.join("new"));
    let cached = store.open("alice".into()).await.unwrap();
    assert_eq!(cached.messages().len(), 2);
    drop(cached);
    // A real change moves the directory's time: listed afresh.
    deliver::deliver(&md, b"four\n").unwrap();
    let fresh = store.open("alice".into()).await.unwrap();
    assert_eq!(fresh.messages().len(), 4);
}

#[tokio::test]
async fn a_listing_of_recently_changed_directories_is_not_cached() {
    let (_dir, store, md) = setup();
    put(&md, "new", "1700000001.a,S=5,W=6", b"one\n\n");
    std::fs::create_dir_all(md.join("cur")).unwrap();
    let m = store.open("alice".into()).await.unwrap();
    assert_eq!(m.messages().len(), 1);
    assert!(!md.join(listing::FILE).exists());
}

#[tokio::test]
async fn a_garbage_or_torn_listing_is_ignored() {
    let (_dir, store, md) = setup();
    put(&md, "new", "1700000001.a,S=5,W=6", b"one\n\n");
    std::fs::create_dir_all(md.join("cur")).unwrap();
    age(&md.join("new"));
    age(&md.join("cur"));
    drop(store.open("alice".into()).await.unwrap());
    let good = std::fs::read(md.join(listing::FILE)).unwrap();
    for bad in [
        b"garbage".to_vec(),
        good[..good.len() - 3].to_vec(),
        [good.clone(), b"N 1700000009.x\n".to_vec()].concat(),
        good.iter()
            .map(|&b| if b == b'N' { b'X' } else { b })
            .collect(),
    ] {
        std::fs::write(md.join(listing::FILE), &bad).unwrap();
        let m = store.open("alice".into()).await.unwrap();
        assert_eq!(m.messages().len(), 1);
    }
}

#[tokio::test]
async fn the_lock_holds_without_the_lock_file() {
    let (_dir, store, md) = setup();
    put(&md, "new", "1.x", b"x\n");
    let first = store.open("alice".into()).await.unwrap();
    // Removed (or replaced by someone else's file) while a session holds
    // the maildrop: the lock on the Maildir's descriptor still holds.
    std::fs::remove_file(md.join(LOCK_FILE)).unwrap();
    assert!(matches!(
        store.open("alice".into()).await,
        Err(StoreError::Locked)
    ));
    drop(first);
    drop(store.open("alice".into()).await.unwrap());
    // A lock file that is not a regular file is refused by name.
    std::fs::remove_file(md.join(LOCK_FILE)).unwrap();
    std::fs::create_dir(md.join(LOCK_FILE)).unwrap();
    match store.open("alice".into()).await {
        Err(StoreError::Permanent(why)) => assert!(why.contains(LOCK_FILE), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_update_record_is_written_before_and_removed_after_deletion() {
    let (_dir, store, md) = setup();
    let bases: Vec<String> = (0..3)
        .map(|i| deliver(&md, format!("m{i}\n").as_bytes()).unwrap())
        .collect();
    let maildrop = store.open("alice".into()).await.unwrap();
    maildrop.commit(&[0, 2], &[1]).await.unwrap();
    assert!(!md.join(update::FILE).exists());
    assert!(!md.join(format!("{}.tmp", update::FILE)).exists());
    assert_eq!(names(&md.join("new")), Vec::<String>::new());
    assert_eq!(names(&md.join("cur")), vec![format!("{}:2,S", bases[1])]);

    // A record left by a crash is finished by the next open, before the
    // snapshot; one naming nothing that exists changes nothing.
    let more: Vec<String> = (0..2)
        .map(|i| deliver(&md, format!("n{i}\n").as_bytes()).unwrap())
        .collect();
    let record =
        update::encode([(false, more[0].as_bytes()), (false, b"1.gone".as_slice())].into_iter());
    std::fs::write(md.join(update::FILE), record).unwrap();
    let maildrop = store.open("alice".into()).await.unwrap();
    assert_eq!(maildrop.messages().len(), 2);
    assert!(!md.join(update::FILE).exists());
    assert_eq!(names(&md.join("new")), vec![more[1].clone()]);
}

/// A maildrop from the user's entry is a Maildir below the data root,
/// shared (lock included) by the users that name it, and walked without
/// following a symlink planted on the way.
#[tokio::test]
async fn a_maildrop_from_the_entry_is_walked_below_the_root() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("data");
    let s = MaildirStore::new(
        root.clone(),
        "{root}/{user}/Maildir".into(),
        "localhost".into(),
    );
    let mailbox = |name, maildrop| crate::store::Mailbox {
        name,
        maildrop: Some(maildrop),
    };
    Store::deliver(&s, mailbox("ann", "example.org/ann/"), b"x\n".to_vec())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_dir(root.join("example.org/ann/new"))
            .unwrap()
            .count(),
        1
    );
    assert!(!root.join("ann").exists());
    let m = s.open(mailbox("ann", "example.org/ann")).await.unwrap();
    assert_eq!(m.messages().len(), 1);
    assert!(matches!(
        s.open(mailbox("amy", "example.org/ann/")).await,
        Err(StoreError::Locked)
    ));
    drop(m);
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("example.org/link")).unwrap();
    for bad in [
        "example.org/link/",
        "example.org/link/x",
        "../outside",
        "/tmp",
        "a/../b",
    ] {
        assert!(s.open(mailbox("eve", bad)).await.is_err(), "{bad}");
        assert!(
            Store::deliver(&s, mailbox("eve", bad), b"x\n".to_vec())
                .await
                .is_err(),
            "{bad}"
        );
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}
