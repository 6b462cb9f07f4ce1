//! UIDLs that another server showed for the same Maildir, and the rule
//! that a UIDL once shown never changes.
//!
//! A maildrop's UIDLs are resolved when it is opened, under its lock,
//! before any is answered:
//! 1. what `mailbag.uidls` (see `shown.rs`) records counts as it is;
//! 2. with a foreign source configured, every other message gets, in
//!    snapshot order, the first of: Dovecot's `P` field, its `X-UIDL:`
//!    header, Dovecot's `pop3_uidl_format` for its `dovecot-uidlist`
//!    record, Courier's `courierpop3dsizelist` line, else mailbag's own
//!    form (the base name); and these decisions are recorded durably
//!    before the open returns.
//!
//! UIDLs stay unique whatever the foreign files say: a UIDL already taken
//! (by a recorded message or an earlier one in snapshot order) is not
//! given again, and the message falls back to mailbag's own form, or,
//! when that is taken too, to a digest of its base name. A foreign file
//! that cannot be read or parsed is logged (once per Maildir) and counts
//! as absent: the session works, and recorded UIDLs stay as they are.
//! Other servers' files are only read, never written.
//!
//! Without a foreign source and without `mailbag.uidls`, nothing here
//! costs more than one failed `openat`.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;

use sha2::{Digest, Sha256};

use super::dirs::{self, Dirs};
use super::shown::{self, Decided};
use super::{courier, dovecot, name, warn_once, xuidl, Entry, MessageInfo};

/// Where UIDLs that another server showed come from (`[store]` keys
/// `uidl_dovecot`, `uidl_x_header`, `uidl_courier`). Empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UidlSources {
    /// Read `dovecot-uidlist`, with this `pop3_uidl_format`.
    pub dovecot: Option<dovecot::Template>,
    /// Take a message's UIDL from its `X-UIDL:` header.
    pub x_uidl: bool,
    /// Read `courierpop3dsizelist`.
    pub courier: bool,
}

impl UidlSources {
    /// Whether no foreign source is configured.
    pub fn is_empty(&self) -> bool {
        self.dovecot.is_none() && !self.x_uidl && !self.courier
    }
}

/// The foreign files, read once per open when some message needs them.
struct Foreign {
    dovecot: Option<(Vec<u8>, dovecot::Uidlist)>,
    courier: HashMap<Vec<u8>, String>,
}

/// The most lines of another server's file read for a maildrop of
/// `messages`: it lists the messages that server saw, and a few it has
/// not yet dropped (Dovecot compacts its file when many records are
/// stale, Courier rewrites its own at every session), so one far longer
/// than the maildrop is not trusted. A forged one of millions of lines
/// would otherwise cost every login hundreds of megabytes.
fn max_foreign_lines(messages: usize) -> usize {
    messages.saturating_mul(2).saturating_add(4096)
}

/// Octets allowed a line of another server's file, on average.
const FOREIGN_LINE_OCTETS: u64 = 512;

