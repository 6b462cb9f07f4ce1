//! Who mailbag runs as. Mail and the user database are never touched as
//! root: a file that root creates in a Maildir (a lock, a cache, a
//! message) or a passwd-file that root rewrites can lock the server's own
//! user out of it.
//!
//! - `mailbag serve` started as root binds its ports (110 and 995 are
//!   privileged), then becomes `[server] user` (and group) for everything
//!   else; without `[server] user` it refuses to start.
//! - The commands that read or write mail or users (`user`, `mailbox`,
//!   `import`, `deliver`, `migrate`) started as root become that user
//!   right after reading the config, so that every file they create
//!   belongs to the server; without `[server] user` they refuse.
//! - Started as anyone else, they run as that user, as before.
//!
//! The server re-reads some files after it has dropped root: the config
//! and the TLS certificate on SIGHUP, the passwd-file when it changes.
//! [`check`] tells whether the service user can use a file, and if not,
//! says which one and how to fix it; [`walk_mail_root`] does the same for
//! what lies under the mail root.

use std::fmt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{self, AccessFlags, Gid, Group, Uid, User};

use crate::config::{Config, StoreKind};

/// Why the switch of user failed, or would be unsafe.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The configured user does not exist.
    #[error("server.user {0:?}: no such user")]
    NoSuchUser(String),
    /// The configured group does not exist.
    #[error("server.group {0:?}: no such group")]
    NoSuchGroup(String),
    /// Not root, and not already the configured user.
    #[error(
        "server.user {user:?}: cannot switch users without starting as root (running as uid {uid})"
    )]
    NotRoot {
        /// The configured user.
        user: String,
        /// Who we are.
        uid: u32,
    },
    /// A system call failed.
    #[error("cannot switch to user {user:?}: {source}")]
    Switch {
        /// The configured user.
        user: String,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// The switch "succeeded" but left root privileges, or the target is
    /// root itself.
    #[error("refusing to run as root after dropping privileges to {0:?}")]
    StillRoot(String),
    /// The target group is root's group.
    #[error("refusing to run with group root (gid 0) as {0:?}: set [server] group to the server's own group")]
    GroupRoot(String),
    /// Started as root without `[server] user`.
    #[error(
        "refusing to run `mailbag {command}` as root: [server] user is not set in {config}. \
         mailbag never touches mail or its passwd-file as root (files root creates there can lock \
         the server out). Name the account the server runs as in that file:\n\
         \n    [server]\n    user = \"mailbag\"\n    group = \"mailbag\"\n\n\
         and `mailbag serve` drops to it after binding its ports, and `sudo mailbag ...` runs as it; \
         or start mailbag as that user (e.g. `sudo -u mailbag mailbag {command} ...`)"
    )]
    RootWithoutUser {
        /// The subcommand, e.g. `serve`.
        command: &'static str,
        /// The config file.
        config: String,
    },
    /// Started as root with a config file that someone other than root
    /// may change.
    #[error(
        "refusing to read {path} as root: {why}. Whoever can change the config chooses what root \
         binds, reads and creates before it switches users; make the file root's and not \
         writable by group or others (e.g. `chown root {path} && chmod go-w {path}`)"
    )]
    UntrustedConfig {
        /// The config file as named.
        path: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Started as root, reads the config file at `path` only if no one but
/// root could have written it: it must be root's and not writable by
/// group or others (followed through links, as reading it is). The
/// checks and the read use one open file, so the file cannot be swapped
/// in between. Returns `None`, reading nothing, when not started as root
/// (any file that user can read will do) or when the file cannot be
/// opened (the ordinary read reports why).
pub fn read_trusted_config(path: &Path) -> Result<Option<String>, PrivilegeError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !unistd::geteuid().is_root() {
        return Ok(None);
    }
    let untrusted = |why: String| PrivilegeError::UntrustedConfig {
        path: path.display().to_string(),
        why,
    };
    let Ok(mut file) = std::fs::File::open(path) else {
        return Ok(None);
    };
    let Ok(meta) = file.metadata() else {
        return Ok(None);
    };
    let mode = meta.permissions().mode();
    if meta.uid() != 0 {
        return Err(untrusted(format!(
            "it belongs to {}",
            user_name(Uid::from_raw(meta.uid()))
        )));
    }
    if mode & 0o022 != 0 {
        return Err(untrusted(format!(
            "group or others may write it (mode {:04o})",
            mode & 0o7777
        )));
    }
    let mut text = String::new();
    match file.read_to_string(&mut text) {
        Ok(_) => Ok(Some(text)),
        Err(_) => Ok(None),
    }
}

