//! `cargo xtask package [--check]`: Debian packages of propass-server and
//! propass-agent (cargo-deb, installed into ~/.cargo/bin when missing), in
//! `target/debian/`. `--check` (also run by `cargo xtask test`) checks them
//! on this machine: contents and modes, conffiles, and — as root — install,
//! the units under `systemd-analyze verify`, the agent answering
//! `--version`, the agent's refusal to be removed while its queue cannot be
//! accounted for, and a purge that leaves nothing behind. That cycle purges
//! with the state directory, so it is skipped (with a warning) on a machine
//! where PROPASS is already installed: a test run never throws away a real
//! kiosk's queue.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sys::{self, cargo, root, run_status};

/// The packages, as (package, binary) pairs.
const PACKAGES: [&str; 2] = ["propass-server", "propass-agent"];

/// The agent's state directory: its queue of unsynced copies.
const STATE_DIR: &str = "/var/lib/propass";

/// What a purge must leave no trace of.
const FOOTPRINT: &[&str] = &[
    "/usr/bin/propass-server",
    "/usr/bin/propass-agent",
    "/etc/propass",
    "/etc/modprobe.d/propass-blacklist-pn533.conf",
    "/lib/systemd/system/propass-server.service",
    "/lib/systemd/system/propass-agent.service",
    "/usr/lib/systemd/system/propass-server.service",
    "/usr/lib/systemd/system/propass-agent.service",
    "/etc/systemd/system/multi-user.target.wants/propass-server.service",
    "/etc/systemd/system/multi-user.target.wants/propass-agent.service",
    "/usr/share/doc/propass-server",
    "/usr/share/doc/propass-agent",
    "/var/lib/propass",
];

/// Builds both packages; answers their paths.
pub fn build() -> Result<Vec<PathBuf>, String> {
    crate::setup::ensure_packages(crate::setup::Needs::Build)?;
    sys::ensure_cargo_tool("deb", "cargo-deb", "^3")?;
    let out_dir = root().join("target/debian");
    let mut debs = Vec::new();
    for pkg in PACKAGES {
        eprintln!("xtask: building the {pkg} package…");
        let out = sys::output(
            cargo()
                .args(["deb", "-p", pkg, "--output"])
                .arg(&out_dir)
                .args(["--", "--locked"]),
            None,
        )?;
        let deb = out
            .lines()
            .rev()
            .find(|l| l.trim().ends_with(".deb"))
            .ok_or(format!("cargo deb did not say where the {pkg} package is"))?;
        debs.push(PathBuf::from(deb.trim()));
    }
    for d in &debs {
        eprintln!("xtask: built {}", d.display());
    }
    Ok(debs)
}

pub fn run(args: &[String]) -> Result<(), String> {
    let debs = build()?;
    if args.iter().any(|a| a == "--check") {
        check(&debs)?;
    }
    Ok(())
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    sys::output(cmd, None)
}

/// (mode, path) of every entry of a package, from `dpkg-deb -c`.
fn contents(deb: &Path) -> Result<Vec<(String, String)>, String> {
    let listing = sh(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    Ok(listing
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let mode = f.next()?.to_owned();
            let path = f.last()?.trim_start_matches('.').to_owned();
            Some((mode, path))
        })
        .collect())
}

fn expect_entry(
    entries: &[(String, String)],
    path_end: &str,
    mode: &str,
    deb: &Path,
) -> Result<(), String> {
    match entries.iter().find(|(_, p)| p.ends_with(path_end)) {
        Some((m, _)) if m == mode => Ok(()),
        Some((m, p)) => Err(format!(
            "{}: {p} has mode {m}, expected {mode}",
            deb.display()
        )),
        None => Err(format!("{}: no {path_end} in the package", deb.display())),
    }
}

/// Checks the packages' contents, then installs and purges them (as root).
pub fn check(debs: &[PathBuf]) -> Result<(), String> {
    let (server, agent) = (&debs[0], &debs[1]);
    check_contents(server, agent)?;
    eprintln!("xtask: package contents, modes, conffiles and dependencies: ok");
    if !sys::is_root() {
        eprintln!("xtask: WARNING: not root: the packages were NOT installed, verified and purged (run as root for that)");
        return Ok(());
    }
    let present = already_present()?;
    if !present.is_empty() {
        // The cycle purges with the state directory; on a machine that runs
        // PROPASS for real that would throw away a kiosk's unsynced copies.
        eprintln!(
            "xtask: WARNING: PROPASS is already installed here ({}): the packages were NOT \
             installed, verified and purged, so that its configuration and queue stay as they \
             are (purge it first, on a machine that holds nothing unsynced, to run that check)",
            present.join(", ")
        );
        return Ok(());
    }
    install_cycle(server, agent)
}

