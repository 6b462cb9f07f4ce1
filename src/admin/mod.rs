//! The administrator's commands that are more than a call into the
//! server or the stores: `mailbag mailbox` (a stuck maildrop), `mailbag
//! import` (moving mail in and out of the store), `mailbag migrate-uidls`
//! (UIDLs from another POP3 server) and `mailbag demo`. The
//! command line itself is the binary's (`src/cli.rs`).

pub mod demo;
pub mod import;
pub mod mailbox;
pub mod migrate;
pub mod move_user;
