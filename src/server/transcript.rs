//! Per-session transcripts, like the POP3 log that old mail clients kept,
//! written by the server for chosen users or client addresses.
//!
//! The protocol core hands over command lines with secrets already
//! replaced by `***` (the PASS argument, the APOP digest); server lines
//! are logged as status lines, with message bodies and listings summarised
//! by size rather than copied. A transcript is capped in size, and the
//! directory in number of files (the oldest go first).
//!
//! For a chosen user the user is known only after login, so a session
//! keeps its first few lines in memory until then and writes them out
//! only if the login turns out to be one of the chosen users.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tracing::warn;

use crate::config::TranscriptConfig;

/// Lines kept in memory before login while waiting to learn the user.
const MAX_PENDING_LINES: usize = 32;

/// One session's transcript, or the wait to learn whether it needs one.
pub struct Transcript<'a> {
    config: &'a TranscriptConfig,
    session: u64,
    peer: SocketAddr,
    state: State,
}

enum State {
    /// Recording into memory until the login shows who this is.
    Pending(Vec<String>),
    Writing {
        out: BufWriter<File>,
        written: u64,
        truncated: bool,
    },
    Off,
}

impl<'a> Transcript<'a> {
    /// The transcript for a new session, or `None` when no transcript
    /// could apply to it.
    pub fn start(config: &'a TranscriptConfig, peer: SocketAddr, session: u64) -> Option<Self> {
        let dir = config.dir.as_ref()?;
        let by_address = config.addresses.contains(&canonical_ip(peer.ip()));
        if !by_address && config.users.is_empty() {
            return None;
        }
        let mut t = Transcript {
            config,
            session,
            peer,
            state: State::Pending(Vec::new()),
        };
        if by_address {
            let label = peer.ip().to_string().replace(':', "_");
            t.open(dir, &label);
        }
        Some(t)
    }

    /// Called on a successful login: start writing if `user` is chosen,
    /// stop waiting otherwise.
    pub fn logged_in(&mut self, user: &str) {
        self.line('*', &format!("logged in as {user}"));
        if let State::Pending(_) = self.state {
            match &self.config.dir {
                Some(dir) if self.config.users.iter().any(|u| u == user) => {
                    self.open(dir, &sanitize(user))
                }
                _ => self.state = State::Off,
            }
        }
    }

    /// A command line as received (already redacted by the core).
    pub fn client(&mut self, line: &[u8]) {
        self.line('C', &String::from_utf8_lossy(line));
    }

    /// Bytes sent to the client: status lines are logged, and the rest
    /// of a multi-line response is summarised.
    pub fn server(&mut self, bytes: &[u8]) {
        let mut lines = bytes.split(|&b| b == b'\n');
        let first = lines.next().unwrap_or_default();
        let first = String::from_utf8_lossy(first.strip_suffix(b"\r").unwrap_or(first));
        let more = bytes.split(|&b| b == b'\n').count().saturating_sub(2);
        if more > 0 {
            self.line(
                'S',
                &format!("{first}  [+{more} lines, {} octets]", bytes.len()),
            );
        } else if !first.is_empty() {
            self.line('S', &first);
        }
    }

    /// A note about what the server did (a message body sent, a close).
    pub fn note(&mut self, text: &str) {
        self.line('*', text);
    }

    /// Writes buffered lines to the file.
    pub fn flush(&mut self) {
        if let State::Writing { out, .. } = &mut self.state {
            if let Err(e) = out.flush() {
                warn!(error = %e, "cannot write transcript; stopping it");
                self.state = State::Off;
            }
        }
    }

    fn line(&mut self, who: char, text: &str) {
        let line = format!("{} {who}: {text}\n", timestamp(SystemTime::now()));
        match &mut self.state {
            State::Pending(lines) => {
                if lines.len() < MAX_PENDING_LINES {
                    lines.push(line);
                }
            }
            State::Writing {
                out,
                written,
                truncated,
            } => {
                if *truncated {
                    return;
                }
                if *written + line.len() as u64 > self.config.max_file_octets {
                    *truncated = true;
                    let _ = out.write_all(b"(transcript truncated: size limit reached)\n");
                    return;
                }
                *written += line.len() as u64;
                if out.write_all(line.as_bytes()).is_err() {
                    self.state = State::Off;
                }
            }
            State::Off => {}
        }
    }

    fn open(&mut self, dir: &Path, label: &str) {
        let name = format!(
            "{}-{}-{}.log",
            timestamp(SystemTime::now()).replace([':', '.'], ""),
            label,
            self.session
        );
        let result = fs::create_dir_all(dir).and_then(|_| {
            prune(dir, self.config.max_files.saturating_sub(1));
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join(&name))
        });
        match result {
            Ok(file) => {
                let pending = match std::mem::replace(&mut self.state, State::Off) {
                    State::Pending(lines) => lines,
                    _ => Vec::new(),
                };
                self.state = State::Writing {
                    out: BufWriter::new(file),
                    written: 0,
                    truncated: false,
                };
                self.line('*', &format!("session {} from {}", self.session, self.peer));
                for l in pending {
                    if let State::Writing { out, written, .. } = &mut self.state {
                        *written += l.len() as u64;
                        let _ = out.write_all(l.as_bytes());
                    }
                }
            }
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot open transcript");
                self.state = State::Off;
            }
        }
    }
}

impl Drop for Transcript<'_> {
    fn drop(&mut self) {
        if let State::Writing { .. } = self.state {
            self.line('*', "session ended");
        }
        self.flush();
    }
}

/// Removes the oldest `*.log` files so that at most `keep` remain.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if logs.len() <= keep {
        return;
    }
    logs.sort();
    let excess = logs.len() - keep;
    for (_, path) in logs.into_iter().take(excess) {
        let _ = fs::remove_file(path);
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A user name as it may appear in a file name.
fn sanitize(user: &str) -> String {
    user.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@.-_+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

/// RFC 3339 UTC time with milliseconds, e.g. `2026-11-26T10:40:01.123Z`.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// well-known civil-from-days algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_602_001_123);
        assert_eq!(timestamp(t), "2026-11-25T10:20:01.123Z");
        assert_eq!(
            timestamp(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn file_names_never_carry_path_separators() {
        assert_eq!(sanitize("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(sanitize("alice@example.org"), "alice@example.org");
    }

    #[test]
    fn prune_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let p = dir.path().join(format!("{i}.log"));
            fs::write(&p, "x").unwrap();
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i);
            File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        prune(dir.path(), 2);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["3.log", "4.log"]);
    }
}
