//! A throwaway PostgreSQL cluster: initdb in a temporary directory, started on
//! a free loopback port, stopped and deleted on drop (also after a failure or
//! Ctrl-C). As root, it runs as the `postgres` system user.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::sys::{is_root, on_path};

/// The directory holding `initdb` and `pg_ctl`: on PATH, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Option<PathBuf> {
    if on_path("initdb") && on_path("pg_ctl") {
        let path = std::env::var_os("PATH")?;
        return std::env::split_paths(&path).find(|d| d.join("initdb").is_file());
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, d)| d)
}

/// A running cluster.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    /// Creates and starts a cluster. `fsync = false` is for tests only.
    pub fn start(fsync: bool) -> Result<Self, String> {
        let bin = find_bin_dir().ok_or("PostgreSQL server binaries not found (initdb)")?;
        // PostgreSQL refuses to run as root.
        let as_postgres = is_root();
        if as_postgres {
            ensure_postgres_user()?;
        }
        let mut cluster = Self {
            dir: Self::make_dir(as_postgres)?,
            bin,
            port: 0,
            as_postgres,
        };
        cluster.initdb()?;
        cluster.write_tls_files()?;
        cluster.port = free_port()?;
        cluster.launch(fsync)?;
        eprintln!(
            "xtask: PostgreSQL running on 127.0.0.1:{} (data in {})",
            cluster.port,
            cluster.dir.display()
        );
        Ok(cluster)
    }

    fn make_dir(as_postgres: bool) -> Result<PathBuf, String> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("propass-pg-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .map(|s| s.success());
            if !matches!(ok, Ok(true)) {
                return Err("cannot chown the cluster directory to postgres".into());
            }
        }
        Ok(dir)
    }

    fn initdb(&self) -> Result<(), String> {
        let data = self.dir.join("data");
        self.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        )
    }

    /// The CA that signed the cluster's TLS certificate (for `sslrootcert`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A throwaway CA and a certificate for 127.0.0.1 and localhost, so that
    /// the tests can check the server's `sslmode=verify-full` link. Plain
    /// connections keep working (`ssl=on` offers TLS, it does not force it).
    fn write_tls_files(&self) -> Result<(), String> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let err = |e: rcgen::Error| format!("cannot make the cluster's TLS certificate: {e}");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(err)?)
            .map_err(err)?;
        let key = KeyPair::generate().map_err(err)?;
        let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(err)?
            .signed_by(&key, &ca)
            .map_err(err)?;
        let write = |name: &str, text: String, mode: u32| -> Result<(), String> {
            use std::os::unix::fs::PermissionsExt;
            let file = self.dir.join(name);
            std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("{}: {e}", file.display()))?;
            if self.as_postgres {
                let ok = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&file)
                    .status()
                    .map(|s| s.success());
                if !matches!(ok, Ok(true)) {
                    return Err(format!("cannot chown {} to postgres", file.display()));
                }
            }
            Ok(())
        };
        write("ca.pem", ca.pem(), 0o644)?;
        write("server.pem", cert.pem(), 0o644)?;
        // PostgreSQL refuses a key others can read.
        write("server.key", key.serialize_pem(), 0o600)
    }

    fn launch(&self, fsync: bool) -> Result<(), String> {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync={} -c max_connections=300 -c shared_buffers=128MB \
             -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            self.port,
            path(&self.dir),
            if fsync { "on" } else { "off" },
            path(&self.dir.join("server.pem")),
            path(&self.dir.join("server.key")),
        );
        let log = self.dir.join("postgres.log");
        let args = [
            "-D",
            path(&data),
            "-o",
            &opts,
            "-l",
            path(&log),
            "-w",
            "-t",
            "60",
            "start",
        ];
        self.run("pg_ctl", &args).map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{e}\n{tail}")
        })
    }

    /// The command (program and arguments) that restarts the cluster with
    /// its options, waiting until it accepts connections again: for the
    /// chaos run's "PostgreSQL restarts" fault.
    pub fn restart_command(&self) -> Vec<String> {
        let data = self.dir.join("data");
        let pg_ctl = self.bin.join("pg_ctl").display().to_string();
        let mut argv: Vec<String> = if self.as_postgres {
            vec![
                "runuser".into(),
                "-u".into(),
                "postgres".into(),
                "--".into(),
                pg_ctl,
            ]
        } else {
            vec![pg_ctl]
        };
        argv.extend(
            ["-D", path(&data), "-m", "fast", "-w", "-t", "60", "restart"]
                .iter()
                .map(|s| s.to_string()),
        );
        argv
    }

    /// The superuser URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, prog: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(prog);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        // Started by pg_ctl, the server must not hold our stdout: a caller
        // reading it (a pipe) would never see it close.
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        let out = out.map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{prog} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        if self
            .run(
                "pg_ctl",
                &["-D", path(&data), "-m", "fast", "-w", "-t", "20", "stop"],
            )
            .is_err()
        {
            let _ = self.run(
                "pg_ctl",
                &["-D", path(&data), "-m", "immediate", "-w", "stop"],
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        eprintln!("xtask: PostgreSQL stopped and removed");
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn free_port() -> Result<u16, String> {
    Ok(propass_test_support::free_port())
}

fn ensure_postgres_user() -> Result<(), String> {
    let exists = Command::new("id")
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success());
    if matches!(exists, Ok(true)) {
        return Ok(());
    }
    let ok = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "postgres",
        ])
        .status();
    match ok {
        Ok(s) if s.success() => Ok(()),
        _ => Err("PostgreSQL refuses to run as root and there is no postgres user; create one with: useradd --system postgres".into()),
    }
}

/// psql (PostgreSQL's client, which xtask installs): on PATH, else next to
/// `initdb`.
fn psql_bin() -> Result<PathBuf, String> {
    if on_path("psql") {
        return Ok(PathBuf::from("psql"));
    }
    find_bin_dir()
        .map(|d| d.join("psql"))
        .filter(|p| p.is_file())
        .ok_or_else(|| "psql not found (PostgreSQL's client)".to_owned())
}

/// Runs one SQL statement with psql; answers its unaligned output.
pub fn psql_output(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(psql_bin()?)
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("psql failed: {sql}"))
    }
}

/// Runs one SQL statement with psql.
pub fn psql(url: &str, sql: &str) -> Result<(), String> {
    psql_output(url, sql).map(drop)
}

/// Drops the test databases in the server of `url` that a run on this
/// machine left behind when it was killed (see
/// `propass_test_support::abandoned`); answers their names.
pub fn drop_abandoned(url: &str) -> Result<Vec<String>, String> {
    let listed = psql_output(
        url,
        &format!(
            "SELECT datname || ' ' || shobj_description(oid, 'pg_database') FROM pg_database \
             WHERE shobj_description(oid, 'pg_database') LIKE '{}%'",
            propass_test_support::OWNER_PREFIX
        ),
    )?;
    let mut dropped = Vec::new();
    for line in listed.lines() {
        let Some((name, comment)) = line.split_once(' ') else {
            continue;
        };
        let safe = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if safe && propass_test_support::abandoned(comment) {
            psql(url, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
            dropped.push(name.to_owned());
        }
    }
    Ok(dropped)
}
