//! The command line: `demo`, `serve`, `check-config`, `user` and `mailbox`.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mailbag::auth::passwd_file::{self, PasswdFile};
use mailbag::auth::scheme::Scheme;
use mailbag::config::Config;
use mailbag::server::Server;
use mailbag::store::maildir::MaildirStore;
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Parser)]
#[command(name = "mailbag", version, about = "A POP3 mail server")]
struct Cli {
    /// The config file.
    #[arg(
        short,
        long,
        global = true,
        env = "MAILBAG_CONFIG",
        default_value = "/etc/mailbag/mailbag.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a ready server on 127.0.0.1:1110 with the user `demo`, password
    /// `demo`, and sample messages (data kept in --dir).
    Demo {
        /// The directory that holds the demo's config, users and mail.
        #[arg(long, default_value = "mailbag-demo")]
        dir: PathBuf,
    },
    /// Run the server from --config.
    Serve {
        /// Write a transcript of every session of this user (repeatable);
        /// adds to `transcript.users`.
        #[arg(long = "transcript-user", value_name = "USER")]
        transcript_users: Vec<String>,
        /// Write a transcript of every session from this client address
        /// (repeatable); adds to `transcript.addresses`.
        #[arg(long = "transcript-address", value_name = "IP")]
        transcript_addresses: Vec<std::net::IpAddr>,
        /// Where transcripts go; overrides `transcript.dir`.
        #[arg(long, value_name = "DIR")]
        transcript_dir: Option<PathBuf>,
    },
    /// Check --config and report the first problem.
    CheckConfig,
    /// Manage the users of the passwd-file named in --config.
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
    /// Look into a user's maildrop and move aside a message that stops
    /// their mail program (refused while a POP3 session holds the lock).
    Mailbox {
        #[command(subcommand)]
        action: mailbag::mailbox::MailboxCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user (the password is prompted for, or read from stdin).
    Add {
        /// The user name (`user` or `user@domain`).
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// The password scheme.
        #[arg(long, default_value = "ARGON2ID")]
        scheme: String,
    },
    /// Change a user's password.
    Passwd {
        /// The user name.
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// The password scheme.
        #[arg(long, default_value = "ARGON2ID")]
        scheme: String,
    },
    /// Delete a user (their mail stays on disk).
    Del {
        /// The user name.
        name: String,
    },
    /// List the users.
    List,
}

/// Runs the command line and maps errors to an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailbag: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo { dir } => {
            let config_path = mailbag::demo::prepare(&dir)
                .with_context(|| format!("cannot prepare the demo directory {}", dir.display()))?;
            let config = load(&config_path)?;
            println!("mailbag demo");
            println!(
                "  data directory: {}",
                config_path.parent().unwrap_or(Path::new(".")).display()
            );
            println!("  config file:    {}", config_path.display());
            for addr in &config.pop3.listen {
                println!("  POP3:           {addr}");
            }
            println!(
                "  user: {}   password: {}",
                mailbag::demo::USER,
                mailbag::demo::PASSWORD
            );
            let first = config.pop3.listen.first().copied();
            if let Some(addr) = first {
                println!();
                println!("Try it:  telnet {} {}", addr.ip(), addr.port());
                println!("then type: USER demo, PASS demo, STAT, LIST, TOP 1 0, RETR 1, QUIT");
            }
            println!(
                "Serve the same data later with: mailbag serve --config {}",
                config_path.display()
            );
            println!("Press Ctrl-C to stop.");
            serve(config)
        }
        Command::Serve {
            transcript_users,
            transcript_addresses,
            transcript_dir,
        } => {
            let mut config = load(&cli.config)?;
            let t = &mut config.transcript;
            t.users.extend(transcript_users);
            t.addresses.extend(transcript_addresses);
            if let Some(dir) = transcript_dir {
                t.dir = Some(std::path::absolute(dir)?);
            }
            config.validate()?;
            serve(config)
        }
        Command::CheckConfig => {
            let config = load(&cli.config)?;
            PasswdFile::open(&config.auth.passwd_file).with_context(|| {
                format!("auth.passwd_file {}", config.auth.passwd_file.display())
            })?;
            println!("{}: OK", cli.config.display());
            Ok(())
        }
        Command::User { action } => user(&cli.config, action),
        Command::Mailbox { action } => {
            let config = load(&cli.config)?;
            Ok(mailbag::mailbox::run(
                &config,
                action,
                &mut std::io::stdout().lock(),
            )?)
        }
    }
}

fn load(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

fn serve(config: Config) -> Result<()> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let passdb = PasswdFile::open(&config.auth.passwd_file)
            .with_context(|| format!("auth.passwd_file {}", config.auth.passwd_file.display()))?;
        let store = MaildirStore::new(
            config.store.root.clone(),
            config.store.path.clone(),
            config.store.default_domain.clone(),
        );
        let server = Server::bind(config, store, passdb).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        server.run(shutdown).await;
        info!("stopped");
        Ok(())
    })
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILBAG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn user(config_path: &Path, action: UserCommand) -> Result<()> {
    let config = load(config_path)?;
    let path = &config.auth.passwd_file;
    match action {
        UserCommand::Add {
            name,
            password_stdin,
            scheme,
        } => {
            check_name(&name)?;
            let scheme: Scheme = parse_scheme(&scheme)?;
            let password = read_password(password_stdin)?;
            passwd_file::add_user(path, &name, password.as_bytes(), scheme)?;
            println!("added {name}");
        }
        UserCommand::Passwd {
            name,
            password_stdin,
            scheme,
        } => {
            let scheme: Scheme = parse_scheme(&scheme)?;
            let password = read_password(password_stdin)?;
            passwd_file::set_password(path, &name, password.as_bytes(), scheme)?;
            println!("password changed for {name}");
        }
        UserCommand::Del { name } => {
            passwd_file::delete_user(path, &name)?;
            println!("deleted {name} (their mail is left in place)");
        }
        UserCommand::List => {
            for name in passwd_file::list_users(path)? {
                println!("{name}");
            }
        }
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    if !passwd_file::valid_user_name(name) {
        bail!("invalid user name {name:?}: use letters, digits and . _ - + with at most one @, no spaces or slashes");
    }
    Ok(())
}

fn parse_scheme(s: &str) -> Result<Scheme> {
    s.parse().map_err(|_| {
        anyhow::anyhow!("unknown password scheme {s:?}; try ARGON2ID, SHA512-CRYPT or BLF-CRYPT")
    })
}

fn read_password(from_stdin: bool) -> Result<String> {
    let password = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Again: ")?;
        if first != second {
            bail!("the two passwords differ");
        }
        first
    };
    if password.is_empty() {
        bail!("empty password refused");
    }
    Ok(password)
}
