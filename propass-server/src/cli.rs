//! The `propass-server` command line: `serve` and the operator commands.
//!
//! Configuration comes from `--config FILE` (or `PROPASS_CONFIG`, or
//! `/etc/propass/server.toml` when it exists), then the environment, then
//! flags. Commands other than `serve` print data on stdout (`--json` for
//! scripts) and messages on stderr; they exit 1 with `error: …` on failure.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use propass_protocol::{ClientId, ParseError, ReaderKey, Role};

use crate::admin::{self, Actor};
use crate::config::{Config, Settings};
use crate::startup::Application;
use crate::{auth, db};

mod device;
use device::DeviceCmd;

/// Where the configuration file is looked for when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/propass/server.toml";

#[derive(Debug, Parser)]
#[command(
    name = "propass-server",
    version,
    about = "PROPASS central server and operator commands"
)]
struct Cli {
    /// TOML configuration file [default: /etc/propass/server.toml if it exists]
    #[arg(long, env = "PROPASS_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// PostgreSQL URL, e.g. postgres://propass@localhost/propass [env: DATABASE_URL]
    #[arg(long, global = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (applies pending migrations first, under a lock, unless --no-migrate)
    Serve(ServeArgs),
    /// Apply pending database migrations
    Migrate,
    /// Manage users
    #[command(subcommand)]
    User(UserCmd),
    /// Manage clients (the customers whose quotas pay for copies)
    #[command(subcommand)]
    Client(ClientCmd),
    /// Manage quotas
    #[command(subcommand)]
    Quota(QuotaCmd),
    /// Manage kiosk devices
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Review the ledger: unverified copies, and voiding one that did not work
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// The audit log: every change made with these commands, newest first
    Audit {
        /// Only this action (quota.add, device.revoke, copy.void, …)
        #[arg(long)]
        action: Option<String>,
        /// How many entries
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCmd {
    /// List the unverified copies not voided (cards a kiosk wrote but could not verify)
    Unverified {
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Void an unverified copy that did not work: its unit goes back to the client; audited
    Void {
        /// The copy's ledger id
        copy_id: i64,
        /// Why (kept in the audit log)
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:5000] [env: PROPASS_BIND]
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// Development mode: allows running without a JWT secret (uses a well-known one) [env: PROPASS_DEV]
    #[arg(long)]
    dev: bool,
    /// File holding the JWT signing secret (PROPASS_JWT_SECRET may hold it directly) [env: PROPASS_JWT_SECRET_FILE]
    #[arg(long)]
    jwt_secret_file: Option<PathBuf>,
    /// Address to serve /metrics on (Prometheus text format) [env: PROPASS_METRICS_BIND]
    #[arg(long)]
    metrics_bind: Option<SocketAddr>,
    /// Do not migrate at start (rolling upgrades: run `propass-server migrate` once, then
    /// restart each instance); refuses to start while the database lacks a migration
    #[arg(long)]
    no_migrate: bool,
}

#[derive(Debug, Subcommand)]
enum UserCmd {
    /// Create a user (the password is read from standard input)
    Add {
        /// Username
        name: String,
        /// admin (everything), operator (clients, quotas, kiosks), or kiosk (a kiosk's account)
        #[arg(long)]
        role: Role,
        /// Read the password from the first line of standard input
        #[arg(long)]
        password_stdin: bool,
        /// Replace the password and role if the user exists (its tokens stop working)
        #[arg(long)]
        update: bool,
    },
    /// Change a user's role (its tokens stop working; it logs in anew)
    Role {
        /// Username
        name: String,
        /// admin, operator or kiosk
        role: Role,
    },
    /// Disable a user: logins are refused and its tokens stop working at once
    Disable {
        /// Username
        name: String,
    },
    /// Enable a disabled user again (it logs in anew)
    Enable {
        /// Username
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClientCmd {
    /// Create a client; prints its id
    Add {
        /// Client name (unique)
        name: String,
        /// Initial quota of copies
        #[arg(long, default_value_t = 0)]
        quota: u32,
        /// Accept whole-badge copies that leave out sectors the kiosk cannot read
        #[arg(long)]
        partial_copy: bool,
        /// Print {"id", "name", "quota", "partial_copy"} as JSON
        #[arg(long)]
        json: bool,
    },
    /// List clients with their quotas and copy policy
    List {
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Set how many units each kiosk holds in lease for a client (spendable offline)
    Lease {
        /// Client id
        client_id: ClientId,
        #[command(flatten)]
        sizes: LeaseSizeArgs,
    },
    /// Replace the MIFARE keys of a client's badges, read from standard input (12 hex digits each, separated by spaces, commas or new lines: never on the command line, where other users of the machine could read them); prints how many it holds. Kiosks serving the client read them at their next pull
    Keys {
        /// Client id
        client_id: ClientId,
        /// Remove every key instead of reading new ones
        #[arg(long)]
        clear: bool,
        /// Print {"client_id", "reader_key_count"} as JSON
        #[arg(long)]
        json: bool,
    },
    /// Set a client's copy policy; prints it. Kiosks learn it at their next pull
    Policy {
        /// Client id
        client_id: ClientId,
        /// allow: accept copies that leave out sectors the kiosk cannot read; deny: refuse such badges
        #[arg(long, value_enum)]
        partial_copy: PartialCopy,
        /// Print {"client_id", "partial_copy", "version"} as JSON
        #[arg(long)]
        json: bool,
    },
}

/// Whether a client accepts a whole-badge copy that leaves out sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PartialCopy {
    Allow,
    Deny,
}

/// How the CLI shows a policy.
fn policy_word(partial_copy: bool) -> &'static str {
    if partial_copy {
        "allow"
    } else {
        "deny"
    }
}

#[derive(Debug, Subcommand)]
enum QuotaCmd {
    /// Add N copies to a client's quota (negative N corrects a mistake); prints the new remaining
    Add {
        /// Client id
        client_id: ClientId,
        /// Copies to add
        #[arg(allow_negative_numbers = true)]
        n: i64,
        /// Why (an order number, a correction): kept in the audit log
        #[arg(long)]
        reason: String,
        /// Print {"client_id", "remaining"} as JSON
        #[arg(long)]
        json: bool,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PROPASS_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The configuration file: the one named, else the default path when it exists.
fn config_file(named: Option<PathBuf>) -> Option<PathBuf> {
    named.or_else(|| {
        let default = Path::new(DEFAULT_CONFIG_PATH);
        default.exists().then(|| default.to_path_buf())
    })
}

/// The keys given as flags, as the last configuration layer.
fn flag_layer(database_url: Option<String>, serve: Option<&ServeArgs>) -> toml::Table {
    let mut t = toml::Table::new();
    let mut put = |k: &str, v: toml::Value| {
        t.insert(k.into(), v);
    };
    if let Some(url) = database_url {
        put("database_url", url.into());
    }
    if let Some(args) = serve {
        if let Some(bind) = args.bind {
            put("bind", bind.to_string().into());
        }
        if args.dev {
            put("dev", true.into());
        }
        if let Some(path) = &args.jwt_secret_file {
            put("jwt_secret_file", path.display().to_string().into());
        }
        if let Some(addr) = args.metrics_bind {
            put("metrics_bind", addr.to_string().into());
        }
    }
    t
}

fn run(cli: Cli) -> Result<(), String> {
    let serve_args = match &cli.command {
        Command::Serve(args) => Some(args),
        _ => None,
    };
    let flags = flag_layer(cli.database_url.clone(), serve_args);
    let env = |k: &str| std::env::var(k).ok();
    let settings = Settings::load(config_file(cli.config.clone()).as_deref(), &env, flags)
        .map_err(|e| e.to_string())?;
    let no_migrate = serve_args.is_some_and(|a| a.no_migrate);
    match cli.command {
        Command::Serve(_) => serve(
            settings.into_config().map_err(|e| e.to_string())?,
            no_migrate,
        ),
        command => {
            let url = settings.database_url().map_err(|e| e.to_string())?;
            let applied = db::run_migrations(&url)?;
            for m in applied {
                eprintln!("applied migration {m}");
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let limits = Limits {
                fleet: settings.fleet(),
                reader_keys_max: settings.client_reader_keys_max(),
            };
            rt.block_on(operate(&url, command, limits))
        }
    }
}

fn serve(config: Config, no_migrate: bool) -> Result<(), String> {
    if no_migrate {
        let pending = db::pending_migrations(&config.database_url)?;
        if !pending.is_empty() {
            return Err(format!(
                "the database lacks {} migration(s) this server needs ({}): run `propass-server migrate` first",
                pending.len(),
                pending.join(", ")
            ));
        }
    } else {
        for m in db::run_migrations(&config.database_url)? {
            tracing::info!(migration = %m, "applied migration");
        }
    }
    let bind = config.bind;
    actix_web::rt::System::new().block_on(async move {
        let app =
            Application::build(config).map_err(|e| format!("cannot listen on {bind}: {e}"))?;
        tracing::info!(addr = %bind, port = app.port(), "propass-server listening");
        app.stop_on_signals();
        app.run_until_stopped().await.map_err(|e| e.to_string())
    })?;
    tracing::info!("propass-server stopped");
    Ok(())
}

fn read_password() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
    if pw.is_empty() {
        return Err("empty password on standard input".into());
    }
    Ok(pw)
}

pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    writeln!(std::io::stdout(), "{s}").map_err(|e| e.to_string())
}

/// Who runs the command, for the audit log.
fn cli_actor() -> Actor {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    Actor::cli(&user)
}

/// The audit entry of a command that changes something and is not one of
/// the `admin` use cases (which audit themselves): (action, subject,
/// detail); `None` for reads and for those.
fn audit_entry(c: &Command) -> Option<(String, String, serde_json::Value)> {
    let args = serde_json::json!({"command": format!("{c:?}")});
    let (action, subject) = match c {
        Command::User(UserCmd::Add { name, .. }) => ("user.add", format!("user:{name}")),
        Command::User(UserCmd::Role { name, .. }) => ("user.role", format!("user:{name}")),
        Command::User(UserCmd::Disable { name }) => ("user.disable", format!("user:{name}")),
        Command::User(UserCmd::Enable { name }) => ("user.enable", format!("user:{name}")),
        Command::Client(ClientCmd::Lease { client_id, .. }) => {
            ("client.lease", format!("client:{client_id}"))
        }
        _ => return None,
    };
    Some((action.to_owned(), subject, args))
}

/// The lease sizes of `client lease` and `device lease`.
#[derive(Debug, clap::Args)]
pub struct LeaseSizeArgs {
    /// Units a kiosk's lease of a client is refilled up to (0: no leases)
    #[arg(long, required_unless_present = "default")]
    target: Option<u32>,
    /// Refill once a lease holds fewer units than this [default: half the target]
    #[arg(long)]
    low_water: Option<u32>,
    /// Use the sizes of the level above again (a kiosk: its clients'; a client: the server's lease_target and lease_low_water)
    #[arg(long, conflicts_with_all = ["target", "low_water"])]
    default: bool,
}

impl LeaseSizeArgs {
    /// The sizes asked for; `None` with `--default`.
    fn parse(&self) -> Result<Option<db::leases::LeasePolicy>, String> {
        self.target
            .map(|t| db::leases::LeasePolicy::parse(t, self.low_water))
            .transpose()
    }
}

/// Why an audited command's transaction rolled back.
enum Failed {
    Command(String),
    Db(diesel::result::Error),
}

impl From<diesel::result::Error> for Failed {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(e)
    }
}

/// What operator commands take from the configuration.
#[derive(Debug, Clone, Copy)]
struct Limits {
    fleet: db::fleet::FleetPolicy,
    reader_keys_max: usize,
}

async fn operate(url: &str, command: Command, limits: Limits) -> Result<(), String> {
    let mut conn = db::connect::connect(url)
        .await
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    let Some((action, subject, detail)) = audit_entry(&command) else {
        return dispatch(&mut conn, command, limits).await;
    };
    // The change and its audit entry commit together, or neither does.
    let actor = cli_actor();
    conn.transaction(async |conn| {
        dispatch(conn, command, limits)
            .await
            .map_err(Failed::Command)?;
        db::audit::record(conn, actor.as_str(), &action, &subject, detail).await?;
        Ok::<_, Failed>(())
    })
    .await
    .map_err(|e| match e {
        Failed::Command(e) => e,
        Failed::Db(e) => format!("not done: {e}"),
    })
}

async fn client_command(
    conn: &mut AsyncPgConnection,
    command: ClientCmd,
    limits: Limits,
) -> Result<(), String> {
    match command {
        ClientCmd::Add {
            name,
            quota,
            partial_copy,
            json,
        } => client_add(conn, &name, quota, partial_copy, json).await,
        ClientCmd::List { json } => client_list(conn, json).await,
        ClientCmd::Lease { client_id, sizes } => {
            client_lease(conn, client_id, sizes.parse()?).await
        }
        ClientCmd::Policy {
            client_id,
            partial_copy,
            json,
        } => client_policy(conn, client_id, partial_copy, json).await,
        ClientCmd::Keys {
            client_id,
            clear,
            json,
        } => client_keys(conn, client_id, clear, json, limits.reader_keys_max).await,
    }
}

async fn dispatch(
    conn: &mut AsyncPgConnection,
    command: Command,
    limits: Limits,
) -> Result<(), String> {
    match command {
        Command::Serve(_) => unreachable!("handled by run"),
        Command::Migrate => {
            eprintln!("database is up to date");
            Ok(())
        }
        Command::User(UserCmd::Add {
            name,
            role,
            password_stdin,
            update,
        }) => user_add(conn, name, role, password_stdin, update).await,
        Command::User(UserCmd::Role { name, role }) => user_set_role(conn, name, role).await,
        Command::User(UserCmd::Disable { name }) => user_set_disabled(conn, name, true).await,
        Command::User(UserCmd::Enable { name }) => user_set_disabled(conn, name, false).await,
        Command::Client(cmd) => client_command(conn, cmd, limits).await,
        Command::Quota(QuotaCmd::Add {
            client_id,
            n,
            json,
            reason,
        }) => {
            let client = admin::adjust_quota(conn, &cli_actor(), client_id, n, &reason).await?;
            if json {
                print_json(
                    &serde_json::json!({"client_id": client_id, "remaining": client.remaining}),
                )
            } else {
                println!("{}", client.remaining);
                eprintln!(
                    "client {client_id} now has {} copies remaining",
                    client.remaining
                );
                Ok(())
            }
        }
        Command::Device(cmd) => device::run(conn, cmd, limits.fleet, &cli_actor()).await,
        Command::Ledger(LedgerCmd::Unverified { json }) => ledger_unverified(conn, json).await,
        Command::Audit {
            action,
            limit,
            json,
        } => audit_list(conn, action.as_deref(), limit, json).await,
        Command::Ledger(LedgerCmd::Void { copy_id, reason }) => {
            let actor = cli_actor();
            let (client, remaining) = admin::void_copy(conn, &actor, copy_id, &reason).await?;
            println!("{remaining}");
            eprintln!("copy {copy_id} void; client {client} has its unit back ({remaining} free); audited as {}", actor.as_str());
            Ok(())
        }
    }
}

pub(crate) fn dberr(e: diesel::result::Error) -> String {
    e.to_string()
}

async fn user_add(
    conn: &mut AsyncPgConnection,
    name: String,
    role: Role,
    password_stdin: bool,
    update: bool,
) -> Result<(), String> {
    if !password_stdin {
        return Err(
            "pass the password on standard input with --password-stdin (never on the command line)"
                .into(),
        );
    }
    if name.is_empty() || name.len() > 128 {
        return Err("username must be 1 to 128 bytes".into());
    }
    let password = read_password()?;
    let hash = tokio::task::spawn_blocking(move || auth::password::hash_password(&password))
        .await
        .map_err(|e| e.to_string())??;
    let exists = db::users::find(conn, &name).await.map_err(dberr)?.is_some();
    let id = match (exists, update) {
        (true, false) => {
            return Err(format!(
                "user {name:?} already exists (add --update to change its password and role)"
            ))
        }
        (true, true) => db::users::update(conn, &name, &hash, role).await,
        (false, _) => db::users::create(conn, &name, &hash, role).await,
    }
    .map_err(dberr)?;
    eprintln!(
        "{} user {name} (id {id}, role {})",
        if exists { "updated" } else { "created" },
        role.as_str()
    );
    Ok(())
}

async fn user_set_role(
    conn: &mut AsyncPgConnection,
    name: String,
    role: Role,
) -> Result<(), String> {
    if !db::users::set_role(conn, &name, role)
        .await
        .map_err(dberr)?
    {
        return Err(format!("no user named {name:?}"));
    }
    eprintln!(
        "user {name} now has role {}; its tokens stop working",
        role.as_str()
    );
    Ok(())
}

async fn user_set_disabled(
    conn: &mut AsyncPgConnection,
    name: String,
    disabled: bool,
) -> Result<(), String> {
    if !db::users::set_disabled(conn, &name, disabled)
        .await
        .map_err(dberr)?
    {
        return Err(format!("no user named {name:?}"));
    }
    eprintln!(
        "user {name} {}",
        if disabled {
            "disabled: its tokens stop working"
        } else {
            "enabled"
        }
    );
    Ok(())
}

async fn client_add(
    conn: &mut AsyncPgConnection,
    name: &str,
    quota: u32,
    partial_copy: bool,
    json: bool,
) -> Result<(), String> {
    let c = admin::create_client(conn, &cli_actor(), name, i64::from(quota), partial_copy).await?;
    if json {
        print_json(
            &serde_json::json!({"id": c.id, "name": c.name, "quota": quota, "partial_copy": partial_copy}),
        )
    } else {
        println!("{}", c.id);
        eprintln!(
            "created client {:?} with id {}, a quota of {quota} and partial copies {}",
            c.name,
            c.id,
            if partial_copy { "allowed" } else { "denied" }
        );
        Ok(())
    }
}

async fn client_list(conn: &mut AsyncPgConnection, json: bool) -> Result<(), String> {
    let rows = db::clients::list(conn).await.map_err(dberr)?;
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| serde_json::json!({"id": r.id, "name": r.name, "total": r.total, "used": r.used, "leased": r.leased, "remaining": r.remaining(), "partial_copy": r.partial_copy}))
            .collect();
        return print_json(&v);
    }
    println!(
        "{:>6}  {:>9}  {:>9}  {:>9}  {:>9}  {:<7}  NAME",
        "ID", "TOTAL", "USED", "LEASED", "REMAINING", "PARTIAL"
    );
    for r in rows {
        println!(
            "{:>6}  {:>9}  {:>9}  {:>9}  {:>9}  {:<7}  {}",
            r.id,
            r.total,
            r.used,
            r.leased,
            r.remaining(),
            policy_word(r.partial_copy),
            r.name
        );
    }
    Ok(())
}

async fn audit_list(
    conn: &mut AsyncPgConnection,
    action: Option<&str>,
    limit: u32,
    json: bool,
) -> Result<(), String> {
    let filter = db::audit::Filter {
        action,
        ..Default::default()
    };
    let rows = db::audit::list(conn, filter, i64::from(limit.clamp(1, 100_000)))
        .await
        .map_err(dberr)?;
    if json {
        return print_json(&rows);
    }
    println!(
        "{:<25}  {:<20}  {:<16}  {:<24}  DETAIL",
        "AT", "ACTOR", "ACTION", "SUBJECT"
    );
    for r in rows {
        println!(
            "{:<25}  {:<20}  {:<16}  {:<24}  {}",
            r.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            r.actor,
            r.action,
            r.subject,
            r.detail
        );
    }
    Ok(())
}

async fn ledger_unverified(conn: &mut AsyncPgConnection, json: bool) -> Result<(), String> {
    let rows = db::corrections::unverified(conn).await.map_err(dberr)?;
    if json {
        return print_json(&rows);
    }
    println!("{:>8}  {:<30}  {:>6}  OCCURRED", "COPY", "DEVICE", "CLIENT");
    for r in rows {
        println!(
            "{:>8}  {:<30}  {:>6}  {}",
            r.id,
            r.device_id,
            r.client_id,
            r.occurred_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    Ok(())
}

async fn client_lease(
    conn: &mut AsyncPgConnection,
    client_id: ClientId,
    sizes: Option<db::leases::LeasePolicy>,
) -> Result<(), String> {
    if !db::leases::set_policy(
        conn,
        client_id,
        sizes.map(|s| s.target),
        sizes.map(|s| s.low_water),
    )
    .await
    .map_err(dberr)?
    {
        return Err(format!("no client with id {client_id}"));
    }
    match sizes {
        Some(s) => eprintln!(
            "client {client_id}: kiosks hold up to {} unit(s) each, refilled below {}; a kiosk holding more gives back what it has not spent, at its next sync (`device reclaim` takes it back now)",
            s.target, s.low_water
        ),
        None => eprintln!("client {client_id}: the server's default lease sizes"),
    }
    Ok(())
}

async fn client_keys(
    conn: &mut AsyncPgConnection,
    client_id: ClientId,
    clear: bool,
    json: bool,
    max: usize,
) -> Result<(), String> {
    let keys = if clear {
        Vec::new()
    } else {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
            .map_err(|e| format!("cannot read the keys from standard input: {e}"))?;
        let keys = ReaderKey::parse_all(
            text.split(|c: char| c.is_whitespace() || c == ',')
                .filter(|k| !k.is_empty()),
        )
        .map_err(|i| format!("key {}: {}", i + 1, ParseError::ReaderKey))?;
        if keys.is_empty() {
            return Err("no key on standard input (to remove every key, say --clear)".into());
        }
        keys
    };
    let client = admin::set_reader_keys(conn, &cli_actor(), client_id, &keys, max).await?;
    if json {
        print_json(
            &serde_json::json!({"client_id": client_id, "reader_key_count": client.reader_key_count}),
        )
    } else {
        println!("{}", client.reader_key_count);
        eprintln!(
            "client {client_id} has {} reader key(s); kiosks serving it read them at their next pull",
            client.reader_key_count
        );
        Ok(())
    }
}

async fn client_policy(
    conn: &mut AsyncPgConnection,
    client_id: ClientId,
    partial_copy: PartialCopy,
    json: bool,
) -> Result<(), String> {
    let allow = partial_copy == PartialCopy::Allow;
    let change = admin::ClientChange {
        partial_copy: Some(allow),
        ..Default::default()
    };
    admin::update_client(conn, &cli_actor(), client_id.get(), change).await?;
    let (_, version) = db::clients::remaining_of(conn, client_id)
        .await
        .map_err(dberr)?
        .ok_or_else(|| format!("no client with id {client_id}"))?;
    if json {
        print_json(
            &serde_json::json!({"client_id": client_id, "partial_copy": allow, "version": version}),
        )
    } else {
        println!("{}", policy_word(allow));
        eprintln!(
            "client {client_id} now {} partial copies; kiosks learn it at their next pull",
            if allow { "accepts" } else { "refuses" }
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags are declared three times — in the key list (`flag`), as
    /// clap arguments and in `flag_layer` — so this ties them together:
    /// every documented flag parses and lands on its own key.
    #[test]
    fn every_documented_flag_sets_its_key() {
        let flagged: Vec<_> = crate::config::KEYS
            .iter()
            .filter(|k| !k.flag.is_empty())
            .collect();
        assert!(flagged.len() >= 5, "{flagged:?}");
        for key in flagged {
            let mut argv = vec!["propass-server".to_owned()];
            let words: Vec<&str> = key.flag.split_whitespace().collect();
            let (flag, sub) = words.split_last().expect("a flag");
            if sub.is_empty() {
                argv.push("serve".into());
            } else {
                argv.extend(sub.iter().map(|s| s.to_string()));
            }
            argv.push(flag.to_string());
            let value = match key.key {
                "dev" => None,
                "bind" | "metrics_bind" => Some("127.0.0.1:4999"),
                "jwt_secret_file" => Some("/run/credentials/jwt"),
                _ => Some("postgres://flag.example/db"),
            };
            argv.extend(value.map(str::to_owned));
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let serve = match &cli.command {
                Command::Serve(args) => Some(args),
                _ => None,
            };
            let layer = flag_layer(cli.database_url.clone(), serve);
            let want = value.map_or(toml::Value::Boolean(true), |v| v.into());
            assert_eq!(layer.get(key.key), Some(&want), "{argv:?} → {layer:?}");
            assert_eq!(layer.len(), 1, "{argv:?} set only {}: {layer:?}", key.key);
        }
    }
}
