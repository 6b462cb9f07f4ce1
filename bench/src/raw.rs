//! The physical limit for RETR: a minimal sender that holds one message in
//! memory, already in wire form, and answers every RETR with it. It speaks
//! just enough POP3 (greeting, +OK to anything, a one-line LIST) for the
//! RETR load to run against it unchanged, so the same client code and the
//! same loopback socket measure what any server could at best achieve.
//!
//! It runs in its own process (`mailbag-bench raw-sender`), like a server,
//! with a blocking thread per connection and one `write_all` per message.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

use crate::generate;

/// Serves on `listener` forever; prints the port first so that a parent
/// can find it.
pub fn serve(listener: TcpListener, size: usize) -> Result<()> {
    let message = generate::message(0, size);
    let mut retr = b"+OK message follows\r\n".to_vec();
    retr.extend(generate::wire_form(&message));
    let list = format!(
        "+OK 1 messages\r\n1 {}\r\n.\r\n",
        generate::crlf_size(&message)
    );
    let retr: &'static [u8] = retr.leak();
    let list: &'static str = list.leak();
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            let _ = session(stream, retr, list);
        });
    }
    Ok(())
}

fn session(stream: TcpStream, retr: &[u8], list: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    out.write_all(b"+OK raw sender\r\n")?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let verb = line.split_ascii_whitespace().next().unwrap_or("");
        match verb.to_ascii_uppercase().as_str() {
            "RETR" => out.write_all(retr)?,
            "LIST" => out.write_all(list.as_bytes())?,
            "QUIT" => return out.write_all(b"+OK bye\r\n"),
            _ => out.write_all(b"+OK\r\n")?,
        }
    }
}

/// A sender process, killed on drop.
pub struct Sender {
    child: Child,
    /// Its loopback port.
    pub port: u16,
}

impl Sender {
    /// Starts `mailbag-bench raw-sender --size <size>` on a free port.
    pub fn start(size: usize) -> Result<Sender> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["raw-sender", "--size", &size.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .context("start the raw sender")?;
        let mut port = String::new();
        BufReader::new(child.stdout.take().context("sender stdout")?).read_line(&mut port)?;
        let port = port.trim().parse().context("raw sender's port")?;
        Ok(Sender { child, port })
    }

    /// The sender's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
