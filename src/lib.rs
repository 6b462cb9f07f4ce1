//! mailbag: a POP3 mail server.
//!
//! This crate holds everything that does IO: the tokio driver and
//! listeners (`server`), the mail stores (`store`), the password databases
//! (`auth`), local delivery (`deliver`), configuration and the command
//! line. The protocol itself lives
//! in the sans-IO crate `mailbag_proto`.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cidr;
pub mod config;
pub mod deliver;
pub mod demo;
pub mod import;
pub mod mailbox;
pub mod pg;
pub mod privileges;
pub mod server;
pub mod store;
pub mod summary;
