//! Quarantine and release over real files, stopped at every step as a
//! crash would stop them.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;
use crate::store::mbox::LockOptions;
use crate::store::{Maildrop, Store};

const THREE: &[u8] = b"From a@x Mon Jan  1 00:00:00 2024\nSubject: one\n\nbody 1\n\n\
From b@x Mon Jan  1 00:00:00 2024\nSubject: two\nX-UIDL: a/../b\n\nbody 2\n>From quoted\n\n\
From c@x Mon Jan  1 00:00:00 2024\nSubject: three\n\nbody 3 without a last line feed";

struct Setup {
    t: tempfile::TempDir,
    store: MboxStore,
}

impl Setup {
    fn new(spool: &[u8]) -> Setup {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("mail")).unwrap();
        std::fs::write(t.path().join("mail/alice"), spool).unwrap();
        let store = MboxStore::new(
            &format!("{}/mail/%u", t.path().display()),
            LockOptions {
                wait: Duration::from_millis(200),
                ..LockOptions::default()
            },
        )
        .unwrap()
        .with_quarantine(Some(t.path().join("q")));
        Setup { t, store }
    }

    fn spool(&self) -> Vec<u8> {
        std::fs::read(self.t.path().join("mail/alice")).unwrap()
    }

    /// The spool's messages: UIDL and octets as POP3 shows them (a last
    /// line without its line feed, which RETR ends with CRLF all the same,
    /// given one: an append after it gives it one).
    async fn messages(&self) -> Vec<(String, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let mut m = self.store.open("alice".into()).await.unwrap();
        let mut out = Vec::new();
        for i in 0..m.messages().len() {
            let uid = m.messages()[i].uid.clone();
            let mut data = Vec::new();
            m.read(i)
                .await
                .unwrap()
                .read_to_end(&mut data)
                .await
                .unwrap();
            if !data.ends_with(b"\n") {
                data.push(b'\n');
            }
            out.push((uid, data));
        }
        out
    }

    fn quarantined(&self) -> Vec<(String, bool)> {
        let m = self.store.open_admin("alice").unwrap();
        m.quarantined()
            .unwrap()
            .into_iter()
            .map(|q| (q.uid, q.in_spool))
            .collect()
    }
}

#[test]
fn names_encode_every_uidl_as_one_path_component_and_back() {
    for uid in [
        "abc",
        "a/../b",
        "..",
        ".",
        ".hidden",
        "%41",
        "a.b",
        "~!@#$%^&*()+={}[]|\\:;\"'<>,?`",
    ] {
        let name = encode(uid);
        assert!(
            !name.contains('/') && !name.starts_with('.'),
            "{uid}: {name}"
        );
        assert_eq!(decode(name.as_bytes()).as_deref(), Some(uid), "{uid}");
    }
    // Only the one spelling of each UIDL is a quarantined message.
    for name in ["%2e", "%61bc", "", ".new-abc", "%", "%G1", "a%2"] {
        assert_eq!(decode(name.as_bytes()), None, "{name}");
    }
}

