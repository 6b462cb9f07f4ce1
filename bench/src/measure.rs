//! Measuring a run: latency percentiles, and the CPU used by the load
//! generator and by the server over the same wall-clock interval, so that
//! a result can say whether the generator itself was the bottleneck.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::procfs;

/// Latencies of one kind of operation, in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies(Vec<u64>);

impl Latencies {
    /// Records one.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_micros() as u64);
    }

    /// Takes all of `other`'s.
    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// How many were recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p`-th percentile (0..=100) in milliseconds, by nearest rank;
    /// 0 when empty.
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.0.len()) - 1;
        self.0[i] as f64 / 1000.0
    }

    /// p50, p99 and max as JSON fields with `prefix`.
    pub fn summary(&mut self, prefix: &str) -> Vec<(String, Value)> {
        vec![
            (
                format!("{prefix}_p50_ms"),
                json!(round(self.percentile_ms(50.0), 3)),
            ),
            (
                format!("{prefix}_p99_ms"),
                json!(round(self.percentile_ms(99.0), 3)),
            ),
            (
                format!("{prefix}_max_ms"),
                json!(round(self.percentile_ms(100.0), 3)),
            ),
        ]
    }
}

/// Rounds to `digits` decimals, for readable JSON.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// CPU and wall clock from the start of a measured interval.
pub struct Meter {
    start: Instant,
    own_cpu: f64,
    server_pid: Option<u32>,
    server_cpu: f64,
    machine: (u64, u64),
}

impl Meter {
    /// Starts measuring; `server_pid` is the root of the server's
    /// process tree, when known.
    pub fn start(server_pid: Option<u32>) -> Meter {
        Meter {
            start: Instant::now(),
            own_cpu: procfs::own_cpu_seconds(),
            server_pid,
            server_cpu: server_pid.map(procfs::cpu_seconds).unwrap_or(0.0),
            machine: procfs::machine_ticks(),
        }
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Wall seconds and CPU use (in cores) of the generator and the
    /// server, with a verdict on whether the generator was saturated.
    pub fn finish(&self, generator_threads: usize) -> Vec<(String, Value)> {
        let wall = self.elapsed().max(1e-9);
        let own = (procfs::own_cpu_seconds() - self.own_cpu) / wall;
        let mut out = vec![
            ("wall_s".to_string(), json!(round(wall, 3))),
            ("generator_cpu_cores".to_string(), json!(round(own, 2))),
        ];
        if let Some(pid) = self.server_pid {
            let server = (procfs::cpu_seconds(pid) - self.server_cpu) / wall;
            out.push(("server_cpu_cores".to_string(), json!(round(server, 2))));
        }
        // How busy the whole machine was: generator, server, and anyone
        // else's work (other builds on a shared machine) together.
        let (busy, total) = procfs::machine_ticks();
        let (busy, total) = (busy - self.machine.0, total - self.machine.1);
        if total > 0 {
            out.push((
                "machine_busy_percent".to_string(),
                json!(round(100.0 * busy as f64 / total as f64, 1)),
            ));
        }
        // The generator is the bottleneck when its threads are nearly all
        // busy: the server could have gone faster than we asked.
        let bound = own > 0.85 * generator_threads as f64;
        out.push(("generator_saturated".to_string(), json!(bound)));
        out
    }
}