impl Foreign {
    fn load(dirs: &Dirs, sources: &UidlSources, messages: usize) -> Foreign {
        let max_lines = max_foreign_lines(messages);
        let in_proportion = |limit: u64| {
            limit.min(
                u64::try_from(max_lines)
                    .unwrap_or(u64::MAX)
                    .saturating_mul(FOREIGN_LINE_OCTETS),
            )
        };
        let read = |file: &str, limit: u64| match dirs::read_small(
            dirs.maildir.as_fd(),
            file,
            in_proportion(limit),
        ) {
            Ok(Some(bytes)) if memchr::memchr_iter(b'\n', &bytes).count() > max_lines => {
                warn_once(
                    &dirs.path,
                    "a foreign UIDL file lists far more messages than the maildrop holds; \
                     its messages get mailbag's own UIDLs",
                    &format_args!("{file}: more than {max_lines} lines"),
                );
                None
            }
            Ok(bytes) => bytes,
            Err(e) => {
                warn_once(
                    &dirs.path,
                    "a foreign UIDL file cannot be read; its messages get mailbag's own UIDLs",
                    &format_args!("{file}: {e}"),
                );
                None
            }
        };
        let dovecot = match &sources.dovecot {
            None => None,
            Some(_) => read(dovecot::FILE, dovecot::MAX_OCTETS).and_then(|bytes| {
                match dovecot::parse(&bytes) {
                    Some(list) => Some((bytes, list)),
                    None => {
                        warn_once(
                            &dirs.path,
                            "a foreign UIDL file is malformed; its messages get mailbag's own UIDLs",
                            &dovecot::FILE,
                        );
                        None
                    }
                }
            }),
        };
        let courier = match sources.courier {
            false => HashMap::new(),
            true => match read(courier::FILE, courier::MAX_OCTETS) {
                None => HashMap::new(),
                Some(bytes) => match courier::parse(&bytes) {
                    Some(pairs) => pairs.into_iter().collect(),
                    None => {
                        warn_once(
                            &dirs.path,
                            "a foreign UIDL file is malformed; its messages get mailbag's own UIDLs",
                            &courier::FILE,
                        );
                        HashMap::new()
                    }
                },
            },
        };
        Foreign { dovecot, courier }
    }
}

/// The Dovecot record of each base, by base.
fn dovecot_index(list: &Option<(Vec<u8>, dovecot::Uidlist)>) -> HashMap<&[u8], usize> {
    match list {
        None => HashMap::new(),
        Some((bytes, list)) => list
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| (&bytes[r.base.clone()], i))
            .collect(),
    }
}

/// The current time in Unix seconds.
pub(super) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The UIDL another server would show for `entry`, if any. `x_uidl`:
/// whether its `X-UIDL:` header may count (see [`resolve`]).
fn candidate(
    dirs: &Dirs,
    sources: &UidlSources,
    foreign: &Foreign,
    index: &HashMap<&[u8], usize>,
    entry: &Entry,
    x_uidl: bool,
) -> Option<String> {
    let base = entry.base();
    let valid = |u: Vec<u8>| {
        shown::is_uidl(&u)
            .then(|| String::from_utf8(u).ok())
            .flatten()
    };
    let record = foreign
        .dovecot
        .as_ref()
        .and_then(|(bytes, list)| Some((bytes, &list.records[*index.get(base)?], list)));
    if let Some((bytes, r, _)) = record {
        if let Some(p) = &r.pop3_uidl {
            let p = if p.is_empty() {
                base
            } else {
                &bytes[p.clone()]
            };
            if let Some(u) = valid(p.to_vec()) {
                return Some(u);
            }
        }
    }
    if sources.x_uidl && x_uidl {
        if let Some(u) = x_uidl_of(dirs, entry) {
            return Some(u);
        }
    }
    if let (Some((bytes, r, list)), Some(template)) = (record, &sources.dovecot) {
        let guid = r.guid.clone().map(|g| &bytes[g]);
        if let Some(u) = valid(template.expand(r.uid, list.uid_validity, base, guid)) {
            return Some(u);
        }
    }
    foreign.courier.get(base).cloned()
}

/// The `X-UIDL:` header of a message, read from its file (never through
/// a symlink, never waiting on a FIFO).
fn x_uidl_of(dirs: &Dirs, entry: &Entry) -> Option<String> {
    let mut file = dirs::open_read(dirs.sub(entry.sub), &entry.name).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    xuidl::parse(&xuidl::read_header(&mut file).ok()?)
}