/// Files and their modes, conffiles and the agent's dependency on libnfc.
fn check_contents(server: &Path, agent: &Path) -> Result<(), String> {
    let s = contents(server)?;
    for (path, mode) in [
        ("/usr/bin/propass-server", "-rwxr-xr-x"),
        ("/etc/propass/server.toml", "-rw-r-----"),
        ("/system/propass-server.service", "-rw-r--r--"),
        ("/usr/share/doc/propass-server/operators.md", "-rw-r--r--"),
    ] {
        expect_entry(&s, path, mode, server)?;
    }
    let a = contents(agent)?;
    for (path, mode) in [
        ("/usr/bin/propass-agent", "-rwxr-xr-x"),
        ("/etc/propass/agent.toml", "-rw-r-----"),
        ("/etc/modprobe.d/propass-blacklist-pn533.conf", "-rw-r--r--"),
        ("/system/propass-agent.service", "-rw-r--r--"),
    ] {
        expect_entry(&a, path, mode, agent)?;
    }
    expect_conffiles(server, &["/etc/propass/server.toml"])?;
    expect_conffiles(
        agent,
        &[
            "/etc/propass/agent.toml",
            "/etc/modprobe.d/propass-blacklist-pn533.conf",
        ],
    )?;
    let control = sh(Command::new("dpkg-deb").arg("-f").arg(agent).arg("Depends"))?;
    if !control.contains("libnfc") {
        return Err(format!(
            "the agent does not depend on the distribution's libnfc: {control}"
        ));
    }
    Ok(())
}

fn expect_conffiles(deb: &Path, wanted: &[&str]) -> Result<(), String> {
    let conffiles = sh(Command::new("dpkg-deb").arg("-I").arg(deb).arg("conffiles"))?;
    match wanted
        .iter()
        .find(|c| !conffiles.lines().any(|l| l.trim() == **c))
    {
        Some(c) => Err(format!(
            "{}: {c} is not a conffile ({conffiles:?})",
            deb.display()
        )),
        None => Ok(()),
    }
}

/// What of an installation exists on this machine: packages dpkg knows
/// (installed, or removed with their conffiles), and the agent's state.
fn already_present() -> Result<Vec<String>, String> {
    let mut present = Vec::new();
    for pkg in PACKAGES {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${db:Status-Abbrev}", pkg])
            .output()
            .map_err(|e| format!("cannot run dpkg-query: {e}"))?;
        let status = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && !status.trim().is_empty() && !status.starts_with("un") {
            present.push(format!("{pkg} ({})", status.trim()));
        }
    }
    if Path::new(STATE_DIR).exists() {
        present.push(STATE_DIR.to_string());
    }
    Ok(present)
}

fn dpkg(args: &[&str], env: &[(&str, &str)]) -> Result<bool, String> {
    let mut cmd = Command::new("dpkg");
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_status(&mut cmd)
}

fn purge_all() -> Result<(), String> {
    let env = [("PROPASS_FORCE_REMOVE", "1"), ("PROPASS_PURGE_STATE", "1")];
    // dpkg ignores (exit 0) a package it does not know; a removed one
    // ("rc": its conffiles and state remain) is purged.
    for pkg in PACKAGES {
        if !dpkg(&["--purge", pkg], &env)? {
            return Err(format!("dpkg --purge {pkg} failed"));
        }
    }
    Ok(())
}

fn install_cycle(server: &Path, agent: &Path) -> Result<(), String> {
    purge_all()?;
    let (server_s, agent_s) = (server.display().to_string(), agent.display().to_string());
    if !dpkg(&["-i", &server_s, &agent_s], &[])? {
        return Err("dpkg -i of the packages failed".into());
    }
    let outcome = installed_checks();
    // Whatever happened, the machine is left as it was.
    let purged = purge_all();
    outcome?;
    purged?;
    let stray: Vec<&str> = FOOTPRINT
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect();
    if !stray.is_empty() {
        return Err(format!("dpkg --purge left {stray:?} behind"));
    }
    eprintln!("xtask: install, verify, refusal and purge of both packages: ok");
    Ok(())
}

fn installed_checks() -> Result<(), String> {
    let version = sh(Command::new("/usr/bin/propass-agent").arg("--version"))?;
    if !version.contains(env!("CARGO_PKG_VERSION")) {
        return Err(format!("propass-agent --version answered {version:?}"));
    }
    check_users_and_files()?;
    verify_units()?;
    check_removal()
}

