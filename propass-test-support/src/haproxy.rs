//! The shipped load-balancer example (`deploy/haproxy.cfg`), made runnable
//! here: its bind moved to a loopback port (TLS with a certificate made for
//! the test, or plain HTTP), its example backends replaced by the instances
//! under test. Everything else — balance, health checks, timeouts, WebSocket
//! tunnel, headers — is the shipped text.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::ProcessGuard;

/// Debian's `haproxy` running `config` in the foreground (its log lines,
/// written to stdout, dropped), stopped when the guard drops.
pub fn spawn_haproxy(config: &Path) -> Result<ProcessGuard, String> {
    if Command::new("haproxy").arg("-v").output().is_err() {
        return Err("haproxy is missing: cargo xtask test installs it (Debian's haproxy)".into());
    }
    ProcessGuard::spawn(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(config)
            .stdout(Stdio::null()),
        "haproxy",
    )
}

/// `shipped` bound to `port` on loopback — ending TLS with `tls_pem` (the
/// certificate chain and its key in one PEM file, as HAProxy's `crt` wants)
/// when given — with `servers` (`host:port`) as its backends.
pub fn haproxy_config(
    shipped: &str,
    port: u16,
    tls_pem: Option<&Path>,
    servers: &[String],
) -> String {
    let mut out = String::new();
    let mut servers_written = false;
    for line in shipped.lines() {
        let t = line.trim_start();
        if t.starts_with("bind ") {
            assert!(t.contains(" ssl crt "), "the shipped bind ends TLS: {t}");
            match tls_pem {
                Some(pem) => out.push_str(&format!(
                    "    bind 127.0.0.1:{port} ssl crt {}\n",
                    pem.display()
                )),
                None => out.push_str(&format!("    bind 127.0.0.1:{port}\n")),
            }
        } else if t.starts_with("server ") {
            if !servers_written {
                for (i, s) in servers.iter().enumerate() {
                    out.push_str(&format!(
                        "    server propass{} {s} check inter 2s fall 2 rise 1\n",
                        i + 1
                    ));
                }
                servers_written = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
