//! The command line: `demo`, `serve`, `check-config`, `user`, `deliver`,
//! `mailbox`, `migrate` and `import`.
//!
//! `store.kind` picks the concrete store and passdb (a Maildir with a
//! passwd-file, or PostgreSQL for both); everything after that is generic.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use mailbag::auth::ldap::LdapPassDb;
use mailbag::auth::passwd_file::{self, PasswdFile};
use mailbag::auth::postgres::PgPassDb;
use mailbag::auth::scheme::Scheme;
use mailbag::auth::sql::SqlPassDb;
use mailbag::auth::PassDb;
use mailbag::config::{Config, StoreKind};
use mailbag::privileges::{self, ServiceUser};
use mailbag::server::Server;
use mailbag::store::maildir::MaildirStore;
use mailbag::store::mbox::MboxStore;
use mailbag::store::postgres::cluster::PgClusters;
use mailbag::store::Store;
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

use mailbag::server::tls::Tls;
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "mailbag", version = env!("MAILBAG_VERSION"), about = "A POP3 mail server")]
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
    /// Run a ready server on 127.0.0.1:1110 (POP3) and 127.0.0.1:2424
    /// (LMTP) with the user `demo`, password `demo`, and sample messages
    /// (data kept in --dir).
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
    /// Create or upgrade the PostgreSQL schema (store.kind = "postgres").
    Migrate,
    /// Move one user's maildrop to another PostgreSQL cluster of
    /// [[store.clusters]] while their mail keeps arriving (deliveries
    /// during the move get a temporary failure and are retried, logins get
    /// [IN-USE]). Every message keeps its UIDL. Waits --wait-secs for a
    /// POP3 session of the user to end, then refuses with nothing changed.
    /// A move that stopped part way (killed, a database down) is finished
    /// by running the same command again. Exit codes: 0 moved (or already
    /// there), 1 refused or failed.
    MoveUser {
        /// The canonical user name (as `mailbag user list` shows it).
        name: String,
        /// The name of the cluster to move to, as in store.clusters.
        #[arg(long, value_name = "CLUSTER")]
        to: String,
        /// Seconds to wait for a POP3 session that holds the maildrop.
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
    },
    /// Copy one user's mail from a Maildir or mbox into the configured
    /// store (--from), or from the store out to a Maildir (--to), and
    /// verify counts and octets. Nothing is deleted on either side.
    Import {
        /// The user whose maildrop is filled or read.
        #[arg(long)]
        user: String,
        /// The source: maildir:PATH or mbox:PATH.
        #[arg(long, value_parser = parse_mailbox, conflicts_with = "to", required_unless_present = "to")]
        from: Option<Mailbox>,
        /// The target: maildir:PATH or mbox:PATH (appended to).
        #[arg(long, value_parser = parse_mailbox)]
        to: Option<Mailbox>,
    },
    /// Keep the UIDLs another POP3 server showed (Maildir store): log in
    /// to it as each user, match its messages by content to the user's
    /// messages here, and record the matched UIDLs so that mail programs
    /// that leave mail on the server download nothing again. Nothing is
    /// deleted on the old server. See docs/MIGRATING.md.
    MigrateUidls {
        /// The old server, HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        server: String,
        /// none, stls (RFC 2595, on the plain port) or implicit (RFC 8314,
        /// port 995).
        #[arg(long, default_value = "stls", value_parser = parse_security)]
        tls: mailbag::admin::migrate::Security,
        /// The name the old server's certificate must carry (default: the
        /// host of --server).
        #[arg(long, value_name = "NAME")]
        tls_name: Option<String>,
        /// CA certificates (PEM) to trust for the old server (default: the
        /// system's bundle).
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Log in as each user through this master user.
        #[arg(long, value_name = "NAME", requires = "master_password_file")]
        master_user: Option<String>,
        /// The master user's password, on the file's first line.
        #[arg(long, value_name = "FILE", requires = "master_user")]
        master_password_file: Option<PathBuf>,
        /// How the old server takes a master login: `USER <user><SEP><master>`
        /// (Dovecot's auth_master_user_separator).
        #[arg(long, value_name = "SEP", default_value = "*")]
        master_separator: String,
        /// Name the user as the SASL authorization identity (AUTH PLAIN)
        /// instead of with --master-separator (mailbag's auth.master_users).
        #[arg(long, requires = "master_user")]
        master_authzid: bool,
        /// Each user's own password instead: `user:password` lines.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "master_user",
            required_unless_present = "master_user"
        )]
        passwords_file: Option<PathBuf>,
        /// The users to migrate (repeatable); default: every user of the
        /// passwd-file.
        #[arg(long = "user", value_name = "USER")]
        users: Vec<String>,
        /// Record nothing; report per user how many messages would keep
        /// their UIDL.
        #[arg(long)]
        dry_run: bool,
        /// Messages per maildrop, on either side; a larger one is refused.
        #[arg(long, default_value_t = 100_000)]
        max_messages: usize,
        /// Octets of one message; a larger one is not matched.
        #[arg(long, default_value_t = 64 * 1024 * 1024)]
        max_message_octets: u64,
        /// Seconds each command to the old server may take, whole reply
        /// included.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Manage the users of the passwd-file named in --config (or of the
    /// database, with store.kind = "postgres").
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
    /// Deliver one message from standard input (a local delivery agent
    /// for Postfix `mailbox_command`, procmail or fetchmail's `mda`).
    /// Exit codes: 0 delivered, 64 bad usage, 67 no such user, 73 mailbox
    /// full or message too large, 75 temporary failure (retry later),
    /// 78 unusable config.
    Deliver {
        /// The recipient (`user` or `user@domain`, as in the passwd-file).
        #[arg(long)]
        user: String,
        /// The envelope sender, for the Return-Path header.
        #[arg(long)]
        from: Option<String>,
    },
    /// Look into a user's maildrop and move aside a message that stops
    /// their mail program (refused while a POP3 session holds the lock).
    Mailbox {
        #[command(subcommand)]
        action: mailbag::admin::mailbox::MailboxCommand,
    },
    /// Write mailbag(8), mailbag.toml(5) and the bash, zsh and fish
    /// completions under --out (for packages; see contrib/debian/build).
    #[command(hide = true)]
    GenerateAssets {
        /// The directory to write `man/` and `completions/` into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
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

/// Where `mailbag import` copies from or to: `maildir:PATH` or
/// `mbox:PATH`.
#[derive(Clone, Debug)]
enum Mailbox {
    Maildir(PathBuf),
    Mbox(PathBuf),
}

fn parse_security(s: &str) -> Result<mailbag::admin::migrate::Security, String> {
    use mailbag::admin::migrate::Security;
    match s {
        "none" => Ok(Security::Plain),
        "stls" => Ok(Security::Stls),
        "implicit" => Ok(Security::Implicit),
        _ => Err("none, stls or implicit".into()),
    }
}

fn parse_mailbox(s: &str) -> Result<Mailbox, String> {
    match s.split_once(':') {
        Some(("maildir", path)) if !path.is_empty() => Ok(Mailbox::Maildir(path.into())),
        Some(("mbox", path)) if !path.is_empty() => Ok(Mailbox::Mbox(path.into())),
        _ => Err("expected maildir:PATH or mbox:PATH".into()),
    }
}

/// Runs the command line and maps errors to an exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // sysexits EX_USAGE, which `deliver`'s callers understand.
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mailbag: {e:#}");
            let denied = e.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
            });
            if let Some(note) =
                permission_note(denied || format!("{e:#}").contains("ermission denied"))
            {
                eprintln!("{note}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Who a command switched to (started as root with `[server] user`), and
/// the config that said so, for the hint after a permission error.
static SWITCHED: OnceLock<(ServiceUser, PathBuf)> = OnceLock::new();

/// Started as root, becomes the server's user for the rest of the
/// process, or refuses (see `privileges::for_command`).
fn become_server_user(config: &Config, path: &Path, command: &'static str) -> Result<()> {
    if let Some(who) = privileges::for_command(config, path, command)? {
        let _ = SWITCHED.set((who, path.to_path_buf()));
    }
    Ok(())
}

/// After a permission error in a command that switched users: says as
/// whom it ran and what to do.
fn permission_note(denied: bool) -> Option<String> {
    let (who, config) = SWITCHED.get().filter(|_| denied)?;
    Some(format!(
        "mailbag: note: started as root, this command ran as {} ([server] user in {}), as the server \
         does, so that every file it creates belongs to the server; give {} access to the path \
         named above (chown/chmod, or a copy it can read), or run the command as a user who has \
         it",
        who.owner(),
        config.display(),
        who.user
    ))
}

fn run(cli: Cli) -> Result<ExitCode> {
    let done: Result<()> = match cli.command {
        // Its own exit codes, for the MTA that runs it.
        Command::Deliver { user, from } => return Ok(deliver(&cli.config, &user, from.as_deref())),
        Command::Demo { dir } => {
            // The demo runs as whoever starts it (the README's first
            // command, also in a root shell): it serves only the sample
            // mail it made itself, on loopback.
            let config_path = mailbag::admin::demo::prepare(&dir)
                .with_context(|| format!("cannot prepare the demo directory {}", dir.display()))?;
            let config = load(&config_path)?;
            println!("mailbag demo");
            println!(
                "  data directory: {}",
                config_path.parent().unwrap_or(Path::new(".")).display()
            );
            println!("  config file:    {}", config_path.display());
            for addr in &config.pop3.listen {
                println!("  POP3 (STLS):    {addr}");
            }
            for addr in &config.pop3.listen_tls {
                println!("  POP3S:          {addr}");
            }
            for addr in &config.lmtp.listen {
                println!("  LMTP:           {addr}");
            }
            println!(
                "  user: {}   password: {}",
                mailbag::admin::demo::USER,
                mailbag::admin::demo::PASSWORD
            );
            let first = config.pop3.listen.first().copied();
            if let Some(addr) = first {
                println!();
                println!("Try it:  telnet {} {}", addr.ip(), addr.port());
                println!("then type: USER demo, PASS demo, STAT, LIST, TOP 1 0, RETR 1, QUIT");
                println!(
                    "Or over TLS (self-signed certificate):  openssl s_client -connect {addr} -starttls pop3"
                );
            }
            if let Some(addr) = config.pop3.listen_tls.first() {
                println!("                                        curl --insecure pop3s://demo:demo@{addr}/1");
            }
            if let Some(addr) = config.lmtp.listen.first() {
                println!();
                println!("Send it a message over LMTP:");
                println!(
                    "  swaks --server {addr} --protocol LMTP --to {}@localhost",
                    mailbag::admin::demo::USER
                );
            }
            println!(
                "Serve the same data later with: mailbag serve --config {}",
                config_path.display()
            );
            println!("Press Ctrl-C to stop.");
            // The demo runs as whoever starts it.
            let path = config_path.clone();
            serve(config, &path, None, Box::new(move || load(&config_path)))
        }
        Command::Serve {
            transcript_users,
            transcript_addresses,
            transcript_dir,
        } => {
            let transcript_dir = transcript_dir.map(std::path::absolute).transpose()?;
            // The command line's additions apply again at every reload.
            let path = cli.config.clone();
            let load_with_flags = move || -> Result<Config> {
                let mut config = load(&path)?;
                let t = &mut config.transcript;
                t.users.extend(transcript_users.iter().cloned());
                t.addresses.extend(transcript_addresses.iter().copied());
                if let Some(dir) = &transcript_dir {
                    t.dir = Some(dir.clone());
                }
                config.validate()?;
                Ok(config)
            };
            let config = load_with_flags()?;
            let service = privileges::for_serve(&config, &cli.config)?;
            serve(config, &cli.config, service, Box::new(load_with_flags))
        }
        Command::CheckConfig => {
            let config = load(&cli.config)?;
            let external = external_passdb(&config, None)?.is_some();
            match config.store.kind {
                StoreKind::Maildir | StoreKind::Mbox if external => {}
                StoreKind::Maildir | StoreKind::Mbox
                    if config.auth.kind == mailbag::config::AuthKind::Pam =>
                {
                    check_pam(&config)?;
                }
                StoreKind::Maildir | StoreKind::Mbox => {
                    passwd_file_of(&config).with_context(|| {
                        format!("auth.passwd_file {}", config.auth.passwd_file.display())
                    })?;
                }
                StoreKind::Postgres => runtime()?.block_on(async {
                    pg_store(&config)?
                        .check_schema()
                        .await
                        .with_context(|| format!("{}: database check failed", pg_setting(&config)))
                })?,
            }
            if let Some(tls) = &config.tls {
                Tls::load(&tls.certificate, &tls.key)?;
            }
            check_access(&config, &cli.config)?;
            println!("{}: OK", cli.config.display());
            Ok(())
        }
        Command::User { action } => user(&cli.config, action),
        Command::GenerateAssets { out } => crate::assets::generate(Cli::command(), &out),
        Command::Mailbox { action } => {
            let config = load(&cli.config)?;
            become_server_user(&config, &cli.config, "mailbox")?;
            let out = &mut std::io::stdout().lock();
            match config.store.kind {
                StoreKind::Maildir => Ok(mailbag::admin::mailbox::run(&config, action, out)?),
                StoreKind::Mbox => {
                    let store = mbox_store(&config)?;
                    let done = mailbag::admin::mailbox::run_mbox(&store, &config, action, out);
                    Ok(runtime()?.block_on(done)?)
                }
                StoreKind::Postgres => {
                    let store = pg_store(&config)?;
                    let done = mailbag::admin::mailbox::run_with(&store, &config, action, out);
                    Ok(runtime()?.block_on(done)?)
                }
            }
        }
        Command::Migrate => {
            let config = load(&cli.config)?;
            become_server_user(&config, &cli.config, "migrate")?;
            migrate(&config)
        }
        Command::MoveUser {
            name,
            to,
            wait_secs,
        } => {
            let config = load(&cli.config)?;
            become_server_user(&config, &cli.config, "move-user")?;
            move_user(&config, &name, &to, wait_secs)
        }
        Command::Import { user, from, to } => {
            let config = load(&cli.config)?;
            become_server_user(&config, &cli.config, "import")?;
            import(&config, &user, from, to)
        }
        Command::MigrateUidls {
            server,
            tls,
            tls_name,
            ca_file,
            master_user,
            master_password_file,
            master_separator,
            master_authzid,
            passwords_file,
            users,
            dry_run,
            max_messages,
            max_message_octets,
            timeout_secs,
        } => {
            use mailbag::admin::migrate::{self, Limits, Login, Source};
            let config = load(&cli.config)?;
            if config.store.kind != StoreKind::Maildir {
                bail!(
                    "migrate-uidls records UIDLs in Maildirs (store.kind = \"maildir\"); \
                     for PostgreSQL, migrate into a Maildir store and `mailbag import` it"
                );
            }
            // Files the administrator names are read before privileges go.
            let login = match (master_user, master_password_file, passwords_file) {
                (Some(master), Some(file), _) => {
                    let password = migrate::read_password(&file).map_err(anyhow::Error::msg)?;
                    if master_authzid {
                        Login::MasterAuthzid { master, password }
                    } else {
                        Login::MasterSeparator {
                            master,
                            separator: master_separator,
                            password,
                        }
                    }
                }
                (None, _, Some(file)) => {
                    Login::Passwords(migrate::read_passwords(&file).map_err(anyhow::Error::msg)?)
                }
                _ => bail!("give --master-user with --master-password-file, or --passwords-file"),
            };
            become_server_user(&config, &cli.config, "migrate-uidls")?;
            let users = if users.is_empty() {
                passwd_file::list_users(&config.auth.passwd_file)?
            } else {
                users
            };
            let source = Source {
                server,
                security: tls,
                tls_name,
                ca_file,
            };
            let limits = Limits {
                max_messages,
                max_message_octets,
                timeout: std::time::Duration::from_secs(timeout_secs.max(1)),
            };
            let store = maildir_store(&config);
            let failed = runtime()?.block_on(async {
                let mut failed = 0;
                for user in &users {
                    let report =
                        migrate::migrate_user(&store, &source, &login, limits, user, dry_run).await;
                    if report.error.is_some() {
                        failed += 1;
                    }
                    println!("{report}");
                }
                failed
            });
            if failed > 0 {
                bail!("{failed} of {} users not migrated", users.len());
            }
            Ok(())
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// `mailbag deliver`: every outcome is an exit code an MTA understands,
/// and a failure is one line on standard error.
fn deliver(config_path: &Path, user: &str, from: Option<&str>) -> ExitCode {
    use mailbag::store::deliver::Exit;
    let fail = |exit: Exit, reason: &dyn std::fmt::Display| {
        let reason = reason.to_string();
        eprintln!("mailbag deliver: {reason}");
        if let Some(note) = permission_note(reason.contains("ermission denied")) {
            eprintln!("{note}");
        }
        ExitCode::from(exit.code())
    };
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(e) => return fail(Exit::Config, &e),
    };
    match privileges::for_command(&config, config_path, "deliver") {
        Ok(Some(who)) => {
            let _ = SWITCHED.set((who, config_path.to_path_buf()));
        }
        Ok(None) => {}
        // The system call failed: keep the mail queued and retry.
        Err(e @ privileges::PrivilegeError::Switch { .. }) => return fail(Exit::TempFail, &e),
        Err(e) => return fail(Exit::Config, &e),
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(Exit::TempFail, &e),
    };
    let stdin = std::io::stdin().lock();
    let external = match external_passdb(&config, None) {
        Ok(external) => external,
        Err(e) => return fail(Exit::Config, &e),
    };
    if let Some(external) = external {
        let delivered = match config.store.kind {
            StoreKind::Maildir => {
                let store = maildir_store(&config);
                runtime.block_on(deliver_external(
                    &config, &store, external, user, from, stdin,
                ))
            }
            StoreKind::Mbox => match mbox_store(&config) {
                Ok(store) => runtime.block_on(deliver_external(
                    &config, &store, external, user, from, stdin,
                )),
                Err(e) => return fail(Exit::Config, &e),
            },
            StoreKind::Postgres => match pg_store(&config) {
                Ok(store) => runtime.block_on(deliver_external(
                    &config, &store, external, user, from, stdin,
                )),
                Err(e) => return fail(Exit::Config, &e),
            },
        };
        return match delivered {
            Ok(_) => ExitCode::SUCCESS,
            Err(refused) => fail(refused.exit, &refused.reason),
        };
    }
    if config.auth.kind == mailbag::config::AuthKind::Pam {
        // The machine's accounts: the recipient is checked as a PAM login
        // is (getpwnam, auth.pam.min_uid), and no passwd-file is opened.
        let passdb = mailbag::auth::system::SystemAccounts::new(config.auth.pam.min_uid);
        let delivered = match config.store.kind {
            StoreKind::Maildir => runtime.block_on(mailbag::store::deliver::run(
                &config,
                &maildir_store(&config),
                &passdb,
                user,
                from,
                stdin,
            )),
            StoreKind::Mbox => match mbox_store(&config) {
                Ok(store) => runtime.block_on(mailbag::store::deliver::run(
                    &config, &store, &passdb, user, from, stdin,
                )),
                Err(e) => return fail(Exit::Config, &e),
            },
            StoreKind::Postgres => {
                return fail(
                    Exit::Config,
                    &"auth.kind = \"pam\" needs the Maildir or mbox store",
                )
            }
        };
        return match delivered {
            Ok(_) => ExitCode::SUCCESS,
            Err(refused) => fail(refused.exit, &refused.reason),
        };
    }
    let delivered = match config.store.kind {
        StoreKind::Maildir => {
            let passdb = match passwd_file_of(&config) {
                Ok(passdb) => passdb,
                // Keep the mail queued while the passwd-file is fixed.
                Err(e) => return fail(Exit::TempFail, &e),
            };
            let store = maildir_store(&config);
            runtime.block_on(mailbag::store::deliver::run(
                &config, &store, &passdb, user, from, stdin,
            ))
        }
        StoreKind::Mbox => {
            let passdb = match PasswdFile::open(&config.auth.passwd_file) {
                Ok(passdb) => passdb,
                Err(e) => return fail(Exit::TempFail, &e),
            };
            let store = match mbox_store(&config) {
                Ok(store) => store,
                Err(e) => return fail(Exit::Config, &e),
            };
            runtime.block_on(mailbag::store::deliver::run(
                &config, &store, &passdb, user, from, stdin,
            ))
        }
        StoreKind::Postgres => {
            let store = match pg_store(&config) {
                Ok(store) => store,
                Err(e) => return fail(Exit::Config, &e),
            };
            runtime.block_on(async {
                let passdb = PgPassDb::new(Arc::clone(store.pool()))
                    .await
                    .with_case_insensitive_names(config.auth.case_insensitive_names);
                mailbag::store::deliver::run(&config, &store, &passdb, user, from, stdin).await
            })
        }
    };
    match delivered {
        Ok(_) => ExitCode::SUCCESS,
        Err(refused) => fail(refused.exit, &refused.reason),
    }
}

fn load(path: &Path) -> Result<Config> {
    load_config(path)
}

/// Reads the config; started as root, only one that no one but root
/// could have written (see `privileges::read_trusted_config`).
fn load_config(path: &Path) -> Result<Config> {
    let Some(text) = privileges::read_trusted_config(path)? else {
        return Ok(Config::load(path)?);
    };
    let base = path.parent().unwrap_or(Path::new("."));
    Config::parse(&text, base)
        .map_err(|e| match e {
            mailbag::config::ConfigError::Parse { message, .. } => {
                mailbag::config::ConfigError::Parse {
                    path: path.to_path_buf(),
                    message,
                }
            }
            other => other,
        })
        .map_err(Into::into)
}

/// Reads the configuration again, for SIGHUP.
type Reload = Box<dyn Fn() -> Result<Config> + Send + Sync>;

/// Runs the server; `service` is the account to become once the ports
/// are bound (started as root), checked by `privileges::for_serve`.
fn serve(
    config: Config,
    config_path: &Path,
    service: Option<ServiceUser>,
    reload: Reload,
) -> Result<()> {
    init_logging(config.log.format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        if config.auth.kind == mailbag::config::AuthKind::Pam {
            return serve_pam(config, config_path, service, reload).await;
        }
        if let Some(external) =
            external_passdb(&config, Some(server_secret(&config, service.as_ref())?))?
        {
            return match config.store.kind {
                StoreKind::Maildir => {
                    let store = maildir_store(&config);
                    serve_external(config, config_path, service, store, external, reload).await
                }
                StoreKind::Mbox => {
                    let store = mbox_store(&config)?;
                    serve_external(config, config_path, service, store, external, reload).await
                }
                StoreKind::Postgres => {
                    let store = pg_store(&config)?;
                    store.check_schema().await.with_context(|| {
                        format!("{}: cannot use the database", pg_setting(&config))
                    })?;
                    store
                        .check_session_bound()
                        .await
                        .context(pg_setting(&config))?;
                    serve_external(config, config_path, service, store, external, reload).await
                }
            };
        }
        match config.store.kind {
            StoreKind::Maildir => {
                let passdb = PasswdFile::open_with_names(
                    &config.auth.passwd_file,
                    mailbag::auth::cache::VerifiedCache::from_config(&config.auth),
                    server_secret(&config, service.as_ref())?,
                    config.auth.case_insensitive_names,
                )
                .with_context(|| format!("auth.passwd_file {}", config.auth.passwd_file.display()))?
                .with_rehash(config.auth.rehash_scheme());
                let store = maildir_store(&config);
                serve_with(config, config_path, service, store, passdb, reload).await
            }
            StoreKind::Mbox => {
                let passdb = PasswdFile::open_with_names(
                    &config.auth.passwd_file,
                    mailbag::auth::cache::VerifiedCache::from_config(&config.auth),
                    server_secret(&config, service.as_ref())?,
                    config.auth.case_insensitive_names,
                )
                .with_context(|| format!("auth.passwd_file {}", config.auth.passwd_file.display()))?
                .with_rehash(config.auth.rehash_scheme());
                let store = mbox_store(&config)?;
                serve_with(config, config_path, service, store, passdb, reload).await
            }
            StoreKind::Postgres => {
                let store = pg_store(&config)?;
                store
                    .check_schema()
                    .await
                    .with_context(|| format!("{}: cannot use the database", pg_setting(&config)))?;
                store
                    .check_session_bound()
                    .await
                    .context(pg_setting(&config))?;
                let passdb = PgPassDb::new(Arc::clone(store.pool()))
                    .await
                    .with_cache(mailbag::auth::cache::VerifiedCache::from_config(
                        &config.auth,
                    ))
                    .with_secret(server_secret(&config, service.as_ref())?)
                    .with_case_insensitive_names(config.auth.case_insensitive_names)
                    .with_rehash(config.auth.rehash_scheme());
                serve_with(config, config_path, service, store, passdb, reload).await
            }
        }
    })
}

/// For check-config: PAM is built in and its service file is there
/// (without it libpam uses `/etc/pam.d/other`, whatever that allows).
fn check_pam(config: &Config) -> Result<()> {
    if !cfg!(feature = "pam") {
        bail!(
            "auth.kind = \"pam\": this mailbag was built without PAM (cargo build --features pam)"
        );
    }
    let file = Path::new("/etc/pam.d").join(&config.auth.pam.service);
    if !file.is_file() {
        bail!(
            "auth.pam.service: {} does not exist; install contrib/pam.d/mailbag there",
            file.display()
        );
    }
    Ok(())
}

/// The server on the machine's own accounts (`auth.kind = "pam"`).
#[cfg(feature = "pam")]
async fn serve_pam(
    config: Config,
    config_path: &Path,
    service: Option<ServiceUser>,
    reload: Reload,
) -> Result<()> {
    let pam = &config.auth.pam;
    let passdb = mailbag::auth::pam::PamPassDb::new(
        &pam.service,
        pam.min_uid,
        std::time::Duration::from_secs(pam.timeout_secs),
    );
    match config.store.kind {
        StoreKind::Maildir => {
            let store = maildir_store(&config);
            serve_with(config, config_path, service, store, passdb, reload).await
        }
        StoreKind::Mbox => {
            let store = mbox_store(&config)?;
            serve_with(config, config_path, service, store, passdb, reload).await
        }
        StoreKind::Postgres => bail!("auth.kind = \"pam\" needs the Maildir or mbox store"),
    }
}

/// Without PAM support built in, `auth.kind = "pam"` cannot start.
#[cfg(not(feature = "pam"))]
async fn serve_pam(
    _config: Config,
    _config_path: &Path,
    _service: Option<ServiceUser>,
    _reload: Reload,
) -> Result<()> {
    bail!("auth.kind = \"pam\": this mailbag was built without PAM (cargo build --features pam)")
}

/// The server secret, made now if there is none; started as root, a new
/// one belongs to the user the server becomes, who must read it at every
/// later start (`check_server_paths` reports one it cannot read).
fn server_secret(
    config: &Config,
    service: Option<&ServiceUser>,
) -> Result<mailbag::auth::secret::ServerSecret> {
    let owner = service
        .filter(|_| nix::unistd::geteuid().is_root())
        .map(|who| (who.target.uid.as_raw(), who.target.gid.as_raw()));
    Ok(mailbag::auth::secret::ServerSecret::load_or_create_owned(
        &config.auth.secret_file,
        owner,
    )?)
}

/// `[auth.ldap]` or `[auth.sql]`, when the config names one.
enum ExternalPassDb {
    Ldap(LdapPassDb),
    Sql(SqlPassDb),
}

/// The passdb that `[auth.ldap]` or `[auth.sql]` names (with the server
/// secret when serving), or `None` when users are mailbag's own.
fn external_passdb(
    config: &Config,
    secret: Option<mailbag::auth::secret::ServerSecret>,
) -> Result<Option<ExternalPassDb>> {
    let secret = secret.unwrap_or_else(mailbag::auth::secret::ServerSecret::random);
    let cache = || mailbag::auth::cache::VerifiedCache::from_config(&config.auth);
    if let Some(ldap) = &config.auth.ldap {
        let passdb = LdapPassDb::new(ldap)?
            .with_cache(cache())
            .with_secret(secret)
            .with_case_insensitive_names(config.auth.case_insensitive_names);
        return Ok(Some(ExternalPassDb::Ldap(passdb)));
    }
    if let Some(sql) = &config.auth.sql {
        let passdb = SqlPassDb::new(sql)?
            .with_cache(cache())
            .with_secret(secret)
            .with_case_insensitive_names(config.auth.case_insensitive_names);
        return Ok(Some(ExternalPassDb::Sql(passdb)));
    }
    Ok(None)
}

/// `mailbag deliver` with `[auth.ldap]` or `[auth.sql]`.
async fn deliver_external<S: Store>(
    config: &Config,
    store: &S,
    passdb: ExternalPassDb,
    user: &str,
    from: Option<&str>,
    input: impl std::io::Read,
) -> Result<String, mailbag::store::deliver::Refused> {
    use mailbag::store::deliver::run;
    match passdb {
        ExternalPassDb::Ldap(p) => run(config, store, &p, user, from, input).await,
        ExternalPassDb::Sql(p) => run(config, store, &p, user, from, input).await,
    }
}

async fn serve_external<S: Store>(
    config: Config,
    config_path: &Path,
    service: Option<ServiceUser>,
    store: S,
    passdb: ExternalPassDb,
    reload: Reload,
) -> Result<()> {
    match passdb {
        ExternalPassDb::Ldap(p) => serve_with(config, config_path, service, store, p, reload).await,
        ExternalPassDb::Sql(p) => serve_with(config, config_path, service, store, p, reload).await,
    }
}

/// The server on any store and passdb.
async fn serve_with<S: Store, P: PassDb>(
    config: Config,
    config_path: &Path,
    service: Option<ServiceUser>,
    store: S,
    passdb: P,
    reload: Reload,
) -> Result<()> {
    let socket = config.lmtp.socket.clone();
    let checked = config.clone();
    let server = Server::bind(config, store, passdb).await?;
    // Ports are bound: from here on, no root.
    if let Some(who) = &service {
        let (user, target) = (&who.user, who.target);
        if let Some(path) = &socket {
            if nix::unistd::geteuid().is_root() {
                privileges::give(path, target)
                    .with_context(|| format!("cannot hand {} to {user}", path.display()))?;
            }
        }
        privileges::drop_to(user, target)?;
        info!(user = %user, "running as {user}");
    }
    // What the server re-reads from now on (on SIGHUP, when users
    // change) must be readable now, not fail silently months later.
    let problems = privileges::check_server_paths(&checked, config_path, &ServiceUser::current());
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("mailbag: {problem}");
        }
        bail!(
            "refusing to start: the server's user cannot use {} of the files it needs after start-up (listed above)",
            problems.len()
        );
    }
    let shutdown = CancellationToken::new();
    let shared = server.shared();
    let reload_config = move || match reload() {
        Ok(config) => {
            shared.reload(config);
            info!("SIGHUP: configuration reloaded (limits, timeouts, transcripts, quotas; listeners need a restart)");
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "SIGHUP: configuration not reloaded; keeping the old one")
        }
    };
    tokio::spawn(signals(shutdown.clone(), server.tls(), reload_config));
    server.run(shutdown).await;
    info!("stopped");
    Ok(())
}