/// A second form of mailbag's own UIDL, for a message whose base name
/// another message's foreign UIDL has taken: a digest of the base.
fn alternative(base: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(b"mailbag-uidl-2\0")
        .chain_update(base)
        .finalize();
    let mut out = String::from("m");
    for b in &digest[..20] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The UIDL of each message of the Maildir at `dir`, by base name, as an
/// open of it with `sources` would show it (its `mailbag.uidls` first,
/// then the foreign files, then mailbag's own form), for `mailbag import`.
/// Reads only: nothing is recorded, locked or cached.
pub fn uidls_of(
    dir: &std::path::Path,
    sources: &UidlSources,
) -> Result<HashMap<Vec<u8>, String>, super::StoreError> {
    let dirs = Dirs::open(&dirs::Location::of_path(dir)?, false)?.ok_or_else(|| {
        super::StoreError::Permanent(format!("{} is not a Maildir", dir.display()))
    })?;
    let (mut entries, mut infos) = super::listed(&dirs)?;
    resolve(&dirs, sources, &mut entries, &mut infos, None);
    Ok(entries
        .iter()
        .zip(infos)
        .map(|(e, i)| (e.base().to_vec(), i.uid))
        .collect())
}

/// Resolves the UIDLs of a fresh snapshot (see the module comment).
/// `entries` and `infos` are parallel; messages that can get no unique
/// UIDL are left out of both (they cannot be shown). With `record` (the
/// bases of messages the snapshot left out but that are still there),
/// new decisions are recorded, and lines for messages gone are dropped.
pub(super) fn resolve(
    dirs: &Dirs,
    sources: &UidlSources,
    entries: &mut Vec<Entry>,
    infos: &mut Vec<MessageInfo>,
    record: Option<&[Vec<u8>]>,
) {
    // The messages whose lines count: those listed, and those the
    // snapshot left out but that are still there (their lines are kept).
    let left_out = record.unwrap_or_default();
    let present = || {
        entries
            .iter()
            .map(Entry::base)
            .chain(left_out.iter().map(Vec::as_slice))
            .collect()
    };
    let (recorded, can_record, first) = match shown::load(dirs, present) {
        Ok(Some(s)) => (s, true, false),
        Ok(None) if sources.is_empty() => return,
        Ok(None) => (shown::Shown::begun(now()), true, true),
        Err(e) => {
            warn_once(
                &dirs.path,
                "the record of UIDLs shown cannot be read; UIDLs are not recorded until it can",
                &format_args!("{}: {e}", shown::FILE),
            );
            if sources.is_empty() {
                return;
            }
            (shown::Shown::default(), false, false)
        }
    };
    // An X-UIDL header is its sender's: a sender who chose the UIDL of a
    // message a client has seen (and deleted) would hide the new one from
    // clients that keep mail on the server. So the header counts only for
    // mail older than mailbag's serving of the maildrop: at the open that
    // begins the record, or for a name's delivery time before it began.
    let x_uidl_ok = |entry: &Entry| {
        first
            || name::parse(entry.base())
                .timestamp
                .is_some_and(|t| t < recorded.since)
    };
    let n = entries.len();
    let mut taken: HashSet<String> = HashSet::with_capacity(n);
    let mut decided = vec![false; n];
    let mut keep = vec![true; n];
    // 1. Recorded decisions first: they were shown.
    for i in 0..n {
        match recorded.get(entries[i].base()) {
            None => {}
            Some(Decided::Own) => decided[i] = true,
            Some(Decided::Uidl(u)) => {
                infos[i].uid = u.to_owned();
                decided[i] = true;
            }
        }
    }
    for i in (0..n).filter(|&i| decided[i]) {
        if !taken.insert(infos[i].uid.clone()) {
            // Only a hand-edited record can give one UIDL twice.
            let alt = alternative(entries[i].base());
            keep[i] = taken.insert(alt.clone());
            infos[i].uid = alt;
        }
    }
    // 2. Everything else, in snapshot order. The foreign files are read
    // only when some message needs them.
    let mut new: Vec<usize> = Vec::new();
    let needed = !sources.is_empty()
        && (0..n).any(|i| !decided[i] && shown::is_recordable(entries[i].base()));
    let foreign = needed.then(|| Foreign::load(dirs, sources, n));
    let index = foreign
        .as_ref()
        .map(|f| dovecot_index(&f.dovecot))
        .unwrap_or_default();
    for i in (0..n).filter(|&i| !decided[i]) {
        let base = entries[i].base();
        let recordable = shown::is_recordable(base);
        let wanted = match &foreign {
            Some(f) if recordable => {
                let x = x_uidl_ok(&entries[i]);
                candidate(dirs, sources, f, &index, &entries[i], x)
            }
            _ => None,
        };
        // The first free of: the foreign UIDL, the own form, a digest
        // (computed only when needed: most messages take the first).
        let chosen = match wanted {
            Some(u) if !taken.contains(&u) => Some(u),
            _ if !taken.contains(&infos[i].uid) => Some(infos[i].uid.clone()),
            _ => Some(alternative(base)).filter(|u| !taken.contains(u)),
        };
        match chosen {
            Some(u) => {
                infos[i].uid.clone_from(&u);
                taken.insert(u);
                if recordable && !sources.is_empty() {
                    new.push(i);
                }
            }
            None => keep[i] = false,
        }
    }
    if let (false, true, Some(left_out)) = (new.is_empty(), can_record, record) {
        // Lines of messages gone are dropped (none to look at on a first
        // open).
        let present: HashSet<&[u8]> = match recorded.is_empty() {
            true => HashSet::new(),
            false => entries
                .iter()
                .map(Entry::base)
                .chain(left_out.iter().map(Vec::as_slice))
                .collect(),
        };
        let mut lines: Vec<(&[u8], Option<&str>)> = recorded
            .iter()
            .filter(|(base, _)| present.contains(base))
            .map(|(base, d)| match d {
                Decided::Own => (base, None),
                Decided::Uidl(u) => (base, Some(u)),
            })
            .collect();
        for &i in &new {
            let own = name::uidl(entries[i].base());
            let uid = infos[i].uid.as_str();
            lines.push((entries[i].base(), (uid != own).then_some(uid)));
        }
        if let Err(e) = shown::store(dirs, recorded.since, lines.into_iter()) {
            warn_once(
                &dirs.path,
                "the record of UIDLs shown cannot be written; new messages' UIDLs may change",
                &e,
            );
        }
    }
    if keep.contains(&false) {
        warn_once(
            &dirs.path,
            "messages whose UIDL would not be unique are left out of the maildrop",
            &keep.iter().filter(|k| !**k).count(),
        );
        let mut i = 0;
        entries.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        let mut i = 0;
        infos.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::{MaildirStore, Maildrop, RecordedUidls, Store, StoreError};
    use super::*;

    fn setup(sources: UidlSources) -> (tempfile::TempDir, MaildirStore, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let store = MaildirStore::new(
            dir.path().to_path_buf(),
            "{root}/{user}/Maildir".into(),
            "example.org".into(),
        )
        .with_uidl_sources(sources);
        let md = store.maildir_path("alice").unwrap();
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(md.join(sub)).unwrap();
        }
        (dir, store, md)
    }

    fn put(md: &Path, sub: &str, name: &str, content: &[u8]) {
        std::fs::write(md.join(sub).join(name), content).unwrap();
    }

    async fn uidls(store: &MaildirStore) -> Vec<String> {
        let m = store.open("alice".into()).await.unwrap();
        m.messages().iter().map(|i| i.uid.clone()).collect()
    }

    fn dovecot() -> UidlSources {
        UidlSources {
            dovecot: Some(dovecot::Template::parse(dovecot::DEFAULT_FORMAT).unwrap()),
            ..UidlSources::default()
        }
    }

    const A: &str = "1700000001.M1P1.host,S=5,W=6";
    const B: &str = "1700000002.M2P2.host";
    const C: &str = "1700000003.M3P3.host";

    #[tokio::test]
    async fn dovecot_uidls_are_shown_and_never_change_once_shown() {
        let (_dir, store, md) = setup(dovecot());
        put(&md, "cur", &format!("{A}:2,S"), b"a\n\n1\n");
        put(&md, "new", B, b"b\n\n2\n");
        put(&md, "new", C, b"c\n\n3\n");
        let uidlist = format!("3 V1700000000 N3 Gabc\n1 :{A}\n2 PSAVED-2 :{B}\n");
        put(&md, ".", "dovecot-uidlist", uidlist.as_bytes());
        let first = uidls(&store).await;
        assert_eq!(first, ["000000016553f100", "SAVED-2", C]);
        assert!(md.join(shown::FILE).exists());

        // Dovecot's IMAP side indexes the third message, and renumbers
        // the others (UIDVALIDITY changed): nothing shown changes.
        let later = format!("3 V5 N9 G0\n7 :{A}\n8 :{B}\n9 :{C}\n");
        put(&md, ".", "dovecot-uidlist", later.as_bytes());
        assert_eq!(uidls(&store).await, first);
        // Nor when the file goes, or becomes garbage.
        put(&md, ".", "dovecot-uidlist", b"\xff\xfe garbage");
        assert_eq!(uidls(&store).await, first);
        std::fs::remove_file(md.join("dovecot-uidlist")).unwrap();
        assert_eq!(uidls(&store).await, first);
        // Nor when the foreign source is switched off again.
        let plain = MaildirStore::new(
            md.parent().unwrap().parent().unwrap().to_path_buf(),
            "{root}/{user}/Maildir".into(),
            "example.org".into(),
        );
        assert_eq!(uidls(&plain).await, first);
        // The other server's file is never written.
        assert!(!md.join("dovecot-uidlist").exists());
    }

    /// A message the snapshot left out as unreadable keeps its record
    /// line when the record is rewritten meanwhile, so that it comes back
    /// under the UIDL it was shown with.
    #[tokio::test]
    async fn a_message_left_out_as_unreadable_keeps_its_record() {
        let (_dir, store, md) = setup(dovecot());
        put(&md, "new", A, b"a\n\n1\n");
        put(&md, ".", "dovecot-uidlist", b"3 V1 N1\n");
        assert_eq!(uidls(&store).await, [A]);
        // Dovecot lists both now; only B is in the snapshot, A was left
        // out (as a session that cannot read it would).
        put(&md, "new", B, b"b\n\n2\n");
        let uidlist = format!("3 V1 N3\n1 :{A}\n2 :{B}\n");
        put(&md, ".", "dovecot-uidlist", uidlist.as_bytes());
        let dirs = Dirs::open(&dirs::Location::of_path(&md).unwrap(), false)
            .unwrap()
            .unwrap();
        let mut entries = vec![Entry::new(super::super::Sub::New, B.into())];
        let mut infos = vec![MessageInfo {
            uid: B.into(),
            size: 1,
        }];
        let left_out = [A.as_bytes().to_vec()];
        resolve(&dirs, &dovecot(), &mut entries, &mut infos, Some(&left_out));
        assert_eq!(infos[0].uid, "0000000200000001");
        drop(dirs);
        assert_eq!(uidls(&store).await, [A, "0000000200000001"]);
    }

    #[tokio::test]
    async fn without_a_foreign_source_nothing_is_written() {
        let (_dir, store, md) = setup(UidlSources::default());
        put(&md, "new", B, b"b\n\n2\n");
        put(
            &md,
            ".",
            "dovecot-uidlist",
            format!("3 V1 N2\n1 :{B}\n").as_bytes(),
        );
        assert_eq!(uidls(&store).await, [B]);
        assert!(!md.join(shown::FILE).exists());
    }

    #[tokio::test]
    async fn duplicates_fall_back_to_the_own_form_deterministically() {
        let sources = UidlSources {
            x_uidl: true,
            ..dovecot()
        };
        let (_dir, store, md) = setup(sources);
        put(&md, "new", A, b"X-UIDL: same\n\n1\n");
        put(&md, "new", B, b"X-UIDL: same\n\n2\n");
        // C's foreign UIDL is B's base name, which B (shown under its
        // own form, coming first) has: C falls back to its own form.
        put(&md, "new", C, b"c\n\n3\n");
        let uidlist = format!("3 V1 N4\n1 :{A}\n2 :{B}\n3 P{B} :{C}\n");
        put(&md, ".", "dovecot-uidlist", uidlist.as_bytes());
        // X-UIDL beats the template; the later of two equal X-UIDLs falls
        // back to the own form.
        assert_eq!(uidls(&store).await, ["same", B, C]);
        // D's foreign UIDL is E's base, and E comes later: E gets the
        // digest form.
        let d = "1700000004.M4.host";
        let e = "1700000005.M5.host";
        put(&md, "new", d, format!("X-UIDL: {e}\n\n4\n").as_bytes());
        put(&md, "new", e, b"e\n\n5\n");
        let got = uidls(&store).await;
        assert_eq!(got[..4], ["same", B, C, e]);
        assert_eq!(got[4], alternative(e.as_bytes()));
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), got.len());
        assert_eq!(uidls(&store).await, got);
    }

    /// An X-UIDL header counts for mail that was there before mailbag
    /// began serving the maildrop, not for mail delivered since: its
    /// sender could pick a UIDL a client has seen before and hide it.
    #[tokio::test]
    async fn x_uidl_of_mail_delivered_after_the_switch_does_not_count() {
        let sources = UidlSources {
            x_uidl: true,
            ..UidlSources::default()
        };
        let (_dir, store, md) = setup(sources);
        put(&md, "new", A, b"X-UIDL: old-one\n\n1\n");
        // Even with no delivery time in its name: it was there first.
        put(&md, "new", "notime.host", b"X-UIDL: old-two\n\n2\n");
        assert_eq!(uidls(&store).await, ["old-one", "old-two"]);
        let later = format!("{}.M9P9.host", now() + 5);
        put(&md, "new", &later, b"X-UIDL: seen-before\n\n3\n");
        put(&md, "new", "late.notime", b"X-UIDL: seen-too\n\n4\n");
        // An old name still counts.
        put(&md, "new", B, b"X-UIDL: old-three\n\n5\n");
        assert_eq!(
            uidls(&store).await,
            [
                "old-one",
                "old-three",
                later.as_str(),
                "late.notime",
                "old-two"
            ]
        );
    }

    #[tokio::test]
    async fn courier_uidls_are_shown() {
        let sources = UidlSources {
            courier: true,
            ..UidlSources::default()
        };
        let (_dir, store, md) = setup(sources);
        put(&md, "cur", &format!("{B}:2,S"), b"b\n\n2\n");
        put(&md, "new", C, b"c\n\n3\n");
        let list = format!("/3 3 1700000000\n{B}:2,S 6 2:1700000000:0\n");
        put(&md, ".", "courierpop3dsizelist", list.as_bytes());
        assert_eq!(uidls(&store).await, ["UID2-1700000000", C]);
    }

    #[tokio::test]
    async fn an_unreadable_record_is_not_overwritten() {
        let (_dir, store, md) = setup(dovecot());
        put(&md, "new", B, b"b\n\n2\n");
        put(
            &md,
            ".",
            "dovecot-uidlist",
            format!("3 V1 N2\n1 :{B}\n").as_bytes(),
        );
        // A directory where the record should be: it cannot be read, the
        // session still works, and nothing replaces it.
        std::fs::create_dir(md.join(shown::FILE)).unwrap();
        assert_eq!(uidls(&store).await, ["0000000100000001"]);
        assert!(md.join(shown::FILE).is_dir());
    }

    #[tokio::test]
    async fn recording_uidls_keeps_what_is_recorded_and_refuses_clashes() {
        let (_dir, store, md) = setup(UidlSources::default());
        put(&md, "new", A, b"a\n");
        put(&md, "new", B, b"b\n");
        put(&md, "new", C, b"c\n");
        let pairs = vec![
            (A.as_bytes().to_vec(), "old-1".to_string()),
            (B.as_bytes().to_vec(), "old-1".to_string()),
            (C.as_bytes().to_vec(), B.to_string()),
            (b"1700000009.gone".to_vec(), "old-9".to_string()),
            (B.as_bytes().to_vec(), "bad uidl".to_string()),
        ];
        let got = store.record_uidls("alice", pairs).await.unwrap();
        assert_eq!(
            got,
            RecordedUidls {
                recorded: 1,
                kept: 0,
                refused: 4
            }
        );
        assert_eq!(uidls(&store).await, ["old-1", B, C]);
        let again = vec![
            (A.as_bytes().to_vec(), "new-1".to_string()),
            (B.as_bytes().to_vec(), "old-2".to_string()),
        ];
        let got = store.record_uidls("alice", again).await.unwrap();
        assert_eq!((got.recorded, got.kept), (1, 1));
        assert_eq!(uidls(&store).await, ["old-1", "old-2", C]);
        // Not while a session holds the maildrop.
        let session = store.open("alice".into()).await.unwrap();
        let locked = store
            .record_uidls("alice", vec![(C.as_bytes().to_vec(), "x".into())])
            .await;
        assert!(matches!(locked, Err(StoreError::Locked)), "{locked:?}");
        drop(session);
    }
}

