//! `cargo xtask demo`: a throwaway PostgreSQL, the server on
//! 127.0.0.1:5000 with a demo admin and client, an emulated PN532 with
//! scripted taps, and a kiosk agent that copies three badges at it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::pg::Cluster;
use crate::sys::{self, interrupted, Guard};

/// Runs until Ctrl-C.
pub fn run() -> Result<(), String> {
    crate::setup::ensure_packages(crate::setup::Needs::Build)?;
    crate::build_release_binaries()?;
    let server = sys::target_bin("release", "propass-server");
    let agent = sys::target_bin("release", "propass-agent");
    // Always a throwaway cluster: the demo resets the admin's password.
    let cluster = Cluster::start(true)?;
    let url = cluster.url();
    let client_id = seed(&server, &url)?;

    let bind = std::env::var("PROPASS_BIND").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let base = format!("http://{bind}");
    let server_proc = start_server(&server, &url, &bind)?;
    let (emulator_proc, pty) = start_emulator()?;
    let reader = format!("pn532_uart:{pty}");
    let state = sys::TempDir::new("propass-demo-agent")
        .map_err(|e| format!("cannot create a state directory: {e}"))?;
    let kiosk = Kiosk {
        bin: agent.clone(),
        socket: state.path().join("agent.sock"),
    };
    let agent_proc = kiosk.start(state.path(), &base, &reader)?;
    // The operator's step for a new kiosk: a one-time enrollment code.
    let enroll = ["device", "enroll", "--name", "Demo kiosk", "--clients"];
    let code = server_cli(&server, &url, &[&enroll[..], &[&client_id]].concat(), None)?;
    kiosk.copy_badges(&base, code.trim(), &client_id, &reader)?;
    println!(
        "{}",
        server_cli(&server, &url, &["client", "list"], None)?.trim_end()
    );

    if !wait_online(&server, &url)? {
        eprintln!("xtask: WARNING: the demo kiosk is not online yet; the dashboard will show it once it connects");
    }
    print_summary(&Summary {
        base: &base,
        bind: &bind,
        url: &url,
        client_id: &client_id,
        pty: &pty,
        reader: &reader,
        agent: &kiosk,
        server: &server,
    });
    while !interrupted() {
        if let Some(e) = server_proc.exited().or_else(|| agent_proc.exited()) {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The kiosk stops before the reader it holds, the server last.
    drop(agent_proc);
    drop(emulator_proc);
    drop(server_proc);
    eprintln!("xtask: demo stopped");
    Ok(())
}

/// Whether the dashboard's Fleet view shows the demo kiosk online, waiting
/// up to 15 s for it (false when it is not, or on Ctrl-C).
fn wait_online(server: &Path, url: &str) -> Result<bool, String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = server_cli(server, url, &["device", "list", "--json"], None)?;
        let fleet: serde_json::Value = serde_json::from_str(&list).map_err(|e| e.to_string())?;
        let up = fleet.as_array().is_some_and(|ds| {
            ds.iter()
                .any(|d| d["name"] == "Demo kiosk" && d["health"]["online"] == true)
        });
        if up || Instant::now() > deadline || interrupted() {
            return Ok(up);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn server_cli(
    server: &Path,
    url: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, String> {
    let mut cmd = Command::new(server);
    cmd.args(args).env("DATABASE_URL", url);
    sys::output(&mut cmd, stdin)
}

/// The admin (admin / admin123) and the demo client; returns the client's id.
fn seed(server: &Path, url: &str) -> Result<String, String> {
    let cli = |args: &[&str], stdin| server_cli(server, url, args, stdin);
    cli(&["migrate"], None)?;
    cli(
        &[
            "user",
            "add",
            "admin",
            "--role",
            "admin",
            "--password-stdin",
            "--update",
        ],
        Some("admin123\n"),
    )?;
    let clients = cli(&["client", "list", "--json"], None)?;
    match sys::json_find_id(&clients, "Demo Client") {
        Some(id) => Ok(id),
        None => Ok(
            cli(&["client", "add", "Demo Client", "--quota", "100"], None)?
                .trim()
                .to_owned(),
        ),
    }
}

fn start_server(server: &Path, url: &str, bind: &str) -> Result<Guard, String> {
    let proc_ = Guard::spawn(
        Command::new(server)
            .args(["serve", "--dev", "--bind", bind])
            .env("DATABASE_URL", url),
        "the server",
    )?;
    if !sys::wait_http_ok(bind, "/health", Duration::from_secs(30)) {
        return Err(format!(
            "the server did not become healthy at http://{bind}/health (is port {bind} in use?)"
        ));
    }
    Ok(proc_)
}

/// An emulated PN532 reader with scripted taps: badges, then Gen1a blanks.
/// Returns it with the pseudo-terminal it serves.
fn start_emulator() -> Result<(Guard, String), String> {
    let mut emulator = Command::new(sys::target_bin("release/examples", "pn532-emulator"));
    emulator.args(["--demo-taps", "3"]).stdout(Stdio::piped());
    let proc_ = Guard::spawn(&mut emulator, "the reader emulator")?;
    let pty = proc_.first_line()?;
    Ok((proc_, pty))
}

/// The demo kiosk: the agent binary and its local socket.
struct Kiosk {
    bin: PathBuf,
    socket: PathBuf,
}

impl Kiosk {
    fn socket_arg(&self) -> String {
        self.socket.to_string_lossy().into_owned()
    }

    fn cli(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--socket", &self.socket_arg()]).args(args);
        sys::output(&mut cmd, stdin)
    }

    /// The agent with its own state directory and the reader; waits for its socket.
    fn start(&self, state: &Path, base: &str, reader: &str) -> Result<Guard, String> {
        let proc_ = Guard::spawn(
            Command::new(&self.bin)
                .args(["run", "--state-dir"])
                .arg(state)
                .args(["--socket", &self.socket_arg(), "--server", base])
                .env("PROPASS_READER", reader)
                .env_remove("PROPASS_AGENT_CONFIG"),
            "the agent",
        )?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() {
            if Instant::now() > deadline {
                return Err("the agent did not start".into());
            }
            if let Some(e) = proc_.exited() {
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(proc_)
    }

    /// Enrolls with `code`, copies three badges at the scripted reader, syncs.
    fn copy_badges(
        &self,
        base: &str,
        code: &str,
        client_id: &str,
        reader: &str,
    ) -> Result<(), String> {
        self.cli(&["enroll", "--server", base, "--code", code], None)?;
        self.cli(&["sync"], None)?;
        println!();
        println!("the kiosk copies three badges at the emulated reader ({reader}):");
        for _ in 0..3 {
            self.cli(&["copy", "--client", client_id], None)?;
            // The customer takes the new card; the next one steps up.
            std::thread::sleep(Duration::from_secs(3));
        }
        self.cli(&["sync"], None)?;
        println!();
        println!("{}", self.cli(&["status"], None)?.trim_end());
        Ok(())
    }
}

struct Summary<'a> {
    base: &'a str,
    bind: &'a str,
    url: &'a str,
    client_id: &'a str,
    pty: &'a str,
    reader: &'a str,
    agent: &'a Kiosk,
    server: &'a Path,
}

fn print_summary(s: &Summary<'_>) {
    let (base, client_id) = (s.base, s.client_id);
    let agent_bin = s.agent.bin.display();
    let socket = s.agent.socket_arg();
    println!();
    println!("PROPASS demo is running");
    println!(
        "  server      {base}   (health: {base}/health, WebSocket: ws://{}/ws)",
        s.bind
    );
    println!("  dashboard   {base}/admin   (open it in a browser; log in as admin / admin123:");
    println!("              the demo kiosk is on the Fleet view, its copies in the Live feed)");
    println!("  database    {}", s.url);
    println!("  login       admin / admin123   (role admin)");
    println!("  client      #{client_id} \"Demo Client\" (3 badges copied by the demo kiosk)");
    println!(
        "  reader      emulated PN532 at {} (libnfc: {})",
        s.pty, s.reader
    );
    println!("  agent       {agent_bin} --socket {socket} status");
    println!("              {agent_bin} --socket {socket} record copy --client {client_id} --uid 04CAFE01");
    println!("              {agent_bin} --socket {socket} events      (live events, NDJSON)");
    println!(
        "  operator    DATABASE_URL={} {} quota add {client_id} 10 --reason \"order 42\"",
        s.url,
        s.server.display()
    );
    println!("Press Ctrl-C to stop everything.");
}
