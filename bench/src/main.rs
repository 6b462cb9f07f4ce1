//! `mailbag-bench`: a POP3 load generator that targets any POP3 server
//! (issue 6). Each load prints a readable table and, with `--json FILE`,
//! appends one JSON object per run to FILE; `report` turns such a file
//! into a comparison of mailbag against its peers, with ratios, the
//! targets met or missed, and an SVG chart. `gen` writes the Maildirs and
//! passwd-file the loads need; `bench/compare.sh` drives the whole run.

#![forbid(unsafe_code)]

mod body;
mod generate;
mod loads;
mod measure;
mod pop3;
mod procfs;
mod raw;
mod report;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

use generate::Users;

#[derive(Parser)]
#[command(name = "mailbag-bench", version, about = "A POP3 load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The server under load and where results go.
#[derive(Args, Clone)]
struct Target {
    /// The POP3 server.
    #[arg(long)]
    addr: SocketAddr,
    /// The PID at the root of the server's process tree (for CPU and
    /// memory from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's name in results, e.g. `mailbag` or `dovecot-tuned`.
    #[arg(long, default_value = "server")]
    label: String,
    /// The load's name in results (default: the subcommand's).
    #[arg(long)]
    name: Option<String>,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Everyone's password.
    #[arg(long, default_value = "pw")]
    password: String,
    /// Cut the load short if the server's anonymous RSS (over its process
    /// tree) passes this many MiB, to protect a shared machine.
    #[arg(long, default_value_t = 6144)]
    max_server_rss_mib: u64,
}

impl Target {
    fn server(&self) -> loads::Server {
        loads::Server {
            addr: self.addr,
            password: self.password.clone(),
            pid: self.server_pid,
            guard: Arc::new(loads::MemoryGuard::start(
                self.server_pid,
                self.max_server_rss_mib * 1024,
            )),
        }
    }
}

/// A range of users `{prefix}{first}`..
#[derive(Args, Clone)]
struct UserRange {
    /// Start of every user name.
    #[arg(long, default_value = "u")]
    prefix: String,
    /// The first user's number.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// How many users.
    #[arg(long, default_value_t = 5000)]
    users: u64,
}

