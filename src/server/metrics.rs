//! Metrics in the Prometheus text exposition format (version 0.0.4),
//! served on an optional port (loopback by default).
//!
//! Counters are plain atomics, updated without locks on the paths that
//! count; the endpoint renders them on request. Command latencies go into
//! fixed histogram buckets per verb.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Histogram bucket bounds for command latency, in seconds.
const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// The POP3 verbs counted separately; anything else counts as `other`.
pub const VERBS: [&str; 19] = [
    "USER", "PASS", "APOP", "AUTH", "STLS", "CAPA", "STAT", "LIST", "RETR", "TOP", "DELE", "RSET",
    "UIDL", "NOOP", "QUIT", "UTF8", "HELP", "SUMMARY", "other",
];

/// Why a login failed, as counted.
#[derive(Debug, Clone, Copy)]
pub enum LoginResult {
    /// Logged in.
    Ok,
    /// Wrong user name or password.
    Invalid,
    /// The maildrop was locked ([IN-USE]).
    InUse,
    /// The passdb or store failed.
    Unavailable,
    /// Refused by policy (blocked address, LOGIN-DELAY, plaintext).
    Refused,
}

const LOGIN_RESULTS: [&str; 5] = ["ok", "invalid", "in_use", "unavailable", "refused"];

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// How a delivery to one recipient ended. Every failure keeps
/// `result="failed"`; `reason` tells the ones to act on (`temporary`: the
/// store failed, and the MTA retries) from the ones that are the
/// recipient's (`over_quota`) or final (`permanent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Stored.
    Ok,
    /// Not stored, to be retried by the MTA (4xx).
    Temporary,
    /// Not stored, refused for good (5xx).
    Permanent,
    /// Not stored: the mailbox is full (552).
    OverQuota,
}

/// The labels of each [`Delivery`], in its order.
const DELIVERIES: [&str; 4] = [
    "{result=\"ok\"}",
    "{result=\"failed\",reason=\"temporary\"}",
    "{result=\"failed\",reason=\"permanent\"}",
    "{result=\"failed\",reason=\"over_quota\"}",
];

/// Every counter the server exports.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: AtomicU64,
    connections_refused: AtomicU64,
    open_connections: AtomicI64,
    sessions_authenticated: AtomicI64,
    logins: [AtomicU64; LOGIN_RESULTS.len()],
    commands: [Histogram; VERBS.len()],
    bytes_sent: AtomicU64,
    /// By [`Delivery`], in its order.
    deliveries: [AtomicU64; DELIVERIES.len()],
    /// The TLS certificate in use (none without `[tls]`).
    certificates: Vec<std::sync::Arc<super::tls::Expiry>>,
}

impl Metrics {
    /// Metrics that also export when each certificate expires (read at
    /// each scrape, so a reloaded certificate shows at once).
    pub fn with_certificates(certificates: Vec<std::sync::Arc<super::tls::Expiry>>) -> Metrics {
        Metrics {
            certificates,
            ..Metrics::default()
        }
    }

