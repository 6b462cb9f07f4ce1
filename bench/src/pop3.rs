//! A minimal POP3 client (RFC 1939) for load generation: one command at a
//! time, the single-line and multi-line replies the loads need, and RETR
//! streamed through [`BodyCounter`] so that a 100 MB message costs no
//! memory. Every reply is checked; an `-ERR` is an error carrying the
//! server's text.

use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::body::BodyCounter;

/// Longest reply line accepted (RFC 2449 allows 512 octets).
const MAX_LINE_OCTETS: usize = 4096;

/// Read buffer: large, so that RETR reads are big and the client's CPU
/// per octet stays low.
const READ_BUFFER_OCTETS: usize = 256 * 1024;

/// One POP3 connection.
pub struct Client {
    stream: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl Client {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream: BufReader::with_capacity(READ_BUFFER_OCTETS, stream),
            line: Vec::with_capacity(128),
        };
        client.status().await.context("greeting")?;
        Ok(client)
    }

    /// USER then PASS.
    pub async fn login(&mut self, user: &str, password: &str) -> Result<()> {
        self.simple(&format!("USER {user}")).await?;
        self.simple(&format!("PASS {password}"))
            .await
            .with_context(|| format!("login as {user}"))?;
        Ok(())
    }

    /// Sends `command` and returns the text after `+OK`.
    pub async fn simple(&mut self, command: &str) -> Result<String> {
        self.send(command).await?;
        self.status()
            .await
            .with_context(|| command.split(' ').next().unwrap_or("").to_string())
    }

    /// STAT: (message count, maildrop octets).
    pub async fn stat(&mut self) -> Result<(u64, u64)> {
        let text = self.simple("STAT").await?;
        let mut words = text.split_ascii_whitespace();
        let count = words.next().and_then(|w| w.parse().ok());
        let octets = words.next().and_then(|w| w.parse().ok());
        count
            .zip(octets)
            .ok_or_else(|| anyhow!("bad STAT reply: {text}"))
    }

    /// LIST: the size of each message, in message-number order.
    pub async fn list(&mut self) -> Result<Vec<u64>> {
        let lines = self.multiline("LIST").await?;
        lines
            .iter()
            .map(|line| {
                line.split_ascii_whitespace()
                    .nth(1)
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| anyhow!("bad LIST line: {line}"))
            })
            .collect()
    }

    /// UIDL: how many lines it listed. Counted as they stream in, with
    /// nothing kept per line, so that a 100,000-line reply costs the
    /// client little of the time being measured.
    pub async fn uidl(&mut self) -> Result<usize> {
        self.simple("UIDL").await?;
        let counter = self.read_body().await?;
        Ok(counter.lines() as usize)
    }

    /// RETR `msg`: the octets of the message (unstuffed).
    pub async fn retr(&mut self, msg: usize) -> Result<u64> {
        self.send(&format!("RETR {msg}")).await?;
        self.status().await.context("RETR")?;
        Ok(self.read_body().await?.octets())
    }

    /// Reads a multi-line body through to its terminator.
    async fn read_body(&mut self) -> Result<BodyCounter> {
        let mut counter = BodyCounter::default();
        while !counter.is_done() {
            let chunk = self.stream.fill_buf().await?;
            if chunk.is_empty() {
                bail!("connection closed inside a multi-line reply");
            }
            let used = counter.feed(chunk);
            self.stream.consume(used);
        }
        Ok(counter)
    }

    /// QUIT, and waits for its reply.
    pub async fn quit(mut self) -> Result<()> {
        self.simple("QUIT").await?;
        Ok(())
    }

    /// Writes one command line.
    pub async fn send(&mut self, command: &str) -> Result<()> {
        let mut line = Vec::with_capacity(command.len() + 2);
        line.extend_from_slice(command.as_bytes());
        line.extend_from_slice(b"\r\n");
        self.stream.get_mut().write_all(&line).await?;
        Ok(())
    }

    /// Reads a status line: the text after `+OK`, or an error.
    pub async fn status(&mut self) -> Result<String> {
        let line = self.read_line().await?;
        if let Some(rest) = line.strip_prefix("+OK") {
            Ok(rest.trim_start().to_string())
        } else {
            bail!("server said: {line}")
        }
    }

    /// Sends `command` and reads a multi-line reply, unstuffed, without
    /// the terminator.
    pub async fn multiline(&mut self, command: &str) -> Result<Vec<String>> {
        self.simple(command).await?;
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            if line == "." {
                return Ok(lines);
            }
            lines.push(line.strip_prefix('.').unwrap_or(&line).to_string());
        }
    }

    async fn read_line(&mut self) -> Result<String> {
        self.line.clear();
        let n = (&mut self.stream)
            .take(MAX_LINE_OCTETS as u64)
            .read_until(b'\n', &mut self.line)
            .await?;
        if n == 0 {
            bail!("connection closed by the server");
        }
        if self.line.last() != Some(&b'\n') {
            bail!("reply line longer than {MAX_LINE_OCTETS} octets or cut");
        }
        let text = String::from_utf8_lossy(&self.line);
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    }
}
