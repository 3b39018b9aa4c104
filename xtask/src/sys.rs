//! Processes, packages and signals for xtask.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use propass_test_support::ProcessGuard;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ctrl-C and SIGTERM reach the whole process group: the children stop on
/// their own, and xtask only notes it, so it can clean up after them.
pub fn install_signal_handler() {
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
}

/// Whether Ctrl-C or SIGTERM was received.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The workspace root.
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `cargo` from the environment cargo set, run at the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// A built binary under target/.
pub fn target_bin(profile_dir: &str, name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join(profile_dir).join(name)
}

/// Runs a command to completion; `Ok(success)`.
pub fn run_status(cmd: &mut Command) -> Result<bool, String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    Ok(status.success())
}

/// Runs a command, feeding `stdin`, and returns its stdout; its stderr is passed through.
pub fn output(cmd: &mut Command, stdin: Option<&str>) -> Result<String, String> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{:?} {:?} failed ({})",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| e.to_string())
}

/// Finds `"id": N` of the object whose `"name"` is `name` in `client list --json` output.
pub fn json_find_id(json: &str, name: &str) -> Option<String> {
    let needle = format!("\"name\": \"{name}\"");
    let at = json.find(&needle)?;
    let obj_start = json[..at].rfind('{')?;
    let obj = &json[obj_start..];
    let id_at = obj.find("\"id\":")? + 5;
    let id: String = obj[id_at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    (!id.is_empty()).then_some(id)
}

/// Polls `ready` until it holds or `timeout` passes (or Ctrl-C). xtask is
/// synchronous and stops on Ctrl-C, hence not the test-support `eventually`.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !interrupted() {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ready()
}

/// Polls `GET path` on `addr` until it answers 200 or the deadline passes.
pub fn wait_http_ok(addr: &str, path: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !interrupted() {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            let mut buf = String::new();
            if s.write_all(req.as_bytes()).is_ok()
                && s.read_to_string(&mut buf).is_ok()
                && buf.starts_with("HTTP/1.1 200")
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

pub use propass_test_support::TempDir;

/// Whether we run as root (then we may install packages and must run PostgreSQL as `postgres`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Whether apt can install a real Chromium here: Debian's `chromium`; Ubuntu
/// has only `chromium-browser`, a transitional package for the snap, which
/// containers and chroots cannot run.
pub fn distribution_has_chromium() -> bool {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    !release.lines().any(|l| l.trim() == "ID=ubuntu")
}

pub fn apt_install(pkgs: &[&str]) -> Result<(), String> {
    let list = pkgs.join(" ");
    if !is_root() {
        return Err(format!("missing system packages; install them with:\n\n    sudo apt-get update && sudo apt-get install -y {list}\n"));
    }
    eprintln!("xtask: installing {list} with apt-get…");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !apt(&["update", "-q"]) {
        return Err("apt-get update failed".into());
    }
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(pkgs);
    if !apt(&args) {
        return Err(format!("apt-get install {list} failed"));
    }
    Ok(())
}

/// Node.js and npm (from Debian when missing), then `npm ci` in `dir`: the
/// exact versions of its lock file, from the npm registry.
pub fn npm_ci(dir: &Path, whose: &str) -> Result<(), String> {
    if !on_path("node") || !on_path("npm") {
        apt_install(&["nodejs", "npm"])?;
    }
    node_is_recent_enough()?;
    eprintln!("xtask: installing {whose} npm dependencies…");
    let ok = run_status(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir),
    )?;
    if ok {
        Ok(())
    } else {
        Err(format!("npm ci failed in {}", dir.display()))
    }
}

/// The oldest Node.js major the seed check (TypeScript 5.9) and the browser
/// test (playwright-core 1.61) run on: Debian 12 and Ubuntu 24.04 ship 18,
/// Ubuntu 22.04 ships 12.
const NODE_MIN_MAJOR: u32 = 18;

fn node_is_recent_enough() -> Result<(), String> {
    let out = Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("node: {e}"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let major = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(m) if m >= NODE_MIN_MAJOR => Ok(()),
        _ => Err(format!(
            "Node.js {version} is too old: the seed client's check and the dashboard's browser test need \
             Node.js {NODE_MIN_MAJOR} or newer (install a newer nodejs, e.g. from NodeSource); \
             `--no-compat` skips only the seed check"
        )),
    }
}

/// `cargo SUBCOMMAND` (a cargo tool such as deb or deny), installed into
/// ~/.cargo/bin from crates.io at `version` when missing.
pub fn ensure_cargo_tool(subcommand: &str, krate: &str, version: &str) -> Result<(), String> {
    let has = || {
        Command::new("cargo")
            .args([subcommand, "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has() {
        return Ok(());
    }
    eprintln!("xtask: installing {krate} (once, a few minutes)…");
    if !run_status(cargo().args(["install", krate, "--locked", "--version", version]))? || !has() {
        return Err(format!("cannot install {krate} (cargo install {krate})"));
    }
    Ok(())
}

/// Whether a program is on PATH.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Guard {
    child: std::sync::Mutex<ProcessGuard>,
    what: &'static str,
}

impl Guard {
    /// Starts `cmd`.
    pub fn spawn(cmd: &mut Command, what: &'static str) -> Result<Self, String> {
        Ok(Self {
            child: std::sync::Mutex::new(ProcessGuard::spawn(cmd, what)?),
            what,
        })
    }

    /// The first line the process prints on its (piped) stdout.
    pub fn first_line(&self) -> Result<String, String> {
        use std::io::BufRead;
        let mut c = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let out = c
            .child()
            .stdout
            .take()
            .ok_or(format!("{}: stdout is not piped", self.what))?;
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let line = line.trim().to_owned();
        if line.is_empty() {
            return Err(format!("{} printed nothing", self.what));
        }
        Ok(line)
    }

    /// `Some(message)` when the process has exited (unless we are stopping).
    pub fn exited(&self) -> Option<String> {
        let mut c = self.child.lock().unwrap_or_else(|p| p.into_inner());
        match c.child().try_wait() {
            Ok(Some(status)) if !interrupted() => {
                Some(format!("{} exited unexpectedly ({status})", self.what))
            }
            _ => None,
        }
    }
}
