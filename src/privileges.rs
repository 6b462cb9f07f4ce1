//! Dropping root: `mailbag serve` started as root binds its ports (110 and
//! 995 are privileged), then becomes the configured user and group for
//! everything else, and refuses to go on if it is still root after that.

use std::path::Path;

use nix::unistd::{self, Gid, Group, Uid, User};

/// Why the switch of user failed.
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
    /// The switch "succeeded" but left root privileges.
    #[error("refusing to run as root after dropping privileges to {0:?}")]
    StillRoot(String),
}

/// The uid and gid to become.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The user id.
    pub uid: Uid,
    /// The group id.
    pub gid: Gid,
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

/// Hands a file the server made while still root (the LMTP socket) to
/// the target user, so it stays usable after the switch.
pub fn give(path: &Path, to: Target) -> Result<(), nix::Error> {
    unistd::chown(path, Some(to.uid), Some(to.gid))
}

/// Becomes `to` for the whole process (glibc applies set*id to every
/// thread), dropping supplementary groups first.
pub fn drop_to(user: &str, to: Target) -> Result<(), PrivilegeError> {
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
    let switch = |source| PrivilegeError::Switch {
        user: user.to_string(),
        source,
    };
    unistd::setgroups(&[to.gid]).map_err(switch)?;
    unistd::setgid(to.gid).map_err(switch)?;
    unistd::setuid(to.uid).map_err(switch)?;
    if unistd::getuid().is_root() || unistd::geteuid().is_root() {
        return Err(PrivilegeError::StillRoot(user.to_string()));
    }
    Ok(())
}
