//! The `propass-agent` command line. `run` is the service; every other
//! command talks to the running agent over its Unix socket.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::api::StatusView;
use crate::config::AgentConfig;

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
    /// Log this kiosk in to the server (password from a prompt, or stdin)
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
    /// The local queue
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Push and pull now
    Sync,
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

/// Entry point.
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
    let ansi = std::io::stderr().is_terminal();
    // journald adds its own timestamps: plain lines, no colours.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> Result<(), String> {
    let mut config = AgentConfig::load(cli.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Some(s) = cli.socket {
        config.socket = s;
    }
    if let Command::Run { state_dir, server } = cli.command {
        if let Some(d) = state_dir {
            config.state_dir = d;
        }
        if server.is_some() {
            config.server_url = server;
        }
        return crate::daemon::run(config);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(client_command(config, cli.command))
}

struct Local {
    http: reqwest::Client,
    socket: PathBuf,
}

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

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
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
            Ok(v)
        } else {
            Err(v["error"]["message"]
                .as_str()
                .unwrap_or("the agent refused")
                .to_owned())
        }
    }
}

/// Reads the password: with a prompt and no echo when `prompt` and stdin is
/// a terminal, else the first line of stdin.
fn read_password(prompt: bool) -> Result<String, String> {
    let stdin = std::io::stdin();
    let tty = prompt && stdin.is_terminal();
    let stty = |arg: &str| {
        let _ = std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status();
    };
    if tty {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
        stty("-echo");
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if tty {
        stty("echo");
        eprintln!();
    }
    read.map_err(|e| e.to_string())?;
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
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
            let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if ev["type"] != "card_progress" {
                continue;
            }
            let d = &ev["data"];
            let uid = d["uid"].as_str().unwrap_or("");
            match d["step"].as_str().unwrap_or("") {
                "waiting_for_source" => eprintln!("place the customer's badge on the reader…"),
                "source_read" => eprintln!("badge {uid} read; remove it"),
                "waiting_for_blank" => eprintln!("place a blank card on the reader…"),
                "writing" => eprintln!("writing {uid}…"),
                "verified" => eprintln!("verified: the card reads back {uid}"),
                "failed" => eprintln!("failed: {}", d["message"].as_str().unwrap_or("")),
                _ => {}
            }
        }
    }
}