    /// A connection was accepted (and is now open).
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Relaxed);
        self.open_connections.fetch_add(1, Relaxed);
    }

    /// An accepted connection ended.
    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Relaxed);
    }

    /// A connection was refused by a limit.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// A login attempt ended with `result`.
    pub fn login(&self, result: LoginResult) {
        self.logins[result as usize].fetch_add(1, Relaxed);
        if let LoginResult::Ok = result {
            self.sessions_authenticated.fetch_add(1, Relaxed);
        }
    }

    /// An authenticated session ended.
    pub fn authenticated_session_ended(&self) {
        self.sessions_authenticated.fetch_sub(1, Relaxed);
    }

    /// A command `verb` took `elapsed` from its line to its answer.
    pub fn command(&self, verb: &str, elapsed: Duration) {
        let i = VERBS
            .iter()
            .position(|v| *v == verb)
            .unwrap_or(VERBS.len() - 1);
        let h = &self.commands[i];
        let secs = elapsed.as_secs_f64();
        // One bucket per command (the smallest that holds it); the
        // exposition adds them up. Every atomic here is shared by all
        // sessions, so a command touches as few as it can.
        if let Some(bucket) = BUCKETS.iter().position(|&bound| secs <= bound) {
            h.buckets[bucket].fetch_add(1, Relaxed);
        }
        h.count.fetch_add(1, Relaxed);
        h.sum_micros.fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// Octets written to clients.
    pub fn sent(&self, octets: usize) {
        self.bytes_sent.fetch_add(octets as u64, Relaxed);
    }

    /// A delivery to one recipient ended.
    pub fn delivery(&self, result: Delivery) {
        self.deliveries[result as usize].fetch_add(1, Relaxed);
    }

    /// The whole exposition text.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(8192);
        let mut counter = |name: &str, help: &str, kind: &str, lines: &[(String, i64)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        let get = |a: &AtomicU64| a.load(Relaxed) as i64;
        counter(
            "mailbag_connections_total",
            "Connections accepted.",
            "counter",
            &[(String::new(), get(&self.connections))],
        );
        counter(
            "mailbag_connections_refused_total",
            "Connections refused by a limit.",
            "counter",
            &[(String::new(), get(&self.connections_refused))],
        );
        counter(
            "mailbag_sessions",
            "Open POP3 sessions by state.",
            "gauge",
            &[
                (
                    "{state=\"authorization\"}".into(),
                    self.open_connections.load(Relaxed) - self.sessions_authenticated.load(Relaxed),
                ),
                (
                    "{state=\"transaction\"}".into(),
                    self.sessions_authenticated.load(Relaxed),
                ),
            ],
        );
        let logins: Vec<(String, i64)> = LOGIN_RESULTS
            .iter()
            .zip(&self.logins)
            .map(|(r, a)| (format!("{{result=\"{r}\"}}"), get(a)))
            .collect();
        counter(
            "mailbag_logins_total",
            "Login attempts by result.",
            "counter",
            &logins,
        );
        counter(
            "mailbag_sent_bytes_total",
            "Octets written to POP3 clients.",
            "counter",
            &[(String::new(), get(&self.bytes_sent))],
        );
        counter(
            "mailbag_deliveries_total",
            "Deliveries to one recipient, by result.",
            "counter",
            &DELIVERIES
                .iter()
                .zip(&self.deliveries)
                .map(|(labels, n)| (labels.to_string(), get(n)))
                .collect::<Vec<_>>(),
        );
        let expiries: Vec<(String, i64)> = self
            .certificates
            .iter()
            .filter_map(|c| {
                let path = c.certificate.display().to_string();
                // Label values escape backslash, quote and newline.
                let path = path
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                Some((format!("{{certificate=\"{path}\"}}"), c.not_after()?))
            })
            .collect();
        if !expiries.is_empty() {
            counter(
                "mailbag_tls_certificate_expiry_timestamp_seconds",
                "When the TLS certificate in use expires (notAfter), in Unix seconds.",
                "gauge",
                &expiries,
            );
        }
        let _ = writeln!(
            s,
            "# HELP mailbag_command_duration_seconds POP3 commands by verb, from line to answer.\n# TYPE mailbag_command_duration_seconds histogram"
        );
        for (verb, h) in VERBS.iter().zip(&self.commands) {
            let mut cumulative = 0;
            for (bucket, bound) in h.buckets.iter().zip(BUCKETS) {
                cumulative += bucket.load(Relaxed);
                let _ = writeln!(
                    s,
                    "mailbag_command_duration_seconds_bucket{{verb=\"{verb}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = h.count.load(Relaxed);
            let _ = writeln!(
                s,
                "mailbag_command_duration_seconds_bucket{{verb=\"{verb}\",le=\"+Inf\"}} {count}\nmailbag_command_duration_seconds_sum{{verb=\"{verb}\"}} {}\nmailbag_command_duration_seconds_count{{verb=\"{verb}\"}} {count}",
                h.sum_micros.load(Relaxed) as f64 / 1e6
            );
        }
        s
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`. One request per
/// connection; requests are bounded and time-limited.
pub async fn serve(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) {
    info!(listen = ?listener.local_addr().ok(), "serving metrics");
    loop {
        let (mut stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            answer(&mut stream, &metrics).await;
        });
    }
}

/// How long one scrape may take, request and answer together.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(5);

/// Reads one bounded request and answers it, within one deadline for
/// both: a scraper that stops reading cannot hold the connection either.
async fn answer<T: AsyncRead + AsyncWrite + Unpin>(stream: &mut T, metrics: &Metrics) {
    let _ = tokio::time::timeout(SCRAPE_DEADLINE, respond(stream, metrics)).await;
}

async fn respond<T: AsyncRead + AsyncWrite + Unpin>(stream: &mut T, metrics: &Metrics) {
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let ok = req.starts_with(b"GET /metrics ") || req.starts_with(b"GET /metrics?");
    let response = if ok {
        let body = metrics.render();
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scraper_that_never_reads_is_dropped_at_the_deadline() {
        let metrics = Metrics::default();
        // A connection whose buffers hold less than the answer; the
        // scraper sends its request and reads nothing.
        let (mut scraper, mut server) = tokio::io::duplex(64);
        scraper
            .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let scrape = tokio::spawn(async move { answer(&mut server, &metrics).await });
        tokio::time::timeout(SCRAPE_DEADLINE * 2, scrape)
            .await
            .expect("the answer waited on the scraper past the deadline")
            .unwrap();
        drop(scraper);
    }

    #[test]
    fn render_is_valid_exposition_text() {
        let m = Metrics::default();
        m.connection_opened();
        m.login(LoginResult::Ok);
        m.login(LoginResult::Invalid);
        m.command("STAT", Duration::from_micros(300));
        m.command("XYZ", Duration::from_secs(5));
        m.sent(1234);
        let text = m.render();
        assert!(text.contains("mailbag_logins_total{result=\"ok\"} 1\n"));
        assert!(text.contains("mailbag_logins_total{result=\"invalid\"} 1\n"));
        assert!(text.contains("mailbag_sessions{state=\"transaction\"} 1\n"));
        assert!(text.contains("mailbag_sent_bytes_total 1234\n"));
        assert!(text
            .contains("mailbag_command_duration_seconds_bucket{verb=\"STAT\",le=\"0.0005\"} 1\n"));
        // Buckets are cumulative: every bound above 300 us holds it too.
        assert!(
            text.contains("mailbag_command_duration_seconds_bucket{verb=\"STAT\",le=\"2.5\"} 1\n")
        );
        assert!(
            text.contains("mailbag_command_duration_seconds_bucket{verb=\"STAT\",le=\"+Inf\"} 1\n")
        );
        assert!(text.contains("mailbag_command_duration_seconds_count{verb=\"other\"} 1\n"));
        assert!(
            text.contains("mailbag_command_duration_seconds_bucket{verb=\"other\",le=\"2.5\"} 0\n")
        );
        // Every sample line is `name{labels} value` with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("mailbag_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
