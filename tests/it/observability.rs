//! What an operator installs and watches: the package's shipped config,
//! `--version`, the generated man pages and completions, JSON logs, the
//! TLS certificate's expiry on /metrics, and the Grafana dashboard and
//! Prometheus rules in contrib/ against a live /metrics.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn mailbag() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailbag"))
}

/// The body of `GET /metrics`, or `None` while the endpoint is not up.
async fn scrape(addr: SocketAddr) -> Option<String> {
    let mut http = tokio::net::TcpStream::connect(addr).await.ok()?;
    http.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    http.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_string())
}

pub async fn scrape_retrying(addr: SocketAddr) -> String {
    for _ in 0..200 {
        if let Some(body) = scrape(addr).await {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no metrics endpoint at {addr}");
}

/// The value of the sample `name{labels}` (exactly), if present.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A self-signed certificate for localhost that expires at
/// `(year, month, day)`, written as `cert.pem` and `key.pem` in `dir`.
fn write_certificate(dir: &Path, not_after: (i32, u8, u8)) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    // Written whole and renamed, as a renewal tool would.
    for (name, text) in [("cert.pem", cert.pem()), ("key.pem", key.serialize_pem())] {
        let tmp = dir.join(format!("{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

#[test]
fn the_shipped_config_listens_on_loopback_refuses_plaintext_and_drops_root() {
    let path = repo("contrib/debian/mailbag.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = mailbag::config::Config::parse(&text, Path::new("/etc/mailbag")).unwrap();
    let mut addrs: Vec<SocketAddr> = config.pop3.listen.clone();
    addrs.extend(&config.pop3.listen_tls);
    addrs.extend(&config.lmtp.listen);
    addrs.extend(config.metrics.listen);
    assert!(!addrs.is_empty());
    for addr in addrs {
        assert!(addr.ip().is_loopback(), "{addr} is reachable off loopback");
    }
    assert!(!config.auth.allow_plaintext);
    for ip in ["192.0.2.7", "10.1.2.3", "2001:db8::1"] {
        let ip = ip.parse().unwrap();
        assert!(
            !config.auth.trusted_networks.iter().any(|n| n.contains(ip)),
            "plaintext passwords trusted from {ip}"
        );
    }
    assert_eq!(config.server.user.as_deref(), Some("mailbag"));
    assert_eq!(config.server.group.as_deref(), Some("mailbag"));
    // The package's unit and scripts make exactly these.
    assert_eq!(
        config.auth.passwd_file,
        Path::new("/var/lib/mailbag/passwd")
    );
    assert_eq!(config.store.root, Path::new("/var/mail/vhosts"));
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = mailbag().arg("--version").output().unwrap();
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        version.starts_with(&format!("mailbag {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let commit = version
        .rsplit_once('(')
        .and_then(|(_, c)| c.strip_suffix(')'))
        .unwrap_or_default()
        .to_string();
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match (std::env::var("MAILBAG_COMMIT").ok(), head) {
        (Some(set), _) if !set.is_empty() => assert_eq!(commit, set),
        (_, Some(head)) => assert_eq!(commit, head, "{version}"),
        (_, None) => assert_eq!(commit, "unknown"),
    }
}

/// The commands `mailbag [SUB] --help` lists.
fn listed_commands(path: &[&str]) -> Vec<String> {
    let out = mailbag().args(path).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    help.split("Commands:\n")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn man_pages_cover_every_command_and_every_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = mailbag()
        .args(["generate-assets", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = std::fs::read_to_string(dir.path().join("man/mailbag.8")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH mailbag 8"),
        "{page}"
    );
    let top = listed_commands(&[]);
    assert!(top.len() >= 8, "{top:?}");
    for command in &top {
        assert!(
            page.contains(&format!(".SS \"mailbag {}\"", command.replace('-', "\\-"))),
            "mailbag.8 lacks `mailbag {command}`"
        );
        for sub in listed_commands(&[command]) {
            assert!(
                page.contains(&format!(
                    ".SS \"mailbag {} {}\"",
                    command.replace('-', "\\-"),
                    sub.replace('-', "\\-")
                )),
                "mailbag.8 lacks `mailbag {command} {sub}`"
            );
        }
    }
    assert!(
        !page.contains("generate\\-assets"),
        "the hidden command is documented"
    );

    // mailbag.toml(5) is made from the example file: every key in it.
    let config = std::fs::read_to_string(dir.path().join("man/mailbag.toml.5")).unwrap();
    let example = std::fs::read_to_string(repo("mailbag.example.toml")).unwrap();
    let mut keys = 0;
    for line in example.lines().filter(|l| !l.starts_with('#')) {
        if let Some((key, _)) = line.split_once(" = ") {
            assert!(config.contains(key), "{key}");
            keys += 1;
        }
        if line.starts_with('[') {
            assert!(config.contains(&format!(".SS \"{line}\"")), "{line}");
        }
    }
    assert!(keys > 30, "{keys}");

    for (file, marker) in [
        ("mailbag.bash", "complete"),
        ("_mailbag", "#compdef mailbag"),
        ("mailbag.fish", "complete -c mailbag"),
    ] {
        let text = std::fs::read_to_string(dir.path().join("completions").join(file)).unwrap();
        assert!(text.contains(marker), "{file}");
        assert!(text.contains("check-config"), "{file}");
    }
}

#[tokio::test]
async fn json_log_lines_carry_the_failed_login_and_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let port = free_port();
    let text = config_text(dir.path(), "\n[log]\nformat = \"json\"\n")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.path().join("mailbag.toml"), text).unwrap();
    let log_path = dir.path().join("mailbag.log");
    let mut cmd = mailbag();
    as_unprivileged(&mut cmd, dir.path());
    let mut child = cmd
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("mailbag.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = None;
    for _ in 0..200 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            c = Some(Client {
                stream: tokio::io::BufReader::new(s),
            });
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut c = c.expect("server never came up");
    c.line().await;
    c.ok("USER alice").await;
    assert!(c.cmd("PASS wrong secret").await.starts_with("-ERR [AUTH]"));
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
    c.ok("QUIT").await;
    assert!(c.closed().await);
    child.kill().unwrap();
    child.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    let failure = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("authentication failed:"))
        })
        .unwrap_or_else(|| panic!("no failed login logged:\n{log}"));
    assert_eq!(failure["level"], "WARN");
    assert_eq!(failure["target"], "mailbag::auth");
    assert_eq!(
        failure["fields"]["message"],
        "authentication failed: rip=127.0.0.1 user=alice reason=invalid-credentials service=pop3"
    );
    assert_eq!(failure["span"]["name"], "session", "{failure}");
    assert!(
        !log.contains("wrong secret") && !log.contains("wonderland"),
        "a password reached the log:\n{log}"
    );
}

#[tokio::test]
async fn certificate_expiry_is_exported_and_follows_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    write_certificate(&dir.path().join("tls"), (2031, 1, 2));
    let (port, metrics_port) = (free_port(), free_port());
    let text = config_text(
        dir.path(),
        &format!(
            "\n[tls]\ncertificate = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
        ),
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.path().join("mailbag.toml"), text).unwrap();
    let mut cmd = mailbag();
    as_unprivileged(&mut cmd, dir.path());
    let mut child = cmd
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("mailbag.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let certificate = dir.path().join("tls/cert.pem");
    let series = format!(
        "mailbag_tls_certificate_expiry_timestamp_seconds{{certificate=\"{}\"}}",
        certificate.display()
    );
    let body = scrape_retrying(metrics).await;
    // 2031-01-02T00:00:00Z
    assert_eq!(sample(&body, &series), Some(1_925_078_400.0), "{body}");
    assert!(body.contains("# TYPE mailbag_tls_certificate_expiry_timestamp_seconds gauge\n"));

    // A renewed certificate, then SIGHUP: the metric follows.
    write_certificate(&dir.path().join("tls"), (2032, 3, 4));
    unprivileged(dir.path());
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut value = None;
    for _ in 0..200 {
        value = sample(&scrape_retrying(metrics).await, &series);
        if value == Some(1_961_971_200.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // 2032-03-04T00:00:00Z
    assert_eq!(value, Some(1_961_971_200.0));
}

/// Every `mailbag_*` metric name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            // A label value in quotes is not a metric.
            let quoted = expr[..start].matches('"').count() % 2 == 1;
            if word.starts_with("mailbag_") && !quoted {
                names.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every `expr` string anywhere in a Grafana dashboard.
fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alert_rules_query_is_exported() {
    let s = TestServer::start_tls("\n[metrics]\nlisten = \"127.0.0.1:0\"\n").await;
    let body = scrape_retrying(s.metrics_addr.unwrap()).await;
    let exported: BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("contrib/grafana/mailbag.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "{exprs:?}");
    let rules = std::fs::read_to_string(repo("contrib/prometheus/mailbag-rules.yml")).unwrap();
    let rule_exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect();
    assert!(rule_exprs.len() >= 5, "{rule_exprs:?}");
    // The rules cover what an operator is paged for.
    let all_rules = rule_exprs.join("\n");
    for needle in [
        "result=\"invalid\"",
        "result=\"in_use\"",
        "mailbag_deliveries_total",
        "mailbag_tls_certificate_expiry_timestamp_seconds",
        "up{",
    ] {
        assert!(all_rules.contains(needle), "no rule on {needle}");
    }

    let mut checked = BTreeSet::new();
    for expr in exprs.iter().chain(&rule_exprs) {
        for name in metric_names(expr) {
            assert!(
                exported.contains(name.as_str()),
                "`{name}` (in `{expr}`) is not on /metrics:\n{body}"
            );
            checked.insert(name);
        }
    }
    assert!(checked.len() >= 8, "{checked:?}");
    s.stop().await;
}

#[test]
fn metric_names_are_read_out_of_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.95, sum by (le) (rate(mailbag_a_bucket{x=\"mailbag_no\"}[5m]))) / mailbag_b"
        ),
        vec!["mailbag_a_bucket", "mailbag_b"]
    );
}