/// The uid and gid to become.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The user id.
    pub uid: Uid,
    /// The group id.
    pub gid: Gid,
}

/// The account the server runs as, with names for messages.
#[derive(Debug, Clone)]
pub struct ServiceUser {
    /// The user name.
    pub user: String,
    /// The group name (or the number, if it has none).
    pub group: String,
    /// The ids.
    pub target: Target,
}

impl ServiceUser {
    /// Looks up `[server] user` and `group`.
    pub fn lookup(user: &str, group: Option<&str>) -> Result<ServiceUser, PrivilegeError> {
        let target = target(user, group)?;
        Ok(ServiceUser {
            user: user.to_string(),
            group: group_name(target.gid),
            target,
        })
    }

    /// This process, as it runs now.
    pub fn current() -> ServiceUser {
        let (uid, gid) = (unistd::geteuid(), unistd::getegid());
        let user = User::from_uid(uid)
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        ServiceUser {
            user,
            group: group_name(gid),
            target: Target { uid, gid },
        }
    }

    /// `user:group`, as chown takes it.
    pub fn owner(&self) -> String {
        format!("{}:{}", self.user, self.group)
    }
}

fn group_name(gid: Gid) -> String {
    Group::from_gid(gid)
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name)
}

fn user_name(uid: Uid) -> String {
    User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

/// Looks up `user` (and `group`, else the user's primary group).
pub fn target(user: &str, group: Option<&str>) -> Result<Target, PrivilegeError> {
    let switch = |source| PrivilegeError::Switch {
        user: user.to_string(),
        source,
    };
    let u = User::from_name(user)
        .map_err(switch)?
        .ok_or_else(|| PrivilegeError::NoSuchUser(user.to_string()))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .map_err(switch)?
                .ok_or_else(|| PrivilegeError::NoSuchGroup(g.to_string()))?
                .gid
        }
        None => u.gid,
    };
    Ok(Target { uid: u.uid, gid })
}

/// Hands a socket the server made while still root (the LMTP socket) to
/// the target user, so it stays usable after the switch. A symbolic link
/// is never followed and anything but a socket is left alone: whoever
/// can write the socket's directory could otherwise swap in a link to
/// any file between the bind and this call, and have root give it away.
pub fn give(path: &Path, to: Target) -> Result<(), nix::Error> {
    use nix::sys::stat::{lstat, SFlag};
    let node = lstat(path)?;
    if SFlag::from_bits_truncate(node.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(Errno::EPERM);
    }
    std::os::unix::fs::lchown(path, Some(to.uid.as_raw()), Some(to.gid.as_raw()))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))
}

/// Becomes `to` for the whole process, for good (glibc applies set*id to
/// every thread): supplementary groups first (only `to.gid` is kept, so
/// none of root's groups survive), then the group ids, then the user ids
/// (real, effective and saved). Then checks that root cannot be regained.
pub fn drop_to(user: &str, to: Target) -> Result<(), PrivilegeError> {
    if to.uid.is_root() {
        return Err(PrivilegeError::StillRoot(user.to_string()));
    }
    let me = unistd::geteuid();
    if !me.is_root() {
        if me == to.uid {
            return Ok(());
        }
        return Err(PrivilegeError::NotRoot {
            user: user.to_string(),
            uid: me.as_raw(),
        });
    }
    if to.gid.as_raw() == 0 {
        return Err(PrivilegeError::GroupRoot(user.to_string()));
    }
    let switch = |source| PrivilegeError::Switch {
        user: user.to_string(),
        source,
    };
    unistd::setgroups(&[to.gid]).map_err(switch)?;
    unistd::setresgid(to.gid, to.gid, to.gid).map_err(switch)?;
    unistd::setresuid(to.uid, to.uid, to.uid).map_err(switch)?;
    verify_dropped(user, to)
}

