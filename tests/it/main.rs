//! Integration tests: the real server on 127.0.0.1 port 0, temporary
//! directories, real TCP clients.

mod cli;
mod pop3;
mod summary;
mod support;
mod telnet;