#[cfg(test)]
mod timing {
    use std::time::Instant;

    use super::super::{MaildirStore, Maildrop, Store};
    use super::*;

    /// Prints the first (deciding and recording) and later opens of a
    /// 100,000-message maildrop that Dovecot served, and the warm open of
    /// the same maildrop without a foreign source, for comparison.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "timing figures, run by hand"]
    async fn timing_100k_dovecot() {
        const N: usize = 100_000;
        let dir = tempfile::tempdir().unwrap();
        let sources = UidlSources {
            dovecot: Some(dovecot::Template::parse(dovecot::DEFAULT_FORMAT).unwrap()),
            ..UidlSources::default()
        };
        let plain = MaildirStore::new(
            dir.path().to_path_buf(),
            "{root}/{user}/Maildir".into(),
            "example.org".into(),
        );
        let store = plain.clone().with_uidl_sources(sources);
        for user in ["dove", "own"] {
            let md = store.maildir_path(user).unwrap();
            super::super::deliver::create_maildir(&md).unwrap();
            let mut uidlist = format!("3 V1700000000 N{} G0123456789abcdef\n", N + 1);
            for i in 0..N {
                let base = format!("{}.M{i}P1Q{i}.host,S=4,W=6", 1_700_000_000 + i);
                std::fs::write(md.join("cur").join(format!("{base}:2,S")), b"x\ny\n").unwrap();
                uidlist.push_str(&format!("{} :{base}\n", i + 1));
            }
            if user == "dove" {
                std::fs::write(md.join(dovecot::FILE), uidlist).unwrap();
            }
        }
        for (user, store, rounds) in [
            ("dove", &store, ["first", "warm", "warm"]),
            ("own", &plain, ["cold", "warm", "warm"]),
        ] {
            for round in rounds {
                let t = Instant::now();
                let maildrop = store.open(user.into()).await.unwrap();
                let elapsed = t.elapsed();
                assert_eq!(maildrop.messages().len(), N);
                println!(
                    "{user} {round}: open+UIDL {elapsed:?} (first UIDL {})",
                    maildrop.messages()[0].uid
                );
            }
        }
    }
}
