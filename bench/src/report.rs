//! Comparing results: reads the JSON lines the loads appended, takes the
//! last result of each (load, server) pair, and for each figure of issue
//! 6 prints mailbag's value, each peer's, the best peer's, the ratio
//! (above 1 means mailbag is better, whichever way the figure points) and
//! whether the target is met. Also draws the comparison as an SVG bar
//! chart. No measuring here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// The label of the raw loopback sender's results.
const LOOPBACK: &str = "loopback";

/// What a figure must reach.
#[derive(Clone, Copy)]
enum Goal {
    /// At least this many times the best peer.
    Ratio(f64),
    /// At least this many times the best peer, or this fraction of the
    /// raw loopback limit measured by the load named here.
    RatioOrLimit(f64, f64, &'static str),
    /// Below this absolute value.
    Below(f64),
    /// At most this absolute value.
    AtMost(f64),
    /// Reported, no target.
    None,
}

/// One figure of the comparison.
struct Metric {
    load: &'static str,
    key: &'static str,
    title: &'static str,
    higher_is_better: bool,
    goal: Goal,
}

const METRICS: &[Metric] = &[
    Metric {
        load: "login",
        key: "cycles_per_s",
        title: "login cycles/s, 64 concurrent",
        higher_is_better: true,
        goal: Goal::Ratio(3.0),
    },
    Metric {
        load: "login",
        key: "cycle_p99_ms",
        title: "login cycle p99, ms",
        higher_is_better: false,
        goal: Goal::Below(20.0),
    },
    Metric {
        load: "retr-20k",
        key: "mb_per_s",
        title: "RETR 20 KiB, 4 readers, MB/s",
        higher_is_better: true,
        goal: Goal::RatioOrLimit(2.0, 0.8, "raw-20k"),
    },
    Metric {
        load: "retr-5m",
        key: "mb_per_s",
        title: "RETR 5 MiB, 4 readers, MB/s",
        higher_is_better: true,
        goal: Goal::RatioOrLimit(2.0, 0.8, "raw-5m"),
    },
    Metric {
        load: "idle",
        key: "pss_per_session_kib",
        title: "idle session, PSS KiB each",
        higher_is_better: false,
        goal: Goal::AtMost(16.0),
    },
    Metric {
        load: "idle",
        key: "noop_p99_ms",
        title: "idle sessions: NOOP p99, ms",
        higher_is_better: false,
        goal: Goal::Below(20.0),
    },
    Metric {
        load: "idle-max",
        key: "sessions",
        title: "idle sessions held, most (mailbag alone)",
        higher_is_better: true,
        goal: Goal::None,
    },
    Metric {
        load: "idle-max",
        key: "pss_per_session_kib",
        title: "idle sessions at max, PSS KiB each",
        higher_is_better: false,
        goal: Goal::AtMost(16.0),
    },
    Metric {
        load: "idle-max",
        key: "noop_p99_ms",
        title: "idle sessions at max: NOOP p99, ms",
        higher_is_better: false,
        goal: Goal::Below(20.0),
    },
    Metric {
        load: "maildrop",
        key: "first_ms",
        title: "100k maildrop, PASS..UIDL end, first, ms",
        higher_is_better: false,
        goal: Goal::Below(1000.0),
    },
    Metric {
        load: "maildrop",
        key: "warm_median_ms",
        title: "100k maildrop, PASS..UIDL end, warm, ms",
        higher_is_better: false,
        goal: Goal::Below(80.0),
    },
    Metric {
        load: "rss",
        key: "rss_growth_kib",
        title: "RETR 100 MB: server RSS growth, KiB",
        higher_is_better: false,
        goal: Goal::Below(1024.0),
    },
];

/// One row: the figure, per server.
struct Row<'a> {
    metric: &'a Metric,
    subject: Option<f64>,
    peers: Vec<(String, f64)>,
    best_peer: Option<(String, f64)>,
    limit: Option<f64>,
}

