//! The seed client compatibility check: the integration guide's own
//! TypeScript SyncService and WebSocketService, unchanged, against the real
//! server binary (see `compat/run.cjs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::pg::psql;
use crate::sys::{self, root, run_status};

/// The integration guide, where the developers' shared folder keeps it.
const SEED_GUIDE: &str = "../shared/seed/000_cdcc766ee7fc6347.txt";

/// Checks that `compat/seed/*.ts` are the guide's code, byte for byte.
fn check_vendored_copy(compat: &Path) -> Result<(), String> {
    let guide = root().join(SEED_GUIDE);
    let Ok(text) = std::fs::read_to_string(&guide) else {
        eprintln!(
            "xtask: {} not found; using compat/seed as it is",
            guide.display()
        );
        return Ok(());
    };
    for name in ["SyncService.ts", "WebSocketService.ts"] {
        let marker = format!("/{name}`\n\n```typescript\n");
        let start = text
            .find(&marker)
            .ok_or(format!("{name} not found in the seed guide"))?
            + marker.len();
        let end = text[start..]
            .find("```")
            .ok_or("unterminated code block in the seed guide")?
            + start;
        let vendored =
            std::fs::read_to_string(compat.join("seed").join(name)).map_err(|e| e.to_string())?;
        if vendored != text[start..end] {
            return Err(format!(
                "compat/seed/{name} differs from the seed guide's code"
            ));
        }
    }
    Ok(())
}

/// Runs the check against the debug server binary (built by `cargo test`).
pub fn run(database_url: &str) -> Result<(), String> {
    let compat: PathBuf = root().join("compat");
    check_vendored_copy(&compat)?;
    sys::npm_ci(&compat, "the seed client's")?;
    let server = sys::target_bin("debug", "propass-server");
    if !server.is_file() {
        return Err(format!(
            "{} is missing: build it with cargo build -p propass-server",
            server.display()
        ));
    }
    // A database of its own, dropped after the check: a server given with
    // DATABASE_URL keeps nothing of it.
    let db = ScratchDatabase::create(database_url)?;
    let database_url = db.url.as_str();
    let seed = seed_database(&server, database_url)?;
    let bind = format!("127.0.0.1:{}", propass_test_support::free_port());
    let _server = sys::Guard::spawn(
        Command::new(&server)
            .args(["serve", "--dev", "--bind", &bind])
            .env("DATABASE_URL", database_url)
            .env("PROPASS_LOG", "warn"),
        "the server",
    )?;
    if !sys::wait_http_ok(&bind, "/health", Duration::from_secs(30)) {
        return Err("the server did not become healthy".into());
    }
    let ok = run_status(
        Command::new("node")
            .arg("run.cjs")
            .args([
                &format!("http://{bind}"),
                "seed-compat",
                &seed.password,
                &seed.client,
                "10",
                &seed.device,
            ])
            .current_dir(&compat),
    )?;
    if ok {
        Ok(())
    } else {
        Err("the seed client failed against the server".into())
    }
}

/// A database of the check's own in the server of `base`, dropped with it
/// (commented like the tests' databases, so a killed run's is recognised).
/// xtask drives `psql` and has no PostgreSQL client or async runtime, hence
/// not the test-support `TestDatabase`.
struct ScratchDatabase {
    base: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    fn create(base: &str) -> Result<Self, String> {
        let name = format!("propass_compat_{}", std::process::id());
        // A leftover of a killed run that had the same process id.
        psql(
            base,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )?;
        psql(base, &format!("CREATE DATABASE {name}"))?;
        let owner = propass_test_support::owner_comment().replace('\'', "");
        psql(base, &format!("COMMENT ON DATABASE {name} IS '{owner}'"))?;
        Ok(Self {
            url: with_database(base, &name),
            base: base.to_owned(),
            name,
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = psql(&self.base, &sql) {
            eprintln!("xtask: warning: database {} not dropped: {e}", self.name);
        }
    }
}

/// `url` naming database `name` instead of its own (query string kept).
fn with_database(url: &str, name: &str) -> String {
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let authority = head.find("://").map_or(0, |i| i + 3);
    let server = head[authority..]
        .find('/')
        .map_or(head, |i| &head[..authority + i]);
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// The account, client and device the seed client uses.
struct Seed {
    password: String,
    client: String,
    device: String,
}

/// The documented steps for a seed kiosk (docs/operations.md): it logs in
/// with a user of role `kiosk` (`seed-compat`, created or reset here), and its
/// device id is registered ahead with the clients it serves (else it waits
/// for `device approve` after its first login). Plus a fresh client with a
/// quota of 10.
fn seed_database(server: &Path, database_url: &str) -> Result<Seed, String> {
    let cli = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new(server);
        cmd.args(args).env("DATABASE_URL", database_url);
        sys::output(&mut cmd, stdin)
    };
    let stamp = std::process::id();
    let password = format!("compat-{stamp}-pass");
    cli(&["migrate"], None)?;
    cli(
        &[
            "user",
            "add",
            "seed-compat",
            "--role",
            "kiosk",
            "--password-stdin",
            "--update",
        ],
        Some(&format!("{password}\n")),
    )?;
    let name = format!("Seed compat {stamp}");
    let client = cli(&["client", "add", &name, "--quota", "10"], None)?
        .trim()
        .to_owned();
    // In the guide's format: HOSTNAME_<base-36 time>, upper case.
    let device = format!("SEED-COMPAT_{stamp:X}");
    cli(
        &[
            "device",
            "add",
            &device,
            "--name",
            &name,
            "--clients",
            &client,
        ],
        None,
    )?;
    Ok(Seed {
        password,
        client,
        device,
    })
}