impl UserRange {
    fn users(&self) -> Users {
        Users {
            prefix: self.prefix.clone(),
            first: self.first,
            count: self.users,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write Maildirs of generated messages and their passwd-file lines.
    Gen {
        /// The data root (mailbag's store.root).
        #[arg(long)]
        root: PathBuf,
        /// The domain directory under the root.
        #[arg(long, default_value = "localhost")]
        domain: String,
        #[command(flatten)]
        range: UserRange,
        /// Messages per user.
        #[arg(long, default_value_t = 5)]
        messages: u64,
        /// Octets per message, on disk.
        #[arg(long, default_value_t = 2048)]
        size: usize,
        /// Append `user:{PLAIN}password` lines to this passwd-file.
        #[arg(long)]
        passwd: Option<PathBuf>,
        /// Everyone's password.
        #[arg(long, default_value = "pw")]
        password: String,
        /// The passwd-file field to write instead of `{PLAIN}<password>`,
        /// e.g. a `{SHA512-CRYPT}...` hash of the same password.
        #[arg(long)]
        stored: Option<String>,
        /// Write each user's messages as one mbox spool `<root>/<user>`
        /// (as Postfix `local(8)` writes them) instead of a Maildir: for
        /// mailbag's `store.kind = "mbox"` with `path = "<root>/%u"`, and
        /// Dovecot's `mail_location = mbox:...:INBOX=<root>/%u`.
        #[arg(long)]
        mbox: bool,
    },
    /// Login cycles: connect, USER/PASS, STAT, UIDL, LIST, QUIT.
    Login {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        range: UserRange,
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Stop after this many cycles (e.g. one per user, to warm up).
        #[arg(long)]
        max_cycles: Option<u64>,
    },
    /// LMTP deliveries per second (`--addr` is the LMTP listener), each
    /// client on one connection, recipients round-robin over the users.
    Lmtp {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        range: UserRange,
        /// Octets of each message, as stored with LF line endings.
        #[arg(long, default_value_t = 10 * 1024)]
        size: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// RETR throughput, each reader on its own maildrop.
    Retr {
        #[command(flatten)]
        target: Target,
        /// The readers' users (one maildrop per reader).
        #[arg(long = "user", required = true)]
        users: Vec<String>,
        /// Concurrent readers.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// The physical limit: RETR from a minimal in-memory sender process.
    Raw {
        /// Results go here.
        #[arg(long, default_value = "loopback")]
        label: String,
        /// The load's name in results.
        #[arg(long)]
        name: Option<String>,
        /// Append the result as one JSON line to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Octets of the message, on disk (as for `gen`).
        #[arg(long, default_value_t = 20 * 1024)]
        size: usize,
        /// Concurrent readers.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// The raw sender itself (started by `raw`).
    #[command(hide = true)]
    RawSender {
        #[arg(long)]
        size: usize,
    },
    /// Idle authenticated sessions: server memory per session, NOOP latency.
    Idle {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        range: UserRange,
        /// Sessions being opened at once.
        #[arg(long, default_value_t = 64)]
        open_concurrency: usize,
        /// NOOPs from every session.
        #[arg(long, default_value_t = 3)]
        noop_rounds: usize,
        /// Stop opening sessions after this many seconds.
        #[arg(long, default_value_t = 600.0)]
        ramp_limit: f64,
    },
    /// A large maildrop: PASS to the end of UIDL, first and warm.
    Maildrop {
        #[command(flatten)]
        target: Target,
        /// The maildrop's user.
        #[arg(long)]
        user: String,
        /// Logins (the first is reported apart).
        #[arg(long, default_value_t = 6)]
        repeat: usize,
    },
    /// Server RSS growth while it sends message 1 of a user (a large one).
    Rss {
        #[command(flatten)]
        target: Target,
        /// The user whose message 1 is read.
        #[arg(long)]
        user: String,
    },
    /// Compare results: ratios of mailbag to the best peer, targets, SVG.
    Report {
        /// JSON lines written by the loads.
        input: PathBuf,
        /// The label of the server under test.
        #[arg(long, default_value = "mailbag")]
        subject: String,
        /// Write a Markdown table here (also printed).
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Write an SVG chart here.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// A line under the chart's title: the machine and its load.
        #[arg(long, default_value = "")]
        note: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Gen {
            root,
            domain,
            range,
            messages,
            size,
            passwd,
            password,
            stored,
            mbox,
        } => {
            let plan = generate::Plan {
                mbox,
                root,
                domain,
                users: range.users(),
                messages,
                size,
                passwd,
                stored: stored.unwrap_or_else(|| format!("{{PLAIN}}{password}")),
            };
            let started = std::time::Instant::now();
            let files = generate::run(&plan)?;
            println!(
                "wrote {} users, {files} messages of {size} octets in {:.1} s",
                plan.users.count,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::RawSender { size } => {
            raw::serve(TcpListener::bind("127.0.0.1:0")?, size)?;
            Ok(())
        }
        Command::Report {
            input,
            subject,
            markdown,
            svg,
            note,
        } => report::run(&input, &subject, &note, markdown.as_deref(), svg.as_deref()),
        command => runtime()?.block_on(run_load(command)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn run_load(command: Command) -> Result<()> {
    let secs = Duration::from_secs_f64;
    let (load, target, fields) = match command {
        Command::Login {
            target,
            range,
            concurrency,
            duration,
            max_cycles,
        } => {
            let f = loads::login(
                target.server(),
                range.users(),
                concurrency,
                secs(duration),
                max_cycles,
            )
            .await?;
            ("login", target, f)
        }
        Command::Lmtp {
            target,
            range,
            size,
            concurrency,
            duration,
        } => {
            let f = loads::lmtp(
                target.addr,
                range.users(),
                size,
                concurrency,
                secs(duration),
                target.server_pid,
            )
            .await?;
            ("lmtp", target, f)
        }
        Command::Retr {
            target,
            users,
            concurrency,
            duration,
        } => {
            let f = loads::retr(
                target.addr,
                users,
                target.password.clone(),
                concurrency,
                secs(duration),
                target.server_pid,
            )
            .await?;
            ("retr", target, f)
        }
        Command::Raw {
            label,
            name,
            json,
            size,
            concurrency,
            duration,
        } => {
            let sender = raw::Sender::start(size)?;
            let addr: SocketAddr = ([127, 0, 0, 1], sender.port).into();
            let users = (0..concurrency).map(|i| format!("raw{i}")).collect();
            let f = loads::retr(
                addr,
                users,
                "pw".into(),
                concurrency,
                secs(duration),
                Some(sender.pid()),
            )
            .await?;
            let target = Target {
                addr,
                server_pid: None,
                label,
                name,
                json,
                password: String::new(),
                max_server_rss_mib: 0,
            };
            ("raw", target, f)
        }
        Command::Idle {
            target,
            range,
            open_concurrency,
            noop_rounds,
            ramp_limit,
        } => {
            let f = loads::idle(
                target.server(),
                range.users(),
                open_concurrency,
                noop_rounds,
                secs(ramp_limit),
            )
            .await?;
            ("idle", target, f)
        }
        Command::Maildrop {
            target,
            user,
            repeat,
        } => {
            let f = loads::maildrop(target.addr, user, target.password.clone(), repeat).await?;
            ("maildrop", target, f)
        }
        Command::Rss { target, user } => {
            let pid = target
                .server_pid
                .context("rss needs --server-pid to read the server's memory")?;
            let f = loads::rss(target.addr, user, target.password.clone(), pid).await?;
            ("rss", target, f)
        }
        Command::Gen { .. } | Command::RawSender { .. } | Command::Report { .. } => {
            bail!("not a load")
        }
    };
    let name = target.name.clone().unwrap_or_else(|| load.to_string());
    let mut object = Map::new();
    object.insert("load".into(), json!(name));
    object.insert("target".into(), json!(target.label));
    object.insert("loadavg_1m".into(), json!(procfs::load_average()));
    object.insert(
        "cores".into(),
        json!(std::thread::available_parallelism().map_or(1, |n| n.get())),
    );
    for (k, v) in fields {
        object.insert(k, v);
    }
    print_table(&object);
    if let Some(path) = &target.json {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        writeln!(file, "{}", Value::Object(object.clone()))?;
    }
    let failed = ["errors", "size_mismatches"]
        .iter()
        .any(|k| object.get(*k).and_then(Value::as_u64).unwrap_or(0) > 0);
    if failed {
        bail!("the run had errors (see first_errors)");
    }
    Ok(())
}

fn print_table(object: &Map<String, Value>) {
    let width = object.keys().map(String::len).max().unwrap_or(0);
    for (k, v) in object {
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!("{k:<width$}  {v}");
    }
    if object.get("generator_saturated") == Some(&Value::Bool(true)) {
        println!("WARNING: the load generator used nearly all its threads' CPU; the server may be faster than this shows");
    }
    println!();
}
