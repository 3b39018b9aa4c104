//! The `propass-agent` command line. `run` is the service; every other
//! command talks to the running agent over its Unix socket.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use propass_protocol::{BadgeUid, ClientId, OpType};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::api::{
    CopyRequest, EnrollRequest, EnrollResponse, ErrorBody, ErrorDetail, HealthView, LocalErrorCode,
    LoginRequest, LoginResponse, MadeResponse, ReadersResponse, RecordRequest, RecordResponse,
    RetryResponse, StatusView, SyncResponse, TagView, WriteCardRequest,
};
use crate::config::{AgentConfig, ConfigLayer};
use crate::events::{AgentEvent, CardStep};
use crate::store::QueuedOp;

#[derive(Debug, Parser)]
#[command(name = "propass-agent", version, about = "PROPASS kiosk agent")]
struct Cli {
    /// Configuration file [default: /etc/propass/agent.toml if it exists]
    #[arg(long, env = "PROPASS_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The agent's local API socket [default: /run/propass/agent.sock]
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the systemd service runs this)
    Run {
        /// State directory holding agent.db [default: /var/lib/propass]
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Server URL, until a login chooses one
        #[arg(long)]
        server: Option<String>,
    },
    /// Enroll this kiosk with the server, using the one-time code an operator created (`propass-server device enroll`)
    Enroll {
        /// Server URL, e.g. https://propass.example
        #[arg(long)]
        server: Option<String>,
        /// The enrollment code (dashes, spaces and case do not matter)
        #[arg(long)]
        code: String,
    },
    /// Log this kiosk in with a kiosk account's password instead (the device then waits for an operator's approval)
    Login {
        /// Server URL, e.g. http://propass.example:5000
        #[arg(long)]
        server: Option<String>,
        /// User name
        #[arg(long)]
        username: String,
        /// Read the password from the first line of standard input
        #[arg(long)]
        password_stdin: bool,
    },
    /// Online/offline, login, queue depth, last sync, quotas
    Status {
        /// JSON output
        #[arg(long)]
        json: bool,
    },
    /// Whether the agent can record a card now (it tries a write): exit 0 if so, 1 with
    /// the reason if not (a full or read-only disk), for monitoring
    Health,
    /// The local queue
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Push and pull now
    Sync,
    /// Write every operation the server has not recorded (pending or failed) as JSON lines,
    /// read straight from the database (the agent may be stopped): before re-imaging a kiosk.
    /// Run it as the agent's user (sudo -u propass …)
    ExportUnsynced {
        /// State directory holding agent.db [default: /var/lib/propass]
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Write to this file instead of standard output
        #[arg(long, conflicts_with = "count")]
        output: Option<PathBuf>,
        /// Only print how many there are (with interrupted card writes not yet settled)
        #[arg(long)]
        count: bool,
    },
    /// Record an operation done outside the reader
    #[command(subcommand)]
    Record(RecordCmd),
    /// Stream the agent's events (NDJSON) until interrupted
    Events,
    /// The NFC reader
    #[command(subcommand)]
    Nfc(NfcCmd),
    /// Copy a customer's badge onto a blank at the reader, verify it, and record it
    Copy {
        /// Client paying for the copy
        #[arg(long)]
        client: i64,
        /// JSON output
        #[arg(long)]
        json: bool,
    },
    /// Write a UID from the records onto a blank at the reader, verify it, and record it
    Write {
        /// Client paying for the card
        #[arg(long)]
        client: i64,
        /// The UID to write, hex (4 bytes)
        #[arg(long)]
        uid: String,
        /// JSON output
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NfcCmd {
    /// Readers libnfc can see
    List {
        /// JSON output
        #[arg(long)]
        json: bool,
    },
    /// Wait for a card and print it
    Read {
        /// JSON output
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCmd {
    /// List queued operations, oldest first
    List {
        /// pending, synced or failed
        #[arg(long)]
        status: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON output
        #[arg(long)]
        json: bool,
    },
    /// Make every failed operation pending again
    Retry,
}

#[derive(Debug, Args)]
struct RecordArgs {
    /// Client id
    #[arg(long)]
    client: i64,
    /// Badge UID in hex, e.g. 04AB12CD
    #[arg(long)]
    uid: String,
    /// JSON output
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum RecordCmd {
    /// A badge copied onto a blank card
    Copy(RecordArgs),
    /// A UID from the records written onto a blank card
    Write(RecordArgs),
}

pub fn main() -> ExitCode {
    crate::tls::install_crypto_provider();
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
    let ansi = std::io::stderr().is_terminal();
    // journald adds its own timestamps: plain lines, no colours.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> Result<(), String> {
    let mut flags = ConfigLayer {
        socket: cli.socket,
        ..ConfigLayer::default()
    };
    if let Command::Run { state_dir, server } = &cli.command {
        flags.state_dir = state_dir.clone();
        flags.server_url = server.clone().map(Some);
    }
    let config = AgentConfig::load(cli.config.as_deref(), |k| std::env::var(k).ok(), flags)?;
    if let Command::Run { .. } = cli.command {
        return crate::daemon::run(config);
    }
    if let Command::ExportUnsynced {
        state_dir,
        output,
        count,
    } = cli.command
    {
        let dir = state_dir.unwrap_or(config.state_dir);
        return export_unsynced(&dir.join("agent.db"), output.as_deref(), count);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(client_command(config, cli.command))
        .map_err(CliError::explain)
}

/// `export-unsynced`: JSON lines of the operations not synced, or their
/// count. A kiosk without a database holds nothing.
fn export_unsynced(
    db: &std::path::Path,
    output: Option<&std::path::Path>,
    count: bool,
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if !db.exists() {
        if count {
            println!("0");
            return Ok(());
        }
        return Err(format!(
            "{} does not exist: this kiosk holds nothing",
            db.display()
        ));
    }
    // root reading the agent's WAL database would leave root-owned files the
    // agent cannot open; /proc/self is owned by the effective user.
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    let owner = std::fs::metadata(db).map_err(|e| e.to_string())?.uid();
    if me == 0 && owner != 0 {
        return Err(format!(
            "{} belongs to uid {owner}: run this as the agent's user (sudo -u propass propass-agent export-unsynced …)",
            db.display()
        ));
    }
    let conn = crate::store::schema::open_read_only(db).map_err(|e| e.to_string())?;
    let (ops, writing) = crate::store::queue::unsynced(&conn).map_err(|e| e.to_string())?;
    if count {
        println!("{}", ops.len() as i64 + writing);
        return Ok(());
    }
    let mut text = String::new();
    for op in &ops {
        text.push_str(&serde_json::to_string(op).map_err(|e| e.to_string())?);
        text.push('\n');
    }
    match output {
        Some(path) => std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    eprintln!("{} unsynced operation(s) exported", ops.len());
    if writing > 0 {
        eprintln!("warning: {writing} card write(s) were interrupted and are not settled yet: start the agent once (it records them as unverified), then export again");
    }
    Ok(())
}

struct Local {
    http: reqwest::Client,
    socket: PathBuf,
}

/// Why a command failed.
enum CliError {
    /// The agent answered with an error.
    Agent(ErrorDetail),
    /// Anything else, said for a person.
    Other(String),
}

impl From<String> for CliError {
    fn from(e: String) -> Self {
        Self::Other(e)
    }
}

impl CliError {
    /// The message, and what to do next where the code says.
    fn explain(self) -> String {
        let ErrorDetail { code, message } = match self {
            Self::Agent(e) => e,
            Self::Other(m) => return m,
        };
        let hint = match code {
            LocalErrorCode::LoginRequired if !message.contains("propass-agent enroll") => {
                "\nhint: propass-agent enroll --server URL --code CODE (an operator creates the code)"
            }
            LocalErrorCode::NoReader | LocalErrorCode::ReaderUnplugged => {
                "\nhint: `propass-agent nfc list` shows the readers libnfc can see"
            }
            _ => "",
        };
        format!("{message}{hint}")
    }
}

type CliResult<T> = Result<T, CliError>;

impl Local {
    fn new(socket: PathBuf) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .unix_socket(socket.clone())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { http, socket })
    }

    fn down(&self, e: reqwest::Error) -> String {
        format!(
            "cannot reach the agent at {} ({e}): is it running? (systemctl status propass-agent, or propass-agent run)",
            self.socket.display()
        )
    }

    /// The answer as received (`--json` prints it unchanged).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> CliResult<Value> {
        let mut req = self.http.request(method, format!("http://agent{path}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.map_err(|e| self.down(e))?;
        let ok = res.status().is_success();
        let v: Value = res
            .json()
            .await
            .map_err(|e| format!("unreadable answer from the agent: {e}"))?;
        if ok {
            return Ok(v);
        }
        match serde_json::from_value::<ErrorBody>(v) {
            Ok(body) => Err(CliError::Agent(body.error)),
            Err(_) => Err(CliError::Other("the agent refused".into())),
        }
    }
}

fn body<T: Serialize>(request: &T) -> Option<Value> {
    serde_json::to_value(request).ok()
}

fn typed<T: DeserializeOwned>(v: Value) -> CliResult<T> {
    serde_json::from_value(v).map_err(|e| CliError::Other(format!("unexpected answer: {e}")))
}

/// Reads the password: with a prompt and no echo when `prompt` and stdin is
/// a terminal, else the first line of stdin.
fn read_password(prompt: bool) -> Result<String, String> {
    let stdin = std::io::stdin();
    let pw = if prompt && stdin.is_terminal() {
        rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if pw.is_empty() {
        return Err("empty password".into());
    }
    Ok(pw)
}

/// Subscribes to the agent's events (before the flow starts, so that no step is missed).
async fn subscribe(local: &Local) -> Option<reqwest::Response> {
    local.http.get("http://agent/v1/events").send().await.ok()
}

/// Prints the reader flow's steps (from the event stream) for the person at the kiosk.
async fn print_card_progress(res: Option<reqwest::Response>) {
    let Some(mut res) = res else { return };
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            // Other events (and `lagged`) are not for this screen.
            if let Ok(AgentEvent::CardProgress { step, uid, message }) =
                serde_json::from_slice::<AgentEvent>(&line)
            {
                print_step(step, uid.as_deref().unwrap_or(""), message.as_deref());
            }
        }
    }
}

fn print_step(step: CardStep, uid: &str, message: Option<&str>) {
    match step {
        CardStep::WaitingForSource => eprintln!("place the customer's badge on the reader…"),
        CardStep::SourceRead => eprintln!("badge {uid} read; remove it"),
        CardStep::WaitingForBlank => eprintln!("place a blank card on the reader…"),
        CardStep::Writing => eprintln!("writing {uid}…"),
        CardStep::Verified => eprintln!("verified: the card reads back {uid}"),
        CardStep::Failed => eprintln!("failed: {}", message.unwrap_or("")),
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Prints `v` as JSON, or as `T` for a person.
fn print_as<T: DeserializeOwned>(v: Value, as_json: bool, human: impl FnOnce(T)) -> CliResult<()> {
    if as_json {
        print_json(&v);
    } else {
        human(typed(v)?);
    }
    Ok(())
}

async fn client_command(config: AgentConfig, command: Command) -> CliResult<()> {
    let local = Local::new(config.socket.clone())?;
    match command {
        Command::Run { .. } | Command::ExportUnsynced { .. } => unreachable!("handled by run"),
        Command::Enroll { server, code } => enroll(&local, server, code).await,
        Command::Login {
            server,
            username,
            password_stdin,
        } => login(&local, server, username, password_stdin).await,
        Command::Status { json } => {
            let v = local.call(Method::GET, "/v1/status", None).await?;
            print_as(v, json, print_status)
        }
        Command::Queue(cmd) => queue(&local, cmd).await,
        Command::Health => {
            typed(local.call(Method::GET, "/v1/health", None).await?).map(print_health)
        }
        Command::Sync => sync(&local).await,
        Command::Record(cmd) => record(&local, cmd).await,
        Command::Nfc(cmd) => nfc(&local, cmd).await,
        Command::Copy { client, json } => {
            let req = CopyRequest {
                client_id: client_id(client)?,
            };
            at_the_reader(&local, "/v1/copy", body(&req), json).await
        }
        Command::Write { client, uid, json } => {
            let req = WriteCardRequest {
                client_id: client_id(client)?,
                uid: badge_uid(&uid)?,
            };
            at_the_reader(&local, "/v1/write-card", body(&req), json).await
        }
        Command::Events => events(&local).await,
    }
}

async fn enroll(local: &Local, server: Option<String>, code: String) -> CliResult<()> {
    let req = EnrollRequest {
        server_url: server,
        code,
    };
    let v = local.call(Method::POST, "/v1/enroll", body(&req)).await?;
    let r: EnrollResponse = typed(v)?;
    eprintln!(
        "enrolled as device {}{} (enroll again before {})",
        r.device_id,
        r.name.map(|n| format!(" \"{n}\"")).unwrap_or_default(),
        r.credential_expires_at.to_rfc3339()
    );
    Ok(())
}

async fn queue(local: &Local, cmd: QueueCmd) -> CliResult<()> {
    match cmd {
        QueueCmd::List {
            status,
            limit,
            json,
        } => {
            let mut path = format!("/v1/queue?limit={limit}");
            if let Some(s) = status {
                path.push_str(&format!("&status={s}"));
            }
            let v = local.call(Method::GET, &path, None).await?;
            print_as(v, json, print_queue)
        }
        QueueCmd::Retry => {
            let v = local.call(Method::POST, "/v1/queue/retry", None).await?;
            let r: RetryResponse = typed(v)?;
            eprintln!("{} failed operation(s) queued again", r.retried);
            Ok(())
        }
    }
}

async fn sync(local: &Local) -> CliResult<()> {
    let v = local.call(Method::POST, "/v1/sync", None).await?;
    let s: SyncResponse = typed(v)?;
    eprintln!(
        "synced {}, failed {}, still pending {}",
        s.synced, s.failed, s.pending
    );
    Ok(())
}

fn client_id(id: i64) -> CliResult<ClientId> {
    ClientId::new(id).map_err(|e| CliError::Other(format!("--client {id}: {e}")))
}

fn badge_uid(hex: &str) -> CliResult<BadgeUid> {
    BadgeUid::parse(hex).map_err(|e| CliError::Other(format!("--uid {hex}: {e}")))
}

async fn login(
    local: &Local,
    server: Option<String>,
    username: String,
    password_stdin: bool,
) -> CliResult<()> {
    let password = read_password(!password_stdin)?;
    let req = LoginRequest {
        server_url: server,
        username,
        password,
    };
    let v = local.call(Method::POST, "/v1/login", body(&req)).await?;
    let r: LoginResponse = typed(v)?;
    eprintln!(
        "logged in as {} on device {} (token expires {})",
        r.username,
        r.device_id,
        r.expires_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "?".into())
    );
    Ok(())
}

fn print_health(h: HealthView) {
    let reader = serde_json::to_value(h.reader).unwrap_or_default();
    println!(
        "ok: this kiosk can record ({} pending; reader {})",
        h.pending,
        reader.as_str().unwrap_or("?")
    );
}

fn print_status(s: StatusView) {
    println!("device      {}", s.device_id);
    println!(
        "server      {} ({}{})",
        s.server_url.as_deref().unwrap_or("not set"),
        if s.online { "online" } else { "offline" },
        if s.ws_connected { ", live" } else { "" }
    );
    let expires = s
        .token_expires_at
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| "?".into());
    match (&s.login_required, &s.username) {
        (Some(why), _) => println!("login       NEEDED: {why}"),
        (None, _) if !s.logged_in => println!("login       NEEDED"),
        (None, Some(u)) => println!("login       {u}, token expires {expires}"),
        // An enrolled kiosk: no person's account, a device credential.
        (None, None) => println!("login       enrolled device, token expires {expires}"),
    }
    println!(
        "queue       {} pending, {} synced, {} failed",
        s.queue.pending, s.queue.synced, s.queue.failed
    );
    if let Some(age) = s.oldest_pending_age_secs {
        println!("oldest      pending for {age} s");
    }
    println!(
        "last sync   {}",
        s.last_sync_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "never".into())
    );
    if let Some(e) = s.last_error {
        println!("last error  {e}");
    }
    if let Some(e) = s.storage_error {
        println!("storage     CANNOT RECORD: {e} (no card is made until the disk takes writes)");
    }
    for q in s.quotas {
        let lease = q
            .lease
            .map(|l| format!("  (this kiosk's lease: {l} units)"))
            .unwrap_or_default();
        println!(
            "client {:>4}  {:>6} remaining  {}{lease}",
            q.client_id,
            q.remaining,
            q.name.unwrap_or_default()
        );
    }
}

fn print_queue(items: Vec<QueuedOp>) {
    println!(
        "{:>8}  {:<8}  {:<5}  {:>6}  {:<20}  {:<8}  ERROR",
        "ID", "STATUS", "TYPE", "CLIENT", "UID", "ATTEMPTS"
    );
    for i in items {
        println!(
            "{:>8}  {:<8}  {:<5}  {:>6}  {:<20}  {:<8}  {}",
            i.id,
            i.status.as_str(),
            i.op_type.as_str(),
            i.client_id,
            i.uid.to_hex(),
            i.attempts,
            i.last_error.unwrap_or_default()
        );
    }
}

async fn record(local: &Local, cmd: RecordCmd) -> CliResult<()> {
    let (op_type, a) = match cmd {
        RecordCmd::Copy(a) => (OpType::Copy, a),
        RecordCmd::Write(a) => (OpType::Write, a),
    };
    let req = RecordRequest {
        op_type,
        client_id: client_id(a.client)?,
        uid: badge_uid(&a.uid)?,
        occurred_at: None,
        op_id: None,
    };
    let v = local
        .call(Method::POST, "/v1/operations", body(&req))
        .await?;
    print_as(v, a.json, |r: RecordResponse| {
        println!("{}", r.operation.id);
        eprintln!(
            "recorded {} #{} for client {} ({} remaining)",
            op_type.as_str(),
            r.operation.id,
            a.client,
            r.remaining
        );
    })
}

async fn nfc(local: &Local, cmd: NfcCmd) -> CliResult<()> {
    match cmd {
        NfcCmd::List { json } => {
            let v = local.call(Method::GET, "/v1/nfc/readers", None).await?;
            print_as(v, json, |r: ReadersResponse| {
                r.readers.iter().for_each(|r| println!("{r}"))
            })
        }
        NfcCmd::Read { json } => {
            eprintln!("place a card on the reader…");
            let v = local.call(Method::POST, "/v1/nfc/read", None).await?;
            print_as(v, json, |t: TagView| {
                println!(
                    "UID {}  ATQA {}  SAK {}  {}",
                    t.uid, t.atqa, t.sak, t.family
                )
            })
        }
    }
}

/// A copy or write flow, with its progress printed while it runs.
async fn at_the_reader(
    local: &Local,
    path: &str,
    request: Option<Value>,
    as_json: bool,
) -> CliResult<()> {
    let progress = tokio::spawn(print_card_progress(subscribe(local).await));
    let result = local.call(Method::POST, path, request).await;
    progress.abort();
    print_as(result?, as_json, |m: MadeResponse| {
        println!("{}", m.operation.id);
        let blank = serde_json::to_value(m.blank).unwrap_or_default();
        eprintln!(
            "recorded {} #{} of {} for client {} on a {} blank ({} remaining)",
            m.operation.op_type.as_str(),
            m.operation.id,
            m.operation.uid,
            m.operation.client_id,
            blank.as_str().unwrap_or(""),
            m.remaining
        );
    })
}

async fn events(local: &Local) -> CliResult<()> {
    let mut res = local
        .http
        .get("http://agent/v1/events")
        .send()
        .await
        .map_err(|e| local.down(e))?;
    let mut out = std::io::stdout();
    while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
        out.write_all(&chunk).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}
