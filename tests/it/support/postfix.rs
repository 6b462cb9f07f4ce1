//! A private Postfix instance (Debian's `postfix` package) for the tests:
//! its own main.cf and master.cf, queue and data directories in a
//! temporary directory, an smtpd on a loopback port and `local(8)`
//! delivering mbox spools into `<dir>/mail` for system accounts. Stopped
//! when dropped. Needs root; the package's own instance is not used.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A running private Postfix.
pub struct Postfix {
    pub port: u16,
    pub spools: PathBuf,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

/// The services a Postfix that only receives by SMTP and delivers
/// locally needs (no chroot: the queue is a temporary directory).
const MASTER_CF: &str = "\
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
";

impl Postfix {
    /// Starts one, or `None` (after saying why) without root or Postfix.
    pub fn start(test: &str) -> Option<Postfix> {
        if !nix::unistd::geteuid().is_root() || !Path::new("/usr/sbin/postfix").exists() {
            println!("SKIPPED {test}: it runs a private Postfix, which needs root and the postfix package");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (conf, queue, data, spools) = (
            root.join("conf"),
            root.join("queue"),
            root.join("data"),
            root.join("mail"),
        );
        for d in [&conf, &queue, &data, &spools] {
            std::fs::create_dir(d).unwrap();
        }
        let postfix = nix::unistd::User::from_name("postfix")
            .unwrap()
            .expect("user postfix");
        std::os::unix::fs::chown(&data, Some(postfix.uid.as_raw()), None).unwrap();
        // As Debian's /var/mail: root:mail 2775.
        let mail = nix::unistd::Group::from_name("mail")
            .unwrap()
            .expect("group mail");
        std::os::unix::fs::chown(&spools, Some(0), Some(mail.gid.as_raw())).unwrap();
        std::fs::set_permissions(&spools, std::fs::Permissions::from_mode(0o2775)).unwrap();
        let port = crate::support::free_port();
        std::fs::write(
            conf.join("main.cf"),
            format!(
                "compatibility_level = 3.6\n\
                 queue_directory = {queue}\n\
                 data_directory = {data}\n\
                 mail_owner = postfix\n\
                 setgid_group = postdrop\n\
                 inet_interfaces = loopback-only\n\
                 inet_protocols = ipv4\n\
                 myhostname = localhost\n\
                 mydomain = localdomain\n\
                 myorigin = localhost\n\
                 mydestination = localhost\n\
                 mynetworks = 127.0.0.0/8\n\
                 mail_spool_directory = {spools}\n\
                 home_mailbox =\n\
                 mailbox_command =\n\
                 alias_maps =\n\
                 alias_database =\n\
                 local_recipient_maps = proxy:unix:passwd.byname\n\
                 default_transport = error\n\
                 relayhost =\n\
                 biff = no\n\
                 smtputf8_enable = no\n\
                 maillog_file = {root}/maillog\n\
                 maillog_file_prefixes = {root}\n",
                queue = queue.display(),
                data = data.display(),
                spools = spools.display(),
                root = root.display(),
            ),
        )
        .unwrap();
        std::fs::write(
            conf.join("master.cf"),
            format!("127.0.0.1:{port} inet n - n - - smtpd\n{MASTER_CF}"),
        )
        .unwrap();
        let out = Command::new("postfix")
            .arg("-c")
            .arg(&conf)
            .arg("start")
            .output()
            .expect("postfix");
        let postfix = Postfix {
            port,
            spools,
            conf,
            _dir: dir,
        };
        assert!(
            out.status.success(),
            "postfix start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            postfix.log()
        );
        Some(postfix)
    }

    /// Its log (`maillog_file`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.conf.parent().unwrap().join("maillog")).unwrap_or_default()
    }

    /// Sends `message` (LF line ends) to `rcpt@localhost` over SMTP.
    pub async fn send(&self, rcpt: &str, message: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", self.port)).await {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "smtpd never came up: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let mut s = BufReader::new(stream);
        let mut data = Vec::new();
        for line in message.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            if line.starts_with(b".") {
                data.push(b'.');
            }
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(b".\r\n");
        let steps: [(Vec<u8>, &str); 6] = [
            (Vec::new(), "220"),
            (b"HELO test\r\n".to_vec(), "250"),
            (b"MAIL FROM:<sender@localhost>\r\n".to_vec(), "250"),
            (
                format!("RCPT TO:<{rcpt}@localhost>\r\n").into_bytes(),
                "250",
            ),
            (b"DATA\r\n".to_vec(), "354"),
            (data, "250"),
        ];
        for (send, expect) in steps {
            s.get_mut().write_all(&send).await.unwrap();
            let mut reply = String::new();
            tokio::time::timeout(Duration::from_secs(20), s.read_line(&mut reply))
                .await
                .expect("smtpd answers")
                .unwrap();
            assert!(reply.starts_with(expect), "{reply}\n{}", self.log());
        }
        let _ = s.get_mut().write_all(b"QUIT\r\n").await;
    }

    /// Waits (at most 30 s) until `user`'s spool holds `count` whole
    /// messages;
    /// returns them as stored, each without its `From ` line and the
    /// empty line that ends it.
    pub async fn wait_for(&self, user: &str, count: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spool = std::fs::read(self.spools.join(user)).unwrap_or_default();
            let messages = split_spool(&spool);
            // local(8) holds the dotlock while it appends and ends every
            // message with an empty line: before both, the last message
            // may still be half written.
            let locked = self.spools.join(format!("{user}.lock")).exists();
            if messages.len() >= count && !locked && spool.ends_with(b"\n\n") {
                assert_eq!(messages.len(), count, "{}", self.log());
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "{count} messages never arrived:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .output();
    }
}

/// The messages of a spool Postfix `local(8)` wrote: a `From ` line at
/// the start or after an empty line begins one (Postfix quotes `From `
/// in bodies as `>From `).
pub fn split_spool(spool: &[u8]) -> Vec<Vec<u8>> {
    let mut starts = Vec::new();
    let mut at = 0;
    let mut previous_empty = true;
    for line in spool.split_inclusive(|&b| b == b'\n') {
        if previous_empty && line.starts_with(b"From ") {
            starts.push((at, at + line.len()));
        }
        previous_empty = line == b"\n";
        at += line.len();
    }
    let mut messages = Vec::new();
    for (i, &(_, body)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(spool.len(), |&(next, _)| next);
        let mut message = spool[body..end].to_vec();
        // The empty line local(8) ends each message with.
        if message.ends_with(b"\n\n") {
            message.pop();
        }
        messages.push(message);
    }
    messages
}
