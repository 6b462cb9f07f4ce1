//! Integration tests: the real server on 127.0.0.1 port 0, temporary
//! directories, real TCP clients.

mod attack;
mod attack15;
mod attack_auth;
mod attack_mbox;
mod attack_store;
mod cli;
mod deliver;
mod guessing;
mod hashes;
mod hostile;
mod interop;
mod ldap;
mod limits;
mod lmtp;
mod maildir_trust;
mod mbox;
mod migrate;
mod migrate_pop3;
mod names;
mod oauth;
mod observability;
mod pam;
mod pg_auth;
mod pop3;
mod postfix;
mod postgres;
mod privileges;
mod proxy;
mod sasl;
mod sessions;
mod sql;
mod summary;
mod support;
mod telnet;
mod tls;