fn print_made(v: Value, as_json: bool) {
    if as_json {
        print_json(&v);
    } else {
        println!("{}", v["operation"]["id"]);
        eprintln!(
            "recorded {} #{} of {} for client {} on a {} blank ({} remaining)",
            v["operation"]["type"].as_str().unwrap_or(""),
            v["operation"]["id"],
            v["operation"]["uid"].as_str().unwrap_or(""),
            v["operation"]["client_id"],
            v["blank"].as_str().unwrap_or(""),
            v["remaining"]
        );
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn client_command(config: AgentConfig, command: Command) -> Result<(), String> {
    let local = Local::new(config.socket.clone())?;
    use reqwest::Method;
    match command {
        Command::Run { .. } => unreachable!("handled by run"),
        Command::Login {
            server,
            username,
            password_stdin,
        } => {
            let password = read_password(!password_stdin)?;
            let v = local
                .call(
                    Method::POST,
                    "/v1/login",
                    Some(json!({"server_url": server, "username": username, "password": password})),
                )
                .await?;
            eprintln!(
                "logged in as {} on device {} (token expires {})",
                v["username"].as_str().unwrap_or("?"),
                v["device_id"].as_str().unwrap_or("?"),
                v["expires_at"].as_str().unwrap_or("?")
            );
        }
        Command::Status { json } => {
            let v = local.call(Method::GET, "/v1/status", None).await?;
            if json {
                print_json(&v);
            } else {
                let s: StatusView = serde_json::from_value(v).map_err(|e| e.to_string())?;
                println!("device      {}", s.device_id);
                println!(
                    "server      {} ({}{})",
                    s.server_url.as_deref().unwrap_or("not set"),
                    if s.online { "online" } else { "offline" },
                    if s.ws_connected { ", live" } else { "" }
                );
                match (&s.login_required, &s.username) {
                    (None, Some(u)) => println!(
                        "login       {u}, token expires {}",
                        s.token_expires_at
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "?".into())
                    ),
                    (Some(why), _) => println!("login       NEEDED: {why}"),
                    (None, None) => println!("login       NEEDED"),
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
                for q in s.quotas {
                    println!(
                        "client {:>4}  {:>6} remaining  {}",
                        q.client_id,
                        q.remaining,
                        q.name.unwrap_or_default()
                    );
                }
            }
        }
        Command::Queue(QueueCmd::List {
            status,
            limit,
            json,
        }) => {
            let mut path = format!("/v1/queue?limit={limit}");
            if let Some(s) = status {
                path.push_str(&format!("&status={s}"));
            }
            let v = local.call(Method::GET, &path, None).await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{:>8}  {:<8}  {:<5}  {:>6}  {:<20}  {:<8}  ERROR",
                    "ID", "STATUS", "TYPE", "CLIENT", "UID", "ATTEMPTS"
                );
                for i in v.as_array().into_iter().flatten() {
                    println!(
                        "{:>8}  {:<8}  {:<5}  {:>6}  {:<20}  {:<8}  {}",
                        i["id"],
                        i["status"].as_str().unwrap_or(""),
                        i["type"].as_str().unwrap_or(""),
                        i["client_id"],
                        i["uid"].as_str().unwrap_or(""),
                        i["attempts"],
                        i["last_error"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Command::Queue(QueueCmd::Retry) => {
            let v = local.call(Method::POST, "/v1/queue/retry", None).await?;
            eprintln!("{} failed operation(s) queued again", v["retried"]);
        }
        Command::Sync => {
            let v = local.call(Method::POST, "/v1/sync", None).await?;
            eprintln!(
                "synced {}, failed {}, still pending {}",
                v["synced"], v["failed"], v["pending"]
            );
        }
        Command::Record(cmd) => {
            let (t, a) = match cmd {
                RecordCmd::Copy(a) => ("copy", a),
                RecordCmd::Write(a) => ("write", a),
            };
            let v = local
                .call(
                    Method::POST,
                    "/v1/operations",
                    Some(json!({"type": t, "client_id": a.client, "uid": a.uid})),
                )
                .await?;
            if a.json {
                print_json(&v);
            } else {
                println!("{}", v["operation"]["id"]);
                eprintln!(
                    "recorded {t} #{} for client {} ({} remaining)",
                    v["operation"]["id"], a.client, v["remaining"]
                );
            }
        }
        Command::Nfc(NfcCmd::List { json: as_json }) => {
            let v = local.call(Method::GET, "/v1/nfc/readers", None).await?;
            if as_json {
                print_json(&v);
            } else {
                for r in v["readers"].as_array().into_iter().flatten() {
                    println!("{}", r.as_str().unwrap_or_default());
                }
            }
        }
        Command::Nfc(NfcCmd::Read { json: as_json }) => {
            eprintln!("place a card on the reader…");
            let v = local.call(Method::POST, "/v1/nfc/read", None).await?;
            if as_json {
                print_json(&v);
            } else {
                println!(
                    "UID {}  ATQA {}  SAK {}  {}",
                    v["uid"].as_str().unwrap_or(""),
                    v["atqa"].as_str().unwrap_or(""),
                    v["sak"].as_str().unwrap_or(""),
                    v["family"].as_str().unwrap_or("")
                );
            }
        }
        Command::Copy {
            client,
            json: as_json,
        } => {
            let progress = tokio::spawn(print_card_progress(subscribe(&local).await));
            let result = local
                .call(Method::POST, "/v1/copy", Some(json!({"client_id": client})))
                .await;
            progress.abort();
            print_made(result?, as_json);
        }
        Command::Write {
            client,
            uid,
            json: as_json,
        } => {
            let progress = tokio::spawn(print_card_progress(subscribe(&local).await));
            let result = local
                .call(
                    Method::POST,
                    "/v1/write-card",
                    Some(json!({"client_id": client, "uid": uid})),
                )
                .await;
            progress.abort();
            print_made(result?, as_json);
        }
        Command::Events => {
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
        }
    }
    Ok(())
}