fn maildir_store(config: &Config) -> MaildirStore {
    MaildirStore::new(
        config.store.root.clone(),
        config.store.path.clone(),
        config.store.default_domain.clone(),
    )
    .with_uidl_sources(config.store.uidl_sources())
}

fn mbox_store(config: &Config) -> Result<MboxStore> {
    Ok(
        MboxStore::new(&config.store.mbox.path, config.store.mbox.lock_options())
            .map_err(|e| anyhow::anyhow!("store.mbox.path: {e}"))?
            .with_quarantine(config.store.mbox.quarantine_dir.clone()),
    )
}

/// The PostgreSQL store: `store.url`'s database, or `store.clusters`
/// with their directory.
fn pg_store(config: &Config) -> Result<PgClusters> {
    Ok(PgClusters::from_config(&config.store)?)
}

/// The setting that names the PostgreSQL databases, for messages.
fn pg_setting(config: &Config) -> &'static str {
    if config.store.clusters.is_empty() {
        "store.url"
    } else {
        "store.clusters"
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn migrate(config: &Config) -> Result<()> {
    if config.store.kind != StoreKind::Postgres {
        bail!("store.kind is not \"postgres\": a Maildir store needs no migration");
    }
    runtime()?.block_on(async {
        // Each database migrates in one transaction of its own; a
        // failure leaves the ones before it migrated, which a second run
        // finds current.
        let databases = pg_store(config)?.migrate().await.with_context(|| {
            format!(
                "{}: migration failed (nothing was changed in that database)",
                pg_setting(config)
            )
        })?;
        for (label, applied) in databases {
            let on = if label.is_empty() {
                String::new()
            } else {
                format!(" on {label}")
            };
            if applied.is_empty() {
                println!(
                    "schema is current (version {}){on}",
                    mailbag::store::postgres::schema::LATEST
                );
            } else {
                for version in applied {
                    println!("applied migration {version}{on}");
                }
            }
        }
        Ok(())
    })
}

fn move_user(config: &Config, user: &str, to: &str, wait_secs: u64) -> Result<()> {
    use mailbag::admin::move_user::{move_user, MoveOptions};
    if config.store.kind != StoreKind::Postgres {
        bail!("store.kind is not \"postgres\": move-user moves between PostgreSQL clusters");
    }
    let options = MoveOptions {
        wait: std::time::Duration::from_secs(wait_secs.min(3600)),
        // For tests of resuming: stop as if killed after this step.
        stop_after: std::env::var("MAILBAG_MOVE_STOP_AFTER")
            .ok()
            .and_then(|s| s.parse().ok()),
        batch_messages: 0,
    };
    runtime()?.block_on(async {
        let store = pg_store(config)?;
        store.check_schema().await.context("store.clusters")?;
        let moved = move_user(&store, user, to, &options).await?;
        match moved.from {
            Some(from) => println!(
                "moved {user} from {from} to {}: {} messages ({} octets)",
                moved.to, moved.messages, moved.octets
            ),
            None => println!("{user} is on {} already", moved.to),
        }
        Ok(())
    })
}

fn import(config: &Config, user: &str, from: Option<Mailbox>, to: Option<Mailbox>) -> Result<()> {
    let runtime = runtime()?;
    match config.store.kind {
        StoreKind::Maildir => runtime.block_on(import_with(
            &maildir_store(config),
            &config.store.uidl_sources(),
            user,
            from,
            to,
        )),
        StoreKind::Mbox => runtime.block_on(import_with(
            &mbox_store(config)?,
            &config.store.uidl_sources(),
            user,
            from,
            to,
        )),
        StoreKind::Postgres => {
            let store = pg_store(config)?;
            runtime.block_on(async {
                store.check_schema().await.context(pg_setting(config))?;
                import_with(&store, &config.store.uidl_sources(), user, from, to).await
            })
        }
    }
}

async fn import_with<S: mailbag::admin::import::UidlTarget>(
    store: &S,
    sources: &mailbag::store::maildir::UidlSources,
    user: &str,
    from: Option<Mailbox>,
    to: Option<Mailbox>,
) -> Result<()> {
    use mailbag::admin::import;
    let copied = match (from, to) {
        (Some(Mailbox::Maildir(dir)), None) => {
            let files = import::read_maildir(&dir)?;
            // Each message keeps the UIDL mailbag would show for it there.
            let uidl = import::maildir_uidls(&dir, sources)?;
            import::into_store(store, user, &files, |p| import::read_message(p), uidl).await?
        }
        (Some(Mailbox::Mbox(file)), None) => {
            // Read as it is copied: one message in memory at a time.
            let read_error = |source| import::ImportError::Read {
                path: file.clone(),
                source,
            };
            // qpopper's spools carry each message's UIDL in its X-UIDL.
            let x_uidl = sources.x_uidl;
            let messages = import::mbox_messages(&file)?.map(|m| {
                let m = m.map_err(read_error)?;
                let uidl = x_uidl
                    .then(|| mailbag::store::maildir::parse_x_uidl(&m))
                    .flatten();
                Ok((m, uidl))
            });
            import::into_store_from(store, user, messages, None).await?
        }
        (None, Some(Mailbox::Maildir(dir))) => import::out_to_maildir(store, user, &dir).await?,
        (None, Some(Mailbox::Mbox(file))) => import::out_to_mbox(store, user, &file).await?,
        _ => bail!("give one of --from or --to"),
    };
    println!(
        "copied and verified {} messages ({} octets)",
        copied.messages, copied.octets
    );
    // On standard error: the result line above stays the one line a
    // script reads.
    if copied.uidls_kept < copied.messages && copied.uidls_kept > 0 {
        eprintln!(
            "{} of them kept their UIDL; the others got new ones (clients that keep mail on the server download those again)",
            copied.uidls_kept
        );
    } else if copied.uidls_kept > 0 {
        eprintln!("every message kept its UIDL");
    }
    Ok(())
}

async fn pg_user(config: &Config, action: UserCommand) -> Result<()> {
    let store = pg_store(config)?;
    store.check_schema().await.context(pg_setting(config))?;
    let db = PgPassDb::new(Arc::clone(store.pool())).await;
    match action {
        UserCommand::Add {
            name,
            password_stdin,
            scheme,
        } => {
            check_name(&name)?;
            // A name that logins and delivery take for an existing user
            // (`Alice@<default_domain>` beside `alice`) would be a second
            // user getting that user's mail.
            let names = mailbag::auth::name::Matching::from_config(config);
            if let Some(other) = names.resolve(&db, &name).await? {
                if other != name {
                    bail!(
                        "{name} is another spelling of the existing user {other}: with \
                         auth.case_insensitive_names = {} and store.default_domain = {:?}, \
                         logins and mail for either go to one user; give {other} a new \
                         password with `mailbag user passwd {other}` instead, or choose \
                         another name",
                        config.auth.case_insensitive_names,
                        config.store.default_domain
                    );
                }
            }
            let scheme = parse_scheme(&scheme)?;
            let password = read_password(password_stdin)?;
            db.add_user(&name, password.as_bytes(), scheme).await?;
            println!("added {name}");
        }
        UserCommand::Passwd {
            name,
            password_stdin,
            scheme,
        } => {
            let scheme = parse_scheme(&scheme)?;
            let password = read_password(password_stdin)?;
            db.set_password(&name, password.as_bytes(), scheme).await?;
            println!("password changed for {name}");
        }
        UserCommand::Del { name } => {
            db.delete_user(&name).await?;
            println!("deleted {name} (their mail is left in place)");
        }
        UserCommand::List => {
            for name in db.list_users().await? {
                println!("{name}");
            }
        }
    }
    Ok(())
}

async fn signals(
    shutdown: CancellationToken,
    tls: Option<Arc<Tls>>,
    reload_config: impl Fn() + Send + 'static,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                // Users need nothing: the passwd-file is re-read when it
                // changes.
                reload_config();
                // New handshakes get the new certificate; sessions go on.
                if let Some(tls) = &tls {
                    match tls.reload() {
                        Ok(()) => info!("SIGHUP: TLS certificate reloaded"),
                        Err(e) => warn!(error = %e, "SIGHUP: TLS certificate not reloaded; keeping the old one"),
                    }
                }
            }
        }
    }
    shutdown.cancel();
}