impl Row<'_> {
    /// Above 1 when the subject is better than the best peer.
    fn ratio(&self) -> Option<f64> {
        let (s, (_, p)) = (self.subject?, self.best_peer.as_ref()?);
        // A zero on either side (no RSS growth measured, say) makes the
        // ratio 0 or infinite: it says nothing.
        if s <= 0.0 || *p <= 0.0 {
            return None;
        }
        let r = if self.metric.higher_is_better {
            s / p
        } else {
            p / s
        };
        r.is_finite().then_some(r)
    }

    fn verdict(&self) -> (String, Option<bool>) {
        let s = self.subject;
        match self.metric.goal {
            Goal::Ratio(x) => (format!("≥ {x}x best peer"), self.ratio().map(|r| r >= x)),
            Goal::RatioOrLimit(x, f, _) => {
                let by_ratio = self.ratio().map(|r| r >= x);
                let by_limit = s.zip(self.limit).map(|(s, l)| s >= f * l);
                let met = match (by_ratio, by_limit) {
                    (None, None) => None,
                    (a, b) => Some(a == Some(true) || b == Some(true)),
                };
                let share = s
                    .zip(self.limit)
                    .map(|(s, l)| format!(" (now {:.0}% of it)", 100.0 * s / l))
                    .unwrap_or_default();
                (
                    format!("≥ {x}x best peer or ≥ {:.0}% of loopback{share}", f * 100.0),
                    met,
                )
            }
            Goal::Below(x) => (format!("< {x}"), s.map(|s| s < x)),
            Goal::AtMost(x) => (format!("≤ {x}"), s.map(|s| s <= x)),
            Goal::None => (String::new(), None),
        }
    }
}