#[test]
fn the_quarantine_dir_must_be_absolute_and_outside_the_spool_dir() {
    let check = |dir: &str| check_quarantine_dir("/var/mail/%u", Path::new(dir));
    assert!(check("/var/lib/mailbag/quarantine").is_ok());
    assert!(check("/var/mailq").is_ok());
    for bad in [
        "/var/mail",
        "/var/mail/",
        "/var/mail/quarantine",
        "/var//mail/q",
        "quarantine",
        "/var/lib/../mail/q",
    ] {
        assert!(check(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn quarantine_and_release_keep_every_message_and_its_uidl() {
    let s = Setup::new(THREE);
    let before = s.messages().await;
    assert_eq!(before.len(), 3);
    for _ in 0..3 {
        let uid = s.store.open_admin("alice").unwrap().quarantine(0).unwrap();
        assert!(s.quarantined().iter().any(|(u, both)| *u == uid && !both));
    }
    assert!(s.messages().await.is_empty());
    // Each copy is an mbox of one message: the parser reads it back.
    let names: Vec<_> = std::fs::read_dir(s.t.path().join("q/alice"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&encode("a/../b")));
    for (uid, _) in &before {
        let out = s.store.open_admin("alice").unwrap().release(uid).unwrap();
        assert_eq!(out, Released::Appended(uid.clone()));
    }
    let mut after = s.messages().await;
    let mut expected = before.clone();
    after.sort();
    expected.sort();
    assert_eq!(after, expected);
    assert!(s.quarantined().is_empty());
    assert!(std::fs::read_dir(s.t.path().join("q/alice"))
        .unwrap()
        .next()
        .is_none());
}

/// A quarantine stopped at every step (after the copy, and at each step
/// of the spool's rewrite): the message is never lost, and whichever of
/// quarantine and release runs next leaves it in exactly one place.
#[tokio::test]
async fn a_quarantine_stopped_at_any_step_is_finished_or_undone_without_a_duplicate() {
    use update::Stop;
    for stop in [
        Stop::AfterQuarantineCopy,
        Stop::BeforeRename,
        Stop::AfterJournal,
        Stop::MidOverwrite,
        Stop::AfterTruncate,
        Stop::Never,
    ] {
        for finish in [true, false] {
            let s = Setup::new(THREE);
            let before = s.messages().await;
            let uid = before[1].0.clone();
            let mut m = s.store.open_admin("alice").unwrap();
            m.stop_at(stop);
            let stopped = m.quarantine(1);
            assert_eq!(
                stopped.is_ok(),
                stop != Stop::AfterQuarantineCopy,
                "{stop:?}"
            );
            // The next open finishes an interrupted rewrite.
            let now = s.messages().await;
            let in_spool = now.iter().any(|(u, _)| *u == uid);
            let q = s.quarantined();
            assert_eq!(q, vec![(uid.clone(), in_spool)], "{stop:?}");
            let done = if finish {
                let m = s.store.open_admin("alice").unwrap();
                let index = m.index_of(&uid).unwrap_or(usize::MAX);
                m.quarantine(index)
            } else {
                s.store
                    .open_admin("alice")
                    .unwrap()
                    .release(&uid)
                    .map(|_| String::new())
            };
            let now = s.messages().await;
            let count = now.iter().filter(|(u, _)| *u == uid).count();
            let quarantined = s.quarantined();
            if finish {
                // Finished now, or already finished by the rewrite.
                assert!(done.is_ok() || !in_spool, "{stop:?}: {done:?}");
                assert_eq!(count, 0, "{stop:?}");
                assert_eq!(quarantined, vec![(uid.clone(), false)], "{stop:?}");
            } else {
                done.unwrap();
                assert_eq!(count, 1, "{stop:?}");
                assert!(quarantined.is_empty(), "{stop:?}");
            }
            // The other messages are there once each, untouched.
            for other in [&before[0], &before[2]] {
                assert_eq!(
                    now.iter().filter(|m| *m == other).count(),
                    1,
                    "{stop:?} {finish}"
                );
            }
        }
    }
}

/// A release stopped after the append: the next release removes only the
/// copy, and the spool holds the message once.
#[tokio::test]
async fn a_release_stopped_after_the_append_is_not_appended_twice() {
    let s = Setup::new(THREE);
    let uid = s.store.open_admin("alice").unwrap().quarantine(0).unwrap();
    let mut m = s.store.open_admin("alice").unwrap();
    m.stop_at(update::Stop::AfterReleaseAppend);
    m.release(&uid).unwrap();
    assert_eq!(s.quarantined(), vec![(uid.clone(), true)]);
    assert_eq!(
        s.store.open_admin("alice").unwrap().release(&uid).unwrap(),
        Released::WasInSpool
    );
    let now = s.messages().await;
    assert_eq!(now.iter().filter(|(u, _)| *u == uid).count(), 1);
    assert_eq!(now.len(), 3);
    assert!(s.quarantined().is_empty());
}

#[tokio::test]
async fn a_session_holding_the_spool_refuses_quarantine_and_release() {
    let s = Setup::new(THREE);
    let uid = s.store.open_admin("alice").unwrap().quarantine(0).unwrap();
    let session = s.store.open("alice".into()).await.unwrap();
    assert!(matches!(
        s.store.open_admin("alice"),
        Err(StoreError::Locked)
    ));
    drop(session);
    s.store.open_admin("alice").unwrap().release(&uid).unwrap();
}

#[test]
fn without_a_quarantine_dir_nothing_is_done() {
    let s = Setup::new(THREE);
    let store = s.store.clone().with_quarantine(None);
    let e = store
        .open_admin("alice")
        .unwrap()
        .quarantine(0)
        .unwrap_err();
    assert!(e.to_string().contains("quarantine_dir"), "{e}");
    assert_eq!(s.spool(), THREE);
}

/// A message appended by the MTA between the snapshot and the quarantine
/// is kept; a spool rewritten by another program meanwhile is left alone
/// and no copy is made.
#[tokio::test]
async fn deliveries_are_kept_and_a_rewritten_spool_is_left_alone() {
    let s = Setup::new(THREE);
    let m = s.store.open_admin("alice").unwrap();
    let path = s.t.path().join("mail/alice");
    let mut data = s.spool();
    data.extend_from_slice(b"\n\nFrom d@x Mon Jan  1 00:00:00 2024\nSubject: four\n\nbody 4\n\n");
    std::fs::write(&path, &data).unwrap();
    m.quarantine(0).unwrap();
    let now = s.messages().await;
    assert_eq!(now.len(), 3);
    assert!(now[2].1.starts_with(b"Subject: four"));

    let m = s.store.open_admin("alice").unwrap();
    std::fs::write(
        &path,
        b"From z@x Mon Jan  1 00:00:00 2024\nSubject: other\n\nx\n\n",
    )
    .unwrap();
    assert!(m.quarantine(0).is_err());
    assert_eq!(s.quarantined().len(), 1);
}

/// Hostile contents of the spool or the quarantine directory.
#[tokio::test]
async fn a_symlinked_or_shared_quarantine_is_refused() {
    // The user's quarantine directory replaced by a symlink to elsewhere.
    let s = Setup::new(THREE);
    let elsewhere = s.t.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::create_dir(s.t.path().join("q")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, s.t.path().join("q/alice")).unwrap();
    let e = s
        .store
        .open_admin("alice")
        .unwrap()
        .quarantine(0)
        .unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
    assert_eq!(s.spool(), THREE);

    // One that others may write.
    std::fs::remove_file(s.t.path().join("q/alice")).unwrap();
    std::fs::create_dir(s.t.path().join("q/alice")).unwrap();
    std::fs::set_permissions(
        s.t.path().join("q/alice"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let e = s
        .store
        .open_admin("alice")
        .unwrap()
        .quarantine(0)
        .unwrap_err();
    assert!(e.to_string().contains("0777"), "{e}");
    assert_eq!(s.spool(), THREE);

    // The quarantine directory is the spool directory by another name.
    let s = Setup::new(THREE);
    std::os::unix::fs::symlink(s.t.path().join("mail"), s.t.path().join("q")).unwrap();
    let e = s
        .store
        .open_admin("alice")
        .unwrap()
        .quarantine(0)
        .unwrap_err();
    assert!(e.to_string().contains("spool directory"), "{e}");
    assert_eq!(s.spool(), THREE);
}

/// A file planted under a copy's name (a symlink, a FIFO, a hard link,
/// something that is not one message) is never followed, read as a
/// message, or released.
#[tokio::test]
async fn planted_files_in_the_quarantine_are_never_released() {
    let s = Setup::new(THREE);
    let uid = s.store.open_admin("alice").unwrap().quarantine(0).unwrap();
    let dir = s.t.path().join("q/alice");
    let secret = s.t.path().join("secret");
    std::fs::write(
        &secret,
        b"From s@x Mon Jan  1 00:00:00 2024\nSubject: secret\n\nx\n\n",
    )
    .unwrap();
    let plant = |name: &str, how: &str| {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        match how {
            "symlink" => std::os::unix::fs::symlink(&secret, &path).unwrap(),
            "fifo" => nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).unwrap(),
            "hardlink" => std::fs::hard_link(&secret, &path).unwrap(),
            _ => std::fs::write(&path, b"not an mbox\n").unwrap(),
        }
    };
    for how in ["symlink", "fifo", "hardlink", "junk"] {
        plant("planted", how);
        let name = "planted";
        let e = s
            .store
            .open_admin("alice")
            .unwrap()
            .release(name)
            .unwrap_err();
        assert!(!e.to_string().is_empty());
        assert!(!s.spool().windows(6).any(|w| w == b"secret"), "{how}");
        // Listed only if it is a real copy: none of these is.
        assert_eq!(s.quarantined(), vec![(uid.clone(), false)], "{how}");
    }
}

/// Attack: `X-UIDL:` values chosen by whoever mails the user, made to
/// climb out of the quarantine or to collide with its temporary names,
/// stay one file inside the user's quarantine directory each.
#[tokio::test]
async fn hostile_x_uidls_stay_inside_the_users_quarantine() {
    let uidls = ["../../../../tmp/escaped", "..", ".", ".new-x", "%2E", "a/b"];
    let mut spool = Vec::new();
    for (i, u) in uidls.iter().enumerate() {
        spool.extend_from_slice(
            format!("From e@x Mon Jan  1 00:00:0{i} 2024\nX-UIDL: {u}\n\nbody\n\n").as_bytes(),
        );
    }
    let s = Setup::new(&spool);
    for _ in &uidls {
        s.store.open_admin("alice").unwrap().quarantine(0).unwrap();
    }
    let mut listed: Vec<String> = s.quarantined().into_iter().map(|(u, _)| u).collect();
    listed.sort();
    let mut want: Vec<String> = uidls.iter().map(|u| u.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);
    let names: Vec<String> = std::fs::read_dir(s.t.path().join("q/alice"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), uidls.len(), "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    // Nothing anywhere else: the test directory holds mail/ and q/ only.
    let mut top: Vec<String> = std::fs::read_dir(s.t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["mail", "q"]);
    assert_eq!(
        std::fs::read_dir(s.t.path().join("q")).unwrap().count(),
        1,
        "one directory, alice's"
    );
    for u in uidls {
        s.store.open_admin("alice").unwrap().release(u).unwrap();
    }
    assert_eq!(s.messages().await.len(), uidls.len());
}

/// Attack: user names that are not one path component never name a
/// quarantine directory (nor the quarantine directory itself).
#[test]
fn a_user_name_that_is_not_one_component_has_no_quarantine() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("mail")).unwrap();
    // `%u.mbox`: a user `.` would have the spool `..mbox`.
    std::fs::write(t.path().join("mail/..mbox"), THREE).unwrap();
    let store = MboxStore::new(
        &format!("{}/mail/%u.mbox", t.path().display()),
        LockOptions::default(),
    )
    .unwrap()
    .with_quarantine(Some(t.path().join("q")));
    for user in ["../alice", "a/b", "..", "", ".", "alice/."] {
        let done = store
            .open_admin(user)
            .and_then(|m| m.quarantine(0))
            .map(|_| ());
        assert!(done.is_err(), "{user:?}");
    }
    // Nothing was made in the quarantine directory, or beside it.
    assert!(std::fs::read_dir(t.path().join("q"))
        .map(|d| d.count() == 0)
        .unwrap_or(true));
    assert_eq!(std::fs::read(t.path().join("mail/..mbox")).unwrap(), THREE);
    // The quarantine is named after the user, not the spool: a template
    // that hides spools (`.%u`) still has one.
    std::fs::write(t.path().join("mail/.alice"), THREE).unwrap();
    let hidden = MboxStore::new(
        &format!("{}/mail/.%u", t.path().display()),
        LockOptions::default(),
    )
    .unwrap()
    .with_quarantine(Some(t.path().join("q")));
    hidden.open_admin("alice").unwrap().quarantine(0).unwrap();
    assert_eq!(
        std::fs::read_dir(t.path().join("q/alice")).unwrap().count(),
        1
    );
}

/// Attack: a message larger than the copy buffer goes to quarantine and
/// back byte-exact; one in a spool with holes (a sparse file, which the
/// rewrite refuses) is refused before any copy is made, so it is not left
/// in two places.
#[tokio::test]
async fn huge_and_sparse_messages() {
    let mut big = b"From big@x Mon Jan  1 00:00:00 2024\nSubject: big\n\n".to_vec();
    for i in 0..80_000 {
        big.extend_from_slice(
            format!("line {i:08} of a message over three MiB........\n").as_bytes(),
        );
    }
    big.push(b'\n');
    let mut spool = THREE.to_vec();
    spool.extend_from_slice(b"\n\n");
    spool.extend_from_slice(&big);
    let s = Setup::new(&spool);
    let before = s.messages().await;
    assert!(before[3].1.len() > 3 << 20);
    let uid = s.store.open_admin("alice").unwrap().quarantine(3).unwrap();
    assert_eq!(s.messages().await.len(), 3);
    s.store.open_admin("alice").unwrap().release(&uid).unwrap();
    assert_eq!(s.messages().await, before);

    // A hole in the middle of the last message.
    let s = Setup::new(THREE);
    let path = s.t.path().join("mail/alice");
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len + (8 << 20)).unwrap();
    file.write_all_at(b"\nend\n\n", len + (8 << 20)).unwrap();
    drop(file);
    let data = std::fs::read(&path).unwrap();
    let e = s
        .store
        .open_admin("alice")
        .unwrap()
        .quarantine(2)
        .unwrap_err();
    assert!(e.to_string().contains("sparse"), "{e}");
    assert!(s.quarantined().is_empty());
    assert_eq!(std::fs::read(&path).unwrap(), data);
}

/// Attack on the UIDL scheme: two messages with the same `From_` line and
/// headers are `D` and `D-2`; once the first is quarantined the second
/// shows as `D`, and the first can still be released (as `D-2`).
#[tokio::test]
async fn a_quarantined_message_whose_uidl_was_taken_since_is_still_released() {
    let twins = b"From t@x Mon Jan  1 00:00:00 2024\nSubject: twin\n\nfirst body\n\n\
From t@x Mon Jan  1 00:00:00 2024\nSubject: twin\n\nsecond body\n\n";
    let s = Setup::new(twins);
    let before = s.messages().await;
    let d = before[0].0.clone();
    assert_eq!(before[1].0, format!("{d}-2"));
    assert_eq!(
        s.store.open_admin("alice").unwrap().quarantine(0).unwrap(),
        d
    );
    assert_eq!(s.messages().await[0].0, d);
    let out = s.store.open_admin("alice").unwrap().release(&d).unwrap();
    assert_eq!(out, Released::Appended(format!("{d}-2")));
    let after = s.messages().await;
    assert_eq!(after.len(), 2);
    assert_eq!(after[1].1, before[0].1);
    assert!(s.quarantined().is_empty());
}

/// Attack: a quarantine directory above the spool directory, and a user
/// named after the spool directory, would make the spool directory that
/// user's quarantine: a message with `X-UIDL: bob` would become bob's
/// spool. Refused in the config, and at run time whatever the path.
#[test]
fn the_spool_directory_is_never_a_users_quarantine() {
    assert!(check_quarantine_dir("/var/mail/%u", Path::new("/var")).is_err());
    assert!(check_quarantine_dir("/var/mail/%u", Path::new("/")).is_err());
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("mail")).unwrap();
    std::fs::write(
        t.path().join("mail/mail"),
        b"From e@x Mon Jan  1 00:00:00 2024\nX-UIDL: bob\n\nfor the user mail only\n\n",
    )
    .unwrap();
    let store = MboxStore::new(
        &format!("{}/mail/%u", t.path().display()),
        LockOptions::default(),
    )
    .unwrap()
    .with_quarantine(Some(t.path().to_path_buf()));
    let e = store.open_admin("mail").unwrap().quarantine(0).unwrap_err();
    assert!(e.to_string().contains("spool directory"), "{e}");
    assert!(!t.path().join("mail/bob").exists());
}