fn init_logging(format: mailbag::config::LogFormat) {
    let filter = mailbag::server::tls::log_filter(std::env::var("MAILBAG_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // One object per line; the session span's fields (id, peer) ride
        // along in `span` and `spans`.
        mailbag::config::LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        // Colour codes would break log parsers such as fail2ban.
        mailbag::config::LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

fn user(config_path: &Path, action: UserCommand) -> Result<()> {
    let config = load(config_path)?;
    become_server_user(&config, config_path, "user")?;
    if config.store.kind == StoreKind::Postgres {
        return runtime()?.block_on(pg_user(&config, action));
    }
    let path = &config.auth.passwd_file;
    if let (Some((who, _)), false) = (SWITCHED.get(), matches!(action, UserCommand::List)) {
        if let Some(problem) = privileges::check_passwd_rewrite(path, who) {
            bail!(
                "{problem}\n(started as root, `mailbag user` runs as {} from [server] user, so that the \
                 passwd-file stays the server's)",
                who.owner()
            );
        }
    }
    match action {
        UserCommand::Add {
            name,
            password_stdin,
            scheme,
        } => {
            check_name(&name)?;
            refuse_shared_maildrop(&config, &name)?;
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

/// Refuses a new user whose Maildir would be an existing user's: with
/// the default template, `alice` and `alice@<default_domain>` name one
/// maildrop, and a second password for it would open the first user's
/// mail to whoever holds it.
fn refuse_shared_maildrop(config: &Config, name: &str) -> Result<()> {
    let store = maildir_store(config);
    let Ok(maildir) = store.maildir_path(name) else {
        return Ok(());
    };
    // No passwd-file yet (the first user): no one to share with. Any
    // other trouble with the file is reported by the add itself.
    let Ok(users) = passwd_file::list_users(&config.auth.passwd_file) else {
        return Ok(());
    };
    // Refused too: a name logins and delivery take for an existing user (letter
    // case, the default domain): `Alice@<default_domain>` beside `alice`
    // would get mail for alice@<default_domain> in a Maildir of its own.
    let names = mailbag::auth::name::Matching::from_config(config);
    let key = names.key(name);
    for other in users {
        if other != name && store.maildir_path(&other).is_ok_and(|p| p == maildir) {
            bail!(
                "{name} would share the maildrop of the existing user {other} ({}): \
                 with store.default_domain = {:?} they name one Maildir; give {other} a new \
                 password with `mailbag user passwd {other}` instead, or choose another name",
                maildir.display(),
                config.store.default_domain
            );
        }
        if other != name && names.key(&other) == key {
            bail!(
                "{name} is another spelling of the existing user {other}: with \
                 auth.case_insensitive_names = {} and store.default_domain = {:?}, logins \
                 and mail for either go to one user; give {other} a new password with \
                 `mailbag user passwd {other}` instead, or choose another name",
                config.auth.case_insensitive_names,
                config.store.default_domain
            );
        }
    }
    Ok(())
}

/// The passwd-file as `config` matches names, without the cache or the
/// server secret (for commands that check or deliver, not log in).
fn passwd_file_of(config: &Config) -> Result<PasswdFile, passwd_file::PasswdError> {
    PasswdFile::open_with_names(
        &config.auth.passwd_file,
        None,
        mailbag::auth::secret::ServerSecret::random(),
        config.auth.case_insensitive_names,
    )
}

fn check_name(name: &str) -> Result<()> {
    Ok(mailbag::auth::name::check(name)?)
}

fn parse_scheme(s: &str) -> Result<Scheme> {
    s.parse().map_err(|_| {
        anyhow::anyhow!(
            "unknown password scheme {s:?}; try ARGON2ID, SHA512-CRYPT, BLF-CRYPT or SCRAM-SHA-256"
        )
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

/// How deep and how far `check-config` looks under the mail root: a
/// message is at `{root}/{domain}/{user}/Maildir/cur/<file>` (depth 5),
/// and a large server's store is not walked whole.
const WALK_DEPTH: usize = 6;
const WALK_ENTRIES: usize = 200_000;
const WALK_SHOWN: usize = 20;

/// `check-config`: can the server's user use what the server re-reads
/// after dropping root, and everything under the mail root? Checked as
/// that user (started as root, with its ids for the moment), else as the
/// process itself.
fn check_access(config: &Config, config_path: &Path) -> Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let who = match &config.server.user {
        Some(user) => ServiceUser::lookup(user, config.server.group.as_deref())?,
        None if root => {
            // A service manager may start the server as its own user;
            // started as root, it refuses.
            println!(
                "note: [server] user is not set: started as root, `mailbag serve` refuses to run \
                 and `mailbag user|mailbox|import|deliver` refuse to touch mail; access was not \
                 checked. Set [server] user (and group) to the account the server runs as."
            );
            return Ok(());
        }
        None => ServiceUser::current(),
    };
    let me = nix::unistd::geteuid();
    if !root && me != who.target.uid {
        println!(
            "note: access for [server] user {} not checked: run check-config as root or as {}",
            who.user, who.user
        );
        return Ok(());
    }
    let maildir = config.store.kind == StoreKind::Maildir;
    let passwd_file = config.auth.kind == mailbag::config::AuthKind::PasswdFile;
    let mbox = config.store.kind == StoreKind::Mbox;
    let pam = config.auth.kind == mailbag::config::AuthKind::Pam;
    let (mut problems, walk, rewrite, warning) = privileges::as_user(&who, || {
        let mut problems = privileges::check_server_paths(config, config_path, &who);
        if mbox {
            problems.extend(privileges::check_spool_dir(&config.store.mbox.path, &who));
        }
        let warning = pam.then(|| privileges::check_pam_passwords(&who)).flatten();
        // Not the server's need, but `sudo mailbag user add`'s.
        let rewrite = (maildir && passwd_file)
            .then(|| privileges::check_passwd_rewrite(&config.auth.passwd_file, &who))
            .flatten();
        let walk = (maildir && problems.iter().all(|p| p.role != "store.root")).then(|| {
            privileges::walk_mail_root(
                &config.store.root,
                &who,
                WALK_DEPTH,
                WALK_ENTRIES,
                WALK_SHOWN,
            )
        });
        (problems, walk, rewrite, warning)
    })?;
    if let Some(warning) = warning {
        println!("warning: {warning}");
    }
    if let Some(rewrite) = rewrite.filter(|_| problems.is_empty()) {
        println!("note: `mailbag user add|passwd|del` will refuse: {rewrite}");
    }
    let mut total = problems.len();
    let mut more = String::new();
    let mail_root = std::path::absolute(&config.store.root)?;
    if let Some(walk) = walk {
        total += walk.total;
        problems.extend(walk.problems);
        if walk.total > WALK_SHOWN {
            more = format!(
                "... and {} more under {}; to give all of it to {}: chown -R {} {}",
                walk.total - WALK_SHOWN,
                mail_root.display(),
                who.user,
                who.owner(),
                mail_root.display()
            );
        }
        if walk.truncated {
            println!(
                "note: looked at the first {} entries under {} only",
                walk.entries,
                mail_root.display()
            );
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    for problem in &problems {
        eprintln!("mailbag: {problem}");
    }
    if !more.is_empty() {
        eprintln!("mailbag: {more}");
    }
    bail!(
        "{}: {total} path{} that the server, running as {}, cannot use (listed above)",
        config_path.display(),
        if total == 1 { "" } else { "s" },
        who.owner()
    )
}
