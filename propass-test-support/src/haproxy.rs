//! The shipped load-balancer example (`deploy/haproxy.cfg`), made runnable
//! here: its TLS bind replaced by a plain one on a loopback port, its
//! example backends by the instances under test. Everything else — balance,
//! health checks, timeouts, WebSocket tunnel — is the shipped text.

/// `shipped` with a plain-HTTP bind on `port` and `servers` (`host:port`)
/// as its backends.
pub fn haproxy_config(shipped: &str, port: u16, servers: &[String]) -> String {
    let mut out = String::new();
    let mut servers_written = false;
    for line in shipped.lines() {
        let t = line.trim_start();
        if t.starts_with("bind ") {
            out.push_str(&format!("    bind 127.0.0.1:{port}\n"));
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