/// The agent's user in the reader groups, the secrets' and configurations'
/// owners and modes, and both units enabled.
fn check_users_and_files() -> Result<(), String> {
    let groups = sh(Command::new("id").args(["-nG", "propass"]))?;
    for g in ["plugdev", "dialout"] {
        let exists = Command::new("getent")
            .args(["group", g])
            .output()
            .is_ok_and(|o| o.status.success());
        if exists && !groups.split_whitespace().any(|x| x == g) {
            return Err(format!("the agent's user is not in group {g} ({groups})"));
        }
    }
    for (path, want) in [
        ("/etc/propass/server.toml", "640 root propass-server"),
        ("/etc/propass/jwt-secret", "600 root root"),
        ("/etc/propass/agent.toml", "640 root propass"),
    ] {
        let got = sh(Command::new("stat").args(["-c", "%a %U %G", path]))?;
        if got.trim() != want {
            return Err(format!("{path}: {} (expected {want})", got.trim()));
        }
    }
    for unit in ["propass-server", "propass-agent"] {
        let wants = format!("/etc/systemd/system/multi-user.target.wants/{unit}.service");
        if !Path::new(&wants).exists() {
            return Err(format!("{unit} is not enabled ({wants} missing)"));
        }
    }
    Ok(())
}

/// `systemd-analyze verify` of both installed units, where it exists.
fn verify_units() -> Result<(), String> {
    if !sys::on_path("systemd-analyze") {
        eprintln!("xtask: WARNING: systemd-analyze not found: the units were not verified");
        return Ok(());
    }
    for unit in ["propass-server", "propass-agent"] {
        let path = ["/lib/systemd/system", "/usr/lib/systemd/system"]
            .iter()
            .map(|d| format!("{d}/{unit}.service"))
            .find(|p| Path::new(p).exists())
            .ok_or(format!("{unit}.service is not installed"))?;
        let out = Command::new("systemd-analyze")
            .args(["verify", &path])
            .output()
            .map_err(|e| e.to_string())?;
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() || said.contains(&format!("{unit}.service:")) {
            return Err(format!("systemd-analyze verify {path}:\n{said}"));
        }
    }
    eprintln!("xtask: systemd-analyze verify of both units: ok");
    Ok(())
}

/// Removal: refused while the queue cannot be accounted for; allowed with
/// nothing unsynced, keeping the queue; a purge keeps it too unless asked.
fn check_removal() -> Result<(), String> {
    // A queue the removal check cannot read is not thrown away.
    sh(Command::new("install").args([
        "-d",
        "-o",
        "propass",
        "-g",
        "propass",
        "-m",
        "700",
        "/var/lib/propass",
    ]))?;
    std::fs::write("/var/lib/propass/agent.db", b"not a database").map_err(|e| e.to_string())?;
    sh(Command::new("chown").args(["propass:propass", "/var/lib/propass/agent.db"]))?;
    if dpkg(&["-r", "propass-agent"], &[])? {
        return Err("dpkg -r removed an agent whose queue could not be accounted for".into());
    }
    if !Path::new("/usr/bin/propass-agent").exists() {
        return Err("the refused removal removed the agent anyway".into());
    }
    // A kiosk with nothing unsynced is removed, its queue kept until purged.
    std::fs::remove_file("/var/lib/propass/agent.db").map_err(|e| e.to_string())?;
    agent_creates_its_database()?;
    if !dpkg(&["-r", "propass-agent"], &[])? {
        return Err("dpkg -r refused an agent with nothing unsynced".into());
    }
    if !Path::new("/var/lib/propass/agent.db").exists() {
        return Err("removing the agent (not purging) threw its queue away".into());
    }
    // A purge keeps it too, unless asked (PROPASS_PURGE_STATE=1).
    if !dpkg(&["--purge", "propass-agent"], &[])? {
        return Err("dpkg --purge propass-agent failed".into());
    }
    if !Path::new("/var/lib/propass/agent.db").exists() {
        return Err("a purge not asked to threw the kiosk's queue away".into());
    }
    std::fs::remove_dir_all("/var/lib/propass").map_err(|e| e.to_string())
}

/// Runs the installed agent as its user until it has created its (empty)
/// database, then stops it.
fn agent_creates_its_database() -> Result<(), String> {
    let mut child = Command::new("runuser")
        .args(["-u", "propass", "--", "/usr/bin/propass-agent", "run"])
        .args([
            "--state-dir",
            "/var/lib/propass",
            "--socket",
            "/var/lib/propass/check.sock",
        ])
        .env("PROPASS_LOG", "warn")
        .spawn()
        .map_err(|e| e.to_string())?;
    let up = sys::wait_until(std::time::Duration::from_secs(20), || {
        Path::new("/var/lib/propass/check.sock").exists()
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    if up {
        Ok(())
    } else {
        Err("the installed agent did not start".into())
    }
}
