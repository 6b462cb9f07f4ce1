//! Configuration: the TOML file that `mailbag serve` reads, validated at
//! start so that a mistake is refused with an error naming the key.
//!
//! Relative paths are taken relative to the directory of the config file,
//! so a config and its data can move together (the demo relies on this).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("config file {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A key has a value that cannot work.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The dotted key, e.g. `store.root`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The POP3 listeners and advertised policies.
    pub pop3: Pop3Config,
    /// Where mail is kept.
    pub store: StoreConfig,
    /// How users are authenticated.
    pub auth: AuthConfig,
    /// Connection limits and timeouts.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Per-session transcripts for chosen users or client addresses.
    #[serde(default)]
    pub transcript: TranscriptConfig,
}

/// `[transcript]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscriptConfig {
    /// Where transcripts are written (one file per session).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Users whose sessions are transcribed (from the line after login;
    /// the lines before it are kept in memory until then).
    #[serde(default)]
    pub users: Vec<String>,
    /// Client addresses whose sessions are transcribed from the greeting.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Largest transcript file, in octets; the rest of a session is cut.
    #[serde(default = "default_transcript_file_octets")]
    pub max_file_octets: u64,
    /// Most transcript files kept in `dir`; the oldest are removed.
    #[serde(default = "default_transcript_files")]
    pub max_files: usize,
}

impl Default for TranscriptConfig {
    fn default() -> Self {
        TranscriptConfig {
            dir: None,
            users: Vec::new(),
            addresses: Vec::new(),
            max_file_octets: default_transcript_file_octets(),
            max_files: default_transcript_files(),
        }
    }
}

fn default_transcript_file_octets() -> u64 {
    1024 * 1024
}
fn default_transcript_files() -> usize {
    1000
}

/// `[pop3]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pop3Config {
    /// Addresses for plain POP3 (port 110 in production).
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// RFC 2449 EXPIRE value to advertise in CAPA (`NEVER` or days).
    #[serde(default)]
    pub expire: Option<String>,
    /// RFC 2449 LOGIN-DELAY seconds to advertise in CAPA.
    #[serde(default)]
    pub login_delay_secs: Option<u32>,
    /// SUMMARY and `mailbox inspect` flag messages larger than this, in
    /// octets: the ones a slow or limited client may never finish.
    #[serde(default = "default_summary_large_octets")]
    pub summary_large_octets: u64,
}

fn default_summary_large_octets() -> u64 {
    10 * 1024 * 1024
}

/// The kind of store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Maildir directories on a local file system.
    Maildir,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The store backend.
    #[serde(default = "default_store_kind")]
    pub kind: StoreKind,
    /// The data root under which every maildrop lives.
    pub root: PathBuf,
    /// Where a user's Maildir is: `{root}`, `{user}` (local part),
    /// `{domain}` and `{name}` (the whole user name) are replaced.
    #[serde(default = "default_path_template")]
    pub path: String,
    /// The `{domain}` of user names without `@`.
    #[serde(default = "default_domain")]
    pub default_domain: String,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A passwd-file in Dovecot's format.
    pub passwd_file: PathBuf,
    /// How long a failed login waits before its `-ERR`, in milliseconds.
    #[serde(default = "default_failure_delay_ms")]
    pub failure_delay_ms: u64,
    /// Failed logins per connection before it is closed.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// Allow USER/PASS and APOP on unencrypted connections from any
    /// address. Without it, only loopback clients may use them.
    #[serde(default)]
    pub allow_plaintext: bool,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Concurrent connections, all listeners together.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Idle seconds allowed before login.
    #[serde(default = "default_authorization_timeout_secs")]
    pub authorization_timeout_secs: u64,
    /// RFC 1939 §3 autologout: idle seconds allowed after login (the RFC
    /// asks for at least 600).
    #[serde(default = "default_autologout_secs")]
    pub autologout_secs: u64,
    /// Unknown or malformed commands before the connection is closed.
    #[serde(default = "default_max_bad_commands")]
    pub max_bad_commands: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: default_max_connections(),
            authorization_timeout_secs: default_authorization_timeout_secs(),
            autologout_secs: default_autologout_secs(),
            max_bad_commands: default_max_bad_commands(),
        }
    }
}