/// After [`drop_to`]: every id is the target's, no other group is held,
/// and asking for root back fails.
fn verify_dropped(user: &str, to: Target) -> Result<(), PrivilegeError> {
    let still = || PrivilegeError::StillRoot(user.to_string());
    let uids = unistd::getresuid().map_err(|_| still())?;
    let gids = unistd::getresgid().map_err(|_| still())?;
    if [uids.real, uids.effective, uids.saved]
        .iter()
        .any(|&u| u != to.uid)
        || [gids.real, gids.effective, gids.saved]
            .iter()
            .any(|&g| g != to.gid)
    {
        return Err(still());
    }
    let groups = unistd::getgroups().map_err(|_| still())?;
    if groups.iter().any(|&g| g != to.gid) {
        return Err(still());
    }
    if unistd::setuid(Uid::from_raw(0)).is_ok() || unistd::setgid(Gid::from_raw(0)).is_ok() {
        return Err(still());
    }
    Ok(())
}

/// For `mailbag serve`: the account to drop to after binding, if any.
/// Started as root without `[server] user`, this is an error: the server
/// never runs as root.
pub fn for_serve(
    config: &Config,
    config_path: &Path,
) -> Result<Option<ServiceUser>, PrivilegeError> {
    match &config.server.user {
        Some(user) => {
            let service = ServiceUser::lookup(user, config.server.group.as_deref())?;
            if service.target.uid.is_root() {
                return Err(PrivilegeError::StillRoot(user.clone()));
            }
            Ok(Some(service))
        }
        None if unistd::geteuid().is_root() => Err(PrivilegeError::RootWithoutUser {
            command: "serve",
            config: config_path.display().to_string(),
        }),
        None => Ok(None),
    }
}

/// For a command that reads or writes mail or users: started as root,
/// become `[server] user` now, for the rest of the process, and return
/// who that is; refuse without `[server] user`. Started as anyone else,
/// change nothing and return `None`.
///
/// With the PostgreSQL store and no `[server] user`, a root command goes
/// on as root: its mail and users are rows that the database guards, and
/// it creates no file that the server must read.
pub fn for_command(
    config: &Config,
    config_path: &Path,
    command: &'static str,
) -> Result<Option<ServiceUser>, PrivilegeError> {
    if !unistd::geteuid().is_root() {
        return Ok(None);
    }
    let Some(user) = &config.server.user else {
        if config.store.kind == StoreKind::Postgres {
            return Ok(None);
        }
        return Err(PrivilegeError::RootWithoutUser {
            command,
            config: config_path.display().to_string(),
        });
    };
    let service = ServiceUser::lookup(user, config.server.group.as_deref())?;
    drop_to(user, service.target)?;
    Ok(Some(service))
}

/// Runs `f` with the real and effective ids of `who` (only its group),
/// keeping root as the saved id so that the ids can be restored after:
/// for `check-config`, which asks the kernel what the server's user may
/// do. Not root and not `who`: refused.
pub fn as_user<T>(who: &ServiceUser, f: impl FnOnce() -> T) -> Result<T, PrivilegeError> {
    let me = unistd::geteuid();
    if me == who.target.uid && !me.is_root() {
        return Ok(f());
    }
    if who.target.uid.is_root() {
        return Err(PrivilegeError::StillRoot(who.user.clone()));
    }
    if !me.is_root() {
        return Err(PrivilegeError::NotRoot {
            user: who.user.clone(),
            uid: me.as_raw(),
        });
    }
    let switch = |source| PrivilegeError::Switch {
        user: who.user.clone(),
        source,
    };
    let root = Uid::from_raw(0);
    let (saved_groups, saved_gid) = (unistd::getgroups().map_err(switch)?, unistd::getegid());
    let t = who.target;
    unistd::setgroups(&[t.gid]).map_err(switch)?;
    unistd::setresgid(t.gid, t.gid, saved_gid).map_err(switch)?;
    unistd::setresuid(t.uid, t.uid, root).map_err(switch)?;
    let out = f();
    unistd::setresuid(root, root, root).map_err(switch)?;
    unistd::setresgid(saved_gid, saved_gid, saved_gid).map_err(switch)?;
    unistd::setgroups(&saved_groups).map_err(switch)?;
    Ok(out)
}