/// Reads `input`, prints the comparison, and writes the Markdown and SVG.
pub fn run(
    input: &Path,
    subject: &str,
    note: &str,
    markdown: Option<&Path>,
    svg: Option<&Path>,
) -> Result<()> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("read {}", input.display()))?;
    // (load, target) -> the last result.
    let mut results: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut peers: Vec<String> = Vec::new();
    let mut loadavg = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).context("a result line")?;
        let load = v["load"].as_str().unwrap_or("").to_string();
        let target = v["target"].as_str().unwrap_or("").to_string();
        if target != subject && target != LOOPBACK && !peers.contains(&target) {
            peers.push(target.clone());
        }
        if let Some(l) = v["loadavg_1m"].as_f64() {
            loadavg.push(l);
        }
        results.insert((load, target), v);
    }
    let value = |load: &str, target: &str, key: &str| {
        results
            .get(&(load.to_string(), target.to_string()))
            .and_then(|v| v[key].as_f64())
    };
    let rows: Vec<Row> = METRICS
        .iter()
        .map(|m| {
            let peer_values: Vec<(String, f64)> = peers
                .iter()
                .filter_map(|p| value(m.load, p, m.key).map(|v| (p.clone(), v)))
                .collect();
            let best_peer = peer_values.iter().cloned().reduce(|a, b| {
                let b_better = if m.higher_is_better {
                    b.1 > a.1
                } else {
                    b.1 < a.1
                };
                if b_better {
                    b
                } else {
                    a
                }
            });
            let limit = match m.goal {
                Goal::RatioOrLimit(_, _, raw) => value(raw, LOOPBACK, m.key),
                _ => None,
            };
            Row {
                metric: m,
                subject: value(m.load, subject, m.key),
                peers: peer_values,
                best_peer,
                limit,
            }
        })
        .filter(|r| r.subject.is_some() || !r.peers.is_empty())
        .collect();

    let table = markdown_table(&rows, subject, &peers, &loadavg);
    print!("{table}");
    if let Some(path) = markdown {
        std::fs::write(path, &table).with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = svg {
        std::fs::write(path, chart(&rows, subject, &peers, note))
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn markdown_table(rows: &[Row], subject: &str, peers: &[String], loadavg: &[f64]) -> String {
    let mut out = String::new();
    let mut header = format!("| figure | {subject} |");
    let mut rule = String::from("|---|---:|");
    for p in peers {
        header.push_str(&format!(" {p} |"));
        rule.push_str("---:|");
    }
    header.push_str(" loopback | ratio to best peer | target | met |");
    rule.push_str("---:|---:|---|---|");
    let _ = writeln!(out, "{header}\n{rule}");
    for r in rows {
        let mut line = format!("| {} | {} |", r.metric.title, fmt(r.subject));
        for p in peers {
            let v = r.peers.iter().find(|(name, _)| name == p).map(|x| x.1);
            line.push_str(&format!(" {} |", fmt(v)));
        }
        let ratio = r
            .ratio()
            .map(|x| format!("{x:.2}x vs {}", r.best_peer.as_ref().map_or("", |b| &b.0)))
            .unwrap_or_else(|| "–".into());
        let (goal, met) = r.verdict();
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let _ = writeln!(out, "{line} {} | {ratio} | {goal} | {met} |", fmt(r.limit));
    }
    if let (Some(lo), Some(hi)) = (
        loadavg.iter().cloned().reduce(f64::min),
        loadavg.iter().cloned().reduce(f64::max),
    ) {
        let _ = writeln!(
            out,
            "\nRatios are {subject} against the best peer, above 1 when {subject} is better \
             (higher throughput, or lower time and memory). 1-minute load average during \
             the runs: {lo:.2} to {hi:.2}."
        );
    }
    out
}

/// Horizontal bars per figure, scaled so that the best server in each
/// figure fills the row (for lower-is-better figures, the lowest value).
fn chart(rows: &[Row], subject: &str, peers: &[String], note: &str) -> String {
    const WIDTH: f64 = 960.0;
    const LABEL: f64 = 330.0;
    const BAR_AREA: f64 = 480.0;
    const BAR: f64 = 14.0;
    let colours = ["#4c78a8", "#72b7b2", "#9d9da1", "#b279a2"];
    let servers: Vec<&str> = std::iter::once(subject)
        .chain(peers.iter().map(String::as_str))
        .collect();
    let mut y = 56.0;
    let mut body = String::new();
    for r in rows {
        let mut values: Vec<(&str, f64)> = servers
            .iter()
            .filter_map(|s| {
                if *s == subject {
                    r.subject.map(|v| (*s, v))
                } else {
                    r.peers.iter().find(|(p, _)| p == s).map(|(_, v)| (*s, *v))
                }
            })
            .collect();
        if let Some(limit) = r.limit {
            values.push((LOOPBACK, limit));
        }
        if values.is_empty() {
            continue;
        }
        let goodness = |v: f64| {
            if r.metric.higher_is_better {
                v
            } else if v > 0.0 {
                1.0 / v
            } else {
                f64::MAX
            }
        };
        let best = values.iter().map(|(_, v)| goodness(*v)).fold(0.0, f64::max);
        let _ = writeln!(
            body,
            r#"<text x="10" y="{:.0}" font-weight="bold">{}</text>"#,
            y + BAR,
            escape(r.metric.title)
        );
        for (s, v) in &values {
            let i = servers.iter().position(|x| x == s).unwrap_or(0);
            let len = if best > 0.0 {
                (goodness(*v) / best).min(1.0) * BAR_AREA
            } else {
                0.0
            };
            let fill = if *s == subject {
                "#f58518"
            } else if *s == LOOPBACK {
                "#e0e0e0"
            } else {
                colours[i % colours.len()]
            };
            let _ = writeln!(
                body,
                r#"<rect x="{LABEL}" y="{y:.0}" width="{:.1}" height="{BAR}" fill="{fill}"/><text x="{:.0}" y="{:.0}">{} {}</text>"#,
                len.max(1.0),
                LABEL + len.max(1.0) + 6.0,
                y + BAR - 3.0,
                escape(s),
                fmt(Some(*v))
            );
            y += BAR + 4.0;
        }
        y += 14.0;
    }
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{:.0}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="24" font-size="15" font-weight="bold">{} against its peers (longest bar = best in each figure)</text>
<text x="10" y="40" fill="#555">{}</text>
{body}</svg>
"##,
        y + 10.0,
        escape(subject),
        escape(note)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(metric: &Metric, subject: f64, peer: f64) -> Row<'_> {
        Row {
            metric,
            subject: Some(subject),
            peers: vec![("dovecot".into(), peer)],
            best_peer: Some(("dovecot".into(), peer)),
            limit: None,
        }
    }

    #[test]
    fn ratios_are_above_one_when_better_and_absent_for_zeros() {
        let login = &METRICS[0];
        let rss = METRICS.iter().find(|m| m.load == "rss").unwrap();
        assert_eq!(row(login, 300.0, 100.0).ratio(), Some(3.0));
        assert_eq!(row(rss, 100.0, 400.0).ratio(), Some(4.0));
        // No growth measured for the peer: no ratio, not "0.00x".
        assert_eq!(row(rss, 564.0, 0.0).ratio(), None);
        assert_eq!(row(login, 0.0, 100.0).ratio(), None);
    }
}