fn default_store_kind() -> StoreKind {
    StoreKind::Maildir
}
fn default_path_template() -> String {
    "{root}/{domain}/{user}/Maildir".into()
}
fn default_domain() -> String {
    "localhost".into()
}
fn default_failure_delay_ms() -> u64 {
    2000
}
fn default_max_failures() -> u32 {
    3
}
fn default_max_connections() -> usize {
    10_000
}
fn default_authorization_timeout_secs() -> u64 {
    120
}
fn default_autologout_secs() -> u64 {
    600
}
fn default_max_bad_commands() -> u32 {
    20
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text; relative paths are resolved
    /// against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.store.root = absolute(base, &config.store.root);
        config.auth.passwd_file = absolute(base, &config.auth.passwd_file);
        if let Some(dir) = &config.transcript.dir {
            config.transcript.dir = Some(absolute(base, dir));
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if self.pop3.listen.is_empty() {
            return invalid(
                "pop3.listen",
                "at least one address is needed, e.g. [\"0.0.0.0:110\"]",
            );
        }
        let t = &self.store.path;
        if !(t.contains("{user}") || t.contains("{name}")) {
            return invalid(
                "store.path",
                "must contain {user} or {name}, or every user would share one maildrop",
            );
        }
        if let Some(rest) = t.split('{').skip(1).find(|p| {
            !["root}", "user}", "domain}", "name}"]
                .iter()
                .any(|k| p.starts_with(k))
        }) {
            return invalid(
                "store.path",
                &format!(
                    "unknown placeholder {{{}; use {{root}}, {{user}}, {{domain}} or {{name}}",
                    rest.split('}').next().unwrap_or(rest)
                ),
            );
        }
        if self.store.default_domain.is_empty()
            || self.store.default_domain.contains(['/', '\0'])
            || self.store.default_domain.starts_with('.')
        {
            return invalid("store.default_domain", "must be a plain domain name");
        }
        if self.auth.max_failures == 0 {
            return invalid("auth.max_failures", "must be at least 1");
        }
        if self.auth.failure_delay_ms > 60_000 {
            return invalid(
                "auth.failure_delay_ms",
                "must be at most 60000 (one minute)",
            );
        }
        if self.limits.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        if self.limits.authorization_timeout_secs == 0 || self.limits.autologout_secs == 0 {
            return invalid(
                "limits.autologout_secs",
                "timeouts must be at least 1 second",
            );
        }
        if self.limits.max_bad_commands == 0 {
            return invalid("limits.max_bad_commands", "must be at least 1");
        }
        let t = &self.transcript;
        if t.dir.is_none() && !(t.users.is_empty() && t.addresses.is_empty()) {
            return invalid(
                "transcript.dir",
                "is needed when transcript.users or transcript.addresses is set",
            );
        }
        if t.max_files == 0 {
            return invalid("transcript.max_files", "must be at least 1");
        }
        if let Some(e) = &self.pop3.expire {
            if !(e == "NEVER" || (!e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()))) {
                return invalid("pop3.expire", "must be \"NEVER\" or a number of days");
            }
        }
        if self.pop3.summary_large_octets == 0 {
            return invalid("pop3.summary_large_octets", "must be at least 1");
        }
        Ok(())
    }

    /// The failure delay as a duration.
    pub fn failure_delay(&self) -> Duration {
        Duration::from_millis(self.auth.failure_delay_ms)
    }
}

fn absolute(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[pop3]
listen = ["127.0.0.1:1110"]
[store]
root = "mail"
[auth]
passwd_file = "passwd"
"#;

    #[test]
    fn minimal_config_gets_defaults_and_absolute_paths() {
        let c = Config::parse(MINIMAL, Path::new("/etc/mailbag")).unwrap();
        assert_eq!(c.store.root, Path::new("/etc/mailbag/mail"));
        assert_eq!(c.auth.passwd_file, Path::new("/etc/mailbag/passwd"));
        assert_eq!(c.store.path, "{root}/{domain}/{user}/Maildir");
        assert_eq!(c.limits.autologout_secs, 600);
        assert_eq!(c.auth.failure_delay_ms, 2000);
        assert!(!c.auth.allow_plaintext);
        assert_eq!(c.pop3.summary_large_octets, 10 * 1024 * 1024);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace("[auth]", "[auth]\npasswd_fiel = 1");
        let e = Config::parse(&text, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("passwd_fiel"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (MINIMAL.replace("[\"127.0.0.1:1110\"]", "[]"), "pop3.listen"),
            (
                MINIMAL.replace("root = \"mail\"", "root = \"mail\"\npath = \"{root}/all\""),
                "store.path",
            ),
            (
                MINIMAL.replace(
                    "root = \"mail\"",
                    "root = \"mail\"\npath = \"{root}/{usr}\"",
                ),
                "store.path",
            ),
            (
                MINIMAL.replace("[auth]", "[auth]\nmax_failures = 0"),
                "auth.max_failures",
            ),
            (
                MINIMAL.replace("[pop3]", "[pop3]\nexpire = \"soon\""),
                "pop3.expire",
            ),
            (
                MINIMAL.replace("[pop3]", "[pop3]\nsummary_large_octets = 0"),
                "pop3.summary_large_octets",
            ),
        ];
        for (text, key) in cases {
            let e = Config::parse(&text, Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let e = Config::parse(
            &MINIMAL.replace("127.0.0.1:1110", "nonsense"),
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listen"), "{e}");
    }
}