/// What the server needs of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read a file.
    Read,
    /// Read and write a file (mailbag's own lock and caches in a Maildir).
    ReadWrite,
    /// List, create, rename and remove entries in a directory (which the
    /// server creates if it is missing).
    Dir,
}

/// Who should own a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The server's user: mail, the passwd-file it shares with the admin
    /// commands.
    Service,
    /// Root, shared with the server's group (config, certificate, key).
    Root,
}

/// One path the server's user cannot use, with the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    /// What the path is (`tls.key`, `store.root`, ...).
    pub role: String,
    /// The path.
    pub path: PathBuf,
    /// What is wrong, for the user named in it.
    pub problem: String,
    /// A command that fixes it.
    pub fix: String,
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}; fix: {}",
            self.role,
            self.path.display(),
            self.problem,
            self.fix
        )
    }
}

fn describe(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "owner {}:{}, mode {:04o}",
            user_name(Uid::from_raw(m.uid())),
            group_name(Gid::from_raw(m.gid())),
            m.mode() & 0o7777
        ),
        Err(e) => e.to_string(),
    }
}

/// Checks, as the calling process now is (run it inside [`as_user`] to
/// check for another user), that `who` can use `path` as `need` says.
/// `why` ends the problem text: what the server does with the path.
pub fn check(
    role: &str,
    path: &Path,
    need: Need,
    owner: Owner,
    why: &str,
    who: &ServiceUser,
) -> Option<Unusable> {
    let flags = match need {
        Need::Read => AccessFlags::R_OK,
        Need::ReadWrite => AccessFlags::R_OK | AccessFlags::W_OK,
        Need::Dir => AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK,
    };
    let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let unusable = |path: &Path, problem: String, fix: String| {
        Some(Unusable {
            role: role.to_string(),
            path: path.to_path_buf(),
            problem,
            fix,
        })
    };
    let name = &who.user;
    let error = match unistd::access(path, flags) {
        Ok(()) => return None,
        Err(e) => e,
    };
    // A directory on the way that the user cannot enter.
    let absolute = path.clone();
    let mut ancestors: Vec<&Path> = absolute.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        match unistd::access(dir, AccessFlags::X_OK) {
            Ok(()) => continue,
            Err(Errno::ENOENT) => break,
            Err(_) => {
                return unusable(
                    path,
                    format!(
                        "{name} cannot reach it: it cannot enter {} ({}), and {why}",
                        dir.display(),
                        describe(dir)
                    ),
                    grant(dir, "x", Owner::Root, who),
                )
            }
        }
    }
    if error == Errno::ENOENT {
        if need == Need::Dir {
            // The server creates a missing directory if it can.
            let parent = absolute
                .ancestors()
                .skip(1)
                .find(|a| a.exists())
                .unwrap_or(Path::new("/"));
            if unistd::access(parent, AccessFlags::W_OK | AccessFlags::X_OK).is_ok() {
                return None;
            }
            return unusable(
                path,
                format!(
                    "it does not exist, and {name} cannot create it in {} ({}), and {why}",
                    parent.display(),
                    describe(parent)
                ),
                format!(
                    "install -d -o {} -g {} -m 0750 {}",
                    who.user,
                    who.group,
                    path.display()
                ),
            );
        }
        return unusable(
            path,
            "it does not exist".to_string(),
            "create it, or correct the path in the config".to_string(),
        );
    }
    let what = match need {
        Need::Read => "read it",
        Need::ReadWrite => "read and write it",
        Need::Dir => "list and change entries in it",
    };
    let perms = match need {
        Need::Read => "r",
        Need::ReadWrite => "rw",
        Need::Dir => "rwx",
    };
    unusable(
        path,
        format!("{name} cannot {what} ({}), and {why}", describe(path)),
        grant(path, perms, owner, who),
    )
}

/// The command that gives `who` the permissions `perms` on `path`.
fn grant(path: &Path, perms: &str, owner: Owner, who: &ServiceUser) -> String {
    use std::os::unix::fs::MetadataExt;
    let p = path.display();
    let meta = std::fs::metadata(path).ok();
    let (uid, gid) = meta.map_or((None, None), |m| (Some(m.uid()), Some(m.gid())));
    if uid == Some(who.target.uid.as_raw()) {
        return format!("chmod u+{perms} {p}");
    }
    match owner {
        Owner::Service => format!("chown {} {p} && chmod u+{perms} {p}", who.owner()),
        Owner::Root if gid == Some(who.target.gid.as_raw()) => format!("chmod g+{perms} {p}"),
        Owner::Root => format!("chgrp {} {p} && chmod g+{perms} {p}", who.group),
    }
}

/// The files and directories that a running server reads or writes after
/// it has dropped root, with what it needs of each.
pub fn server_paths(
    config: &Config,
    config_path: &Path,
) -> Vec<(String, PathBuf, Need, Owner, &'static str)> {
    let mut paths = vec![(
        "config file".to_string(),
        config_path.to_path_buf(),
        Need::Read,
        Owner::Root,
        "the server re-reads it on SIGHUP",
    )];
    // Users from [auth.ldap], [auth.sql] or PAM need no passwd-file.
    if config.store.kind != StoreKind::Postgres
        && config.auth.users_from_passwd_file()
        && !config.auth.passwd_file.as_os_str().is_empty()
    {
        paths.push((
            "auth.passwd_file".to_string(),
            config.auth.passwd_file.clone(),
            Need::Read,
            Owner::Service,
            "the server re-reads it when it changes (`mailbag user add`)",
        ));
    }
    if config.store.kind == StoreKind::Maildir {
        paths.push((
            "store.root".to_string(),
            config.store.root.clone(),
            Need::Dir,
            Owner::Service,
            "the server reads and writes the mail under it",
        ));
    }
    if let Some(tls) = &config.tls {
        for (role, path) in [("tls.certificate", &tls.certificate), ("tls.key", &tls.key)] {
            paths.push((
                role.to_string(),
                path.clone(),
                Need::Read,
                Owner::Root,
                "the server reloads it on SIGHUP",
            ));
        }
    }
    // Made at the first start if missing; one that exists (made by root
    // at an earlier start, say) must be the service user's to read.
    let secret = &config.auth.secret_file;
    let missing = matches!(std::fs::symlink_metadata(secret),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    if !missing {
        paths.push((
            "auth.secret_file".to_string(),
            secret.clone(),
            Need::Read,
            Owner::Service,
            "the server reads it at every start",
        ));
    }
    if let Some(dir) = &config.transcript.dir {
        paths.push((
            "transcript.dir".to_string(),
            dir.clone(),
            Need::Dir,
            Owner::Service,
            "the server writes transcripts there",
        ));
    }
    paths
}

/// [`check`] for each of [`server_paths`], as the calling process is now.
pub fn check_server_paths(config: &Config, config_path: &Path, who: &ServiceUser) -> Vec<Unusable> {
    server_paths(config, config_path)
        .into_iter()
        .filter_map(|(role, path, need, owner, why)| check(&role, &path, need, owner, why, who))
        .collect()
}

/// For `check-config` with the mbox store, as the calling process is now
/// (run it inside [`as_user`]): the spool directory must exist (the MTA
/// makes spools in it, never the directory) and `who` must be able to
/// create files in it, for the dotlock `<spool>.lock`, the session lock
/// `<spool>.mailbag` and UPDATE's journal. On Debian, `/var/mail` is
/// `root:mail` mode 2775: the fix names the group to run as, not a
/// change to the directory that the MTA and mail readers rely on.
pub fn check_spool_dir(template: &str, who: &ServiceUser) -> Option<Unusable> {
    use std::os::unix::fs::MetadataExt;
    let dir = Path::new(template).parent().unwrap_or(Path::new("/"));
    let why = "the server creates the dotlock <spool>.lock, its session lock <spool>.mailbag \
               and UPDATE's journal there";
    let unusable = |problem: String, fix: String| {
        Some(Unusable {
            role: "store.mbox.path".to_string(),
            path: dir.to_path_buf(),
            problem,
            fix,
        })
    };
    let meta = match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => meta,
        Ok(_) => {
            return unusable(
                "the spool directory is not a directory".to_string(),
                "correct store.mbox.path".to_string(),
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return unusable(
                format!("the spool directory does not exist (the MTA delivers into it, and {why})"),
                format!(
                    "correct store.mbox.path, or create it as Debian has /var/mail: \
                     install -d -o root -g mail -m 2775 {}",
                    dir.display()
                ),
            )
        }
        // Not reachable: `check` says which directory on the way.
        Err(_) => return check("store.mbox.path", dir, Need::Dir, Owner::Root, why, who),
    };
    if unistd::access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_ok() {
        return None;
    }
    let name = &who.user;
    let group = group_name(Gid::from_raw(meta.gid()));
    let problem = format!(
        "{name} (group {}) cannot create files in the spool directory ({}), and {why}",
        who.group,
        describe(dir)
    );
    if meta.mode() & 0o030 == 0o030 && meta.gid() != who.target.gid.as_raw() {
        return unusable(
            problem,
            format!(
                "run the server with the spool directory's group {group}: [server] group = \
                 \"{group}\" (started as root, the server keeps that one group only; started \
                 by systemd as {name}, Group={group} or SupplementaryGroups={group})"
            ),
        );
    }
    check("store.mbox.path", dir, Need::Dir, Owner::Root, why, who).or_else(|| {
        unusable(
            problem,
            format!(
                "chgrp {} {} && chmod g+rwx {}",
                who.group,
                dir.display(),
                dir.display()
            ),
        )
    })
}

/// For `check-config` with `auth.kind = "pam"`, as the calling process is
/// now (run it inside [`as_user`]): a warning when `pam_unix` will not be
/// able to check other accounts' passwords. A process that cannot read
/// `/etc/shadow` has `pam_unix` run the helper `unix_chkpwd`, which is
/// set-group-id `shadow` (or set-user-id root) to read it, and which
/// checks only the password of the user running it: for a server, every
/// other account's login fails. Missing or without its set-id bit, it
/// checks none.
pub fn check_pam_passwords(who: &ServiceUser) -> Option<String> {
    check_pam_passwords_with(
        who,
        Path::new("/etc/shadow"),
        &[
            Path::new("/usr/sbin/unix_chkpwd"),
            Path::new("/sbin/unix_chkpwd"),
        ],
    )
}

fn check_pam_passwords_with(who: &ServiceUser, shadow: &Path, helpers: &[&Path]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if unistd::access(shadow, AccessFlags::R_OK).is_ok() {
        return None;
    }
    let helper = match helpers
        .iter()
        .find_map(|p| Some((p, std::fs::metadata(p).ok()?)))
    {
        None => format!(
            "unix_chkpwd, which pam_unix runs then, is missing ({}; Debian's libpam-modules-bin \
             ships it): no password can be checked",
            helpers
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some((path, meta)) if meta.mode() & 0o6000 == 0 => format!(
            "{} ({}) is neither set-user-id nor set-group-id, so it cannot read {} either: no \
             password can be checked (Debian installs it root:shadow, mode 2755)",
            path.display(),
            describe(path),
            shadow.display()
        ),
        Some((path, _)) => format!(
            "pam_unix then runs {} ({}), which reads {} for the user running it only: every \
             login of another account will fail, whatever the password",
            path.display(),
            describe(path),
            shadow.display()
        ),
    };
    Some(format!(
        "auth.kind = \"pam\": {} (group {}) cannot read {} ({}); {helper}. Give the server \
         group shadow: start it from systemd as its user with SupplementaryGroups=shadow (started \
         as root, mailbag keeps only [server] group, which the spool directory needs); see \
         docs/DEPLOYMENT.md, \"System accounts through PAM\"",
        who.user,
        who.group,
        shadow.display(),
        describe(shadow)
    ))
}

/// What [`walk_mail_root`] found.
#[derive(Debug, Default)]
pub struct Walk {
    /// The first problems found (at most the `keep` asked for).
    pub problems: Vec<Unusable>,
    /// All problems found, kept or not.
    pub total: usize,
    /// Entries looked at.
    pub entries: usize,
    /// The walk stopped at its entry bound before the end.
    pub truncated: bool,
}

/// Looks at what lies under the mail root, as the calling process is now
/// (run it inside [`as_user`]): every directory must be listable and
/// writable (the server creates, renames and removes files in it), every
/// file readable, and mailbag's own files (`mailbag.lock` and the
/// caches) writable too. Goes `max_depth` levels down (a Maildir's
/// messages are at `{root}/{domain}/{user}/Maildir/cur/`: depth 5) and
/// looks at no more than `max_entries` entries. Symbolic links are not
/// followed (the store does not follow them either).
pub fn walk_mail_root(
    root: &Path,
    who: &ServiceUser,
    max_depth: usize,
    max_entries: usize,
    keep: usize,
) -> Walk {
    let mut walk = Walk::default();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        if depth >= max_depth {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            // Reported by the directory's own check.
            continue;
        };
        for entry in entries.flatten() {
            if walk.entries >= max_entries {
                walk.truncated = true;
                return walk;
            }
            walk.entries += 1;
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            let found = if kind.is_dir() {
                // Looked into as far as the user can list it.
                stack.push((path.clone(), depth + 1));
                check(
                    "under store.root:",
                    &path,
                    Need::Dir,
                    Owner::Service,
                    "the server needs to read and change it",
                    who,
                )
            } else if kind.is_file() {
                // The lock and caches are the server's own, kept up to
                // date by it; mail it only reads.
                let own = entry
                    .file_name()
                    .as_encoded_bytes()
                    .starts_with(b"mailbag.");
                let (need, why) = if own {
                    (Need::ReadWrite, "the server keeps it up to date")
                } else {
                    (Need::Read, "the server needs to read it")
                };
                check("under store.root:", &path, need, Owner::Service, why, who)
            } else {
                None
            };
            if let Some(found) = found {
                walk.total += 1;
                if walk.problems.len() < keep {
                    walk.problems.push(found);
                }
            }
        }
    }
    walk
}

/// For `user add|passwd|del` after the switch: the passwd-file is
/// replaced atomically by a new file written next to it (and edited under
/// `<file>.lock` there), so its directory must be writable too.
pub fn check_passwd_rewrite(path: &Path, who: &ServiceUser) -> Option<Unusable> {
    let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("/"),
    };
    let in_dir = |problem: String| Unusable {
        role: "auth.passwd_file".to_string(),
        path: path.to_path_buf(),
        problem,
        fix: format!(
            "keep the passwd-file in a directory that {user} owns, e.g. \
             `install -d -o {user} -g {group} -m 0700 /var/lib/mailbag && mv {p} /var/lib/mailbag/ \
             && chown {owner} /var/lib/mailbag/{file}`, and set auth.passwd_file to the new path \
             (or `chown {owner} {d}` if nothing else lives in {d})",
            user = who.user,
            group = who.group,
            owner = who.owner(),
            p = path.display(),
            d = dir.display(),
            file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    };
    if unistd::access(&dir, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
        return Some(in_dir(format!(
            "{} cannot create files in its directory {} ({}), where the file is rewritten \
             (a new file renamed over it)",
            who.user,
            dir.display(),
            describe(&dir)
        )));
    }
    if path.exists() {
        if let Some(found) = check(
            "auth.passwd_file",
            path,
            Need::Read,
            Owner::Service,
            "the command reads it to rewrite it",
            who,
        ) {
            return Some(found);
        }
    }
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
    if lock.exists() && unistd::access(&lock, AccessFlags::W_OK).is_err() {
        return Some(Unusable {
            role: "auth.passwd_file lock".to_string(),
            problem: format!(
                "{} cannot open it for writing ({}), and every rewrite locks it",
                who.user,
                describe(&lock)
            ),
            fix: format!("chown {} {}", who.owner(), lock.display()),
            path: lock,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn someone_else(path: &Path) -> ServiceUser {
        let meta = std::fs::metadata(path).unwrap();
        // Ids that own nothing here: the fix must name the user and group.
        let (uid, gid) = (meta.uid() + 4242, meta.gid() + 4242);
        ServiceUser {
            user: "mail-svc".to_string(),
            group: "mail-grp".to_string(),
            target: Target {
                uid: Uid::from_raw(uid),
                gid: Gid::from_raw(gid),
            },
        }
    }

    #[test]
    fn the_fix_gives_mail_to_the_server_and_shares_root_files_by_group() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.pem");
        std::fs::write(&file, b"x").unwrap();
        let p = file.display();
        let other = someone_else(&file);
        assert_eq!(
            grant(&file, "r", Owner::Service, &other),
            format!("chown mail-svc:mail-grp {p} && chmod u+r {p}")
        );
        assert_eq!(
            grant(&file, "r", Owner::Root, &other),
            format!("chgrp mail-grp {p} && chmod g+r {p}")
        );
        let meta = std::fs::metadata(&file).unwrap();
        let mut in_group = other.clone();
        in_group.target.gid = Gid::from_raw(meta.gid());
        assert_eq!(
            grant(&file, "r", Owner::Root, &in_group),
            format!("chmod g+r {p}")
        );
        let mut owner = other;
        owner.target.uid = Uid::from_raw(meta.uid());
        assert_eq!(
            grant(&file, "rwx", Owner::Service, &owner),
            format!("chmod u+rwx {p}")
        );
    }

    #[test]
    fn server_paths_are_what_the_server_re_reads_after_the_drop() {
        let text = "[pop3]\nlisten = [\"127.0.0.1:1110\"]\n[store]\nroot = \"mail\"\n\
                    [auth]\npasswd_file = \"passwd\"\n[tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\n";
        let config = Config::parse(text, Path::new("/etc/mailbag")).unwrap();
        let paths = server_paths(&config, Path::new("/etc/mailbag/mailbag.toml"));
        let roles: Vec<(&str, &Path, Need)> = paths
            .iter()
            .map(|(role, path, need, _, _)| (role.as_str(), path.as_path(), *need))
            .collect();
        assert_eq!(
            roles,
            [
                (
                    "config file",
                    Path::new("/etc/mailbag/mailbag.toml"),
                    Need::Read
                ),
                (
                    "auth.passwd_file",
                    Path::new("/etc/mailbag/passwd"),
                    Need::Read
                ),
                ("store.root", Path::new("/etc/mailbag/mail"), Need::Dir),
                (
                    "tls.certificate",
                    Path::new("/etc/mailbag/c.pem"),
                    Need::Read
                ),
                ("tls.key", Path::new("/etc/mailbag/k.pem"), Need::Read),
            ]
        );
    }

    #[test]
    fn a_missing_file_is_named_with_its_role() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone.pem");
        let who = ServiceUser::current();
        let found = check("tls.key", &missing, Need::Read, Owner::Root, "x", &who).unwrap();
        assert_eq!(
            found.to_string(),
            format!(
                "tls.key {}: it does not exist; fix: create it, or correct the path in the config",
                missing.display()
            )
        );
        // A missing directory that can be created is no problem.
        let creatable = dir.path().join("mail");
        assert_eq!(
            check(
                "store.root",
                &creatable,
                Need::Dir,
                Owner::Service,
                "x",
                &who
            ),
            None
        );
    }

    /// What check-config says when the server cannot read /etc/shadow,
    /// for each state of `unix_chkpwd`: missing, without its set-id bit,
    /// and as Debian installs it.
    #[test]
    fn pam_password_warning_says_what_unix_chkpwd_can_do() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let who = ServiceUser::current();
        let readable = t.path().join("shadow");
        std::fs::write(&readable, "").unwrap();
        assert_eq!(check_pam_passwords_with(&who, &readable, &[]), None);
        // A path that does not exist cannot be read, even by root.
        let unreadable = t.path().join("no-shadow");
        let missing =
            check_pam_passwords_with(&who, &unreadable, &[&t.path().join("none")]).unwrap();
        assert!(missing.contains("is missing"), "{missing}");
        let helper = t.path().join("unix_chkpwd");
        std::fs::write(&helper, "").unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = check_pam_passwords_with(&who, &unreadable, &[&helper]).unwrap();
        assert!(
            plain.contains("neither set-user-id nor set-group-id"),
            "{plain}"
        );
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o2755)).unwrap();
        let setgid = check_pam_passwords_with(&who, &unreadable, &[&helper]).unwrap();
        assert!(
            setgid.contains("for the user running it only")
                && setgid.contains("SupplementaryGroups=shadow"),
            "{setgid}"
        );
    }
}
