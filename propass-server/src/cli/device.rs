//! `propass-server device …`: the kiosk fleet's records — enrollment codes
//! for our agent, approval and pre-registration for the seed client,
//! assignment of clients, revocation.

use std::io::Write;

use chrono::Duration;
use clap::Subcommand;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use propass_protocol::{ClientId, DeviceId, DeviceStatus};

use super::{dberr, print_json};
use crate::auth::secrets;
use crate::clock::{Clock, SystemClock};
use crate::db;
use crate::db::devices::DeviceChangeError;
use crate::db::enrollment::NewCode;
use crate::rng::{OsRng, Rng};

/// Longest validity of an enrollment code, in hours (a code is a key to the fleet).
const MAX_CODE_HOURS: u32 = 24 * 30;

#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    /// List kiosks: status, online, name, clients served, agent version, backlog, flags, last contact
    List {
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Create a one-time enrollment code for our agent (`propass-agent enroll --code …`)
    Enroll {
        /// Name of the new kiosk, shown to operators
        #[arg(long)]
        name: Option<String>,
        /// Clients it will serve (comma-separated ids)
        #[arg(long, value_delimiter = ',')]
        clients: Vec<i64>,
        /// Re-enroll this known device (after a revocation or a credential reuse); only it may use the code
        #[arg(long)]
        device: Option<DeviceId>,
        /// Hours the code stays valid
        #[arg(long, default_value_t = 24)]
        valid_hours: u32,
        /// Print {"code", "expires_at"} as JSON
        #[arg(long)]
        json: bool,
    },
    /// Register a seed-client kiosk ahead of its first login: active, serving the given clients
    Add {
        /// The id the kiosk logs in with
        device_id: DeviceId,
        /// Name shown to operators
        #[arg(long)]
        name: Option<String>,
        /// Clients it serves (comma-separated ids)
        #[arg(long, value_delimiter = ',')]
        clients: Vec<i64>,
    },
    /// Approve a kiosk that logged in with a password and waits (pending → active)
    Approve {
        device_id: DeviceId,
        /// Clients it serves (comma-separated ids), added to any it has
        #[arg(long, value_delimiter = ',')]
        clients: Vec<i64>,
    },
    /// Change the clients a kiosk serves
    Assign {
        device_id: DeviceId,
        /// Clients to add (comma-separated ids)
        #[arg(long, value_delimiter = ',')]
        add: Vec<i64>,
        /// Clients to remove (comma-separated ids)
        #[arg(long, value_delimiter = ',')]
        remove: Vec<i64>,
    },
    /// Name a kiosk
    Rename { device_id: DeviceId, name: String },
    /// Revoke a kiosk: its tokens and open sockets stop at once
    Revoke { device_id: DeviceId },
    /// Undo a revocation (revoked → active)
    Restore { device_id: DeviceId },
    /// List the units each kiosk holds in lease, by client
    Leases {
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Take back a kiosk's unused lease (one client, or all): for a kiosk that
    /// will not come back. Copies it still makes offline are charged to the
    /// free units when they arrive, and flagged if there are none
    Reclaim {
        device_id: DeviceId,
        /// Only this client's lease
        #[arg(long)]
        client: Option<ClientId>,
    },
}

/// The audit action and subject of a command that changes something.
pub fn audited(cmd: &DeviceCmd) -> Option<(&'static str, String)> {
    Some(match cmd {
        DeviceCmd::List { .. } | DeviceCmd::Leases { .. } => return None,
        DeviceCmd::Enroll { name, device, .. } => (
            "device.enroll",
            match (device, name) {
                (Some(d), _) => format!("device:{d}"),
                (None, Some(n)) => format!("device-name:{n}"),
                (None, None) => "device:new".into(),
            },
        ),
        DeviceCmd::Add { device_id, .. } => ("device.add", format!("device:{device_id}")),
        DeviceCmd::Approve { device_id, .. } => ("device.approve", format!("device:{device_id}")),
        DeviceCmd::Assign { device_id, .. } => ("device.assign", format!("device:{device_id}")),
        DeviceCmd::Rename { device_id, .. } => ("device.rename", format!("device:{device_id}")),
        DeviceCmd::Revoke { device_id } => ("device.revoke", format!("device:{device_id}")),
        DeviceCmd::Restore { device_id } => ("device.restore", format!("device:{device_id}")),
        DeviceCmd::Reclaim { device_id, .. } => ("device.reclaim", format!("device:{device_id}")),
    })
}

/// Runs one `device` command; `fleet` says when a kiosk is offline or flagged.
pub async fn run(
    conn: &mut AsyncPgConnection,
    cmd: DeviceCmd,
    fleet: db::fleet::FleetPolicy,
) -> Result<(), String> {
    match cmd {
        DeviceCmd::List { json } => list(conn, json, fleet).await,
        DeviceCmd::Enroll {
            name,
            clients,
            device,
            valid_hours,
            json,
        } => enroll(conn, name, clients, device, valid_hours, json).await,
        DeviceCmd::Add {
            device_id,
            name,
            clients,
        } => add(conn, device_id, name, clients).await,
        DeviceCmd::Approve { device_id, clients } => approve(conn, device_id, clients).await,
        DeviceCmd::Assign {
            device_id,
            add,
            remove,
        } => assign(conn, device_id, add, remove).await,
        DeviceCmd::Rename { device_id, name } => rename(conn, device_id, name).await,
        DeviceCmd::Revoke { device_id } => {
            set_status(
                conn,
                device_id,
                DeviceStatus::Revoked,
                &[DeviceStatus::Active, DeviceStatus::Pending],
            )
            .await
        }
        DeviceCmd::Leases { json } => leases(conn, json).await,
        DeviceCmd::Reclaim { device_id, client } => reclaim(conn, device_id, client).await,
        DeviceCmd::Restore { device_id } => {
            set_status(
                conn,
                device_id,
                DeviceStatus::Active,
                &[DeviceStatus::Revoked],
            )
            .await
        }
    }
}

async fn add(
    conn: &mut AsyncPgConnection,
    device_id: DeviceId,
    name: Option<String>,
    clients: Vec<i64>,
) -> Result<(), String> {
    check_name(name.as_deref())?;
    db::devices::register(conn, &device_id, name.as_deref(), &clients)
        .await
        .map_err(change_err)?;
    eprintln!("device {device_id} registered, active, serving {clients:?}");
    Ok(())
}

async fn assign(
    conn: &mut AsyncPgConnection,
    device_id: DeviceId,
    add: Vec<i64>,
    remove: Vec<i64>,
) -> Result<(), String> {
    db::devices::assign(conn, &device_id, &add, &remove)
        .await
        .map_err(change_err)?;
    let now = db::devices::served_clients(conn, &device_id)
        .await
        .map_err(dberr)?;
    eprintln!("device {device_id} now serves {now:?}");
    Ok(())
}

async fn rename(
    conn: &mut AsyncPgConnection,
    device_id: DeviceId,
    name: String,
) -> Result<(), String> {
    check_name(Some(&name))?;
    if !db::devices::rename(conn, &device_id, &name)
        .await
        .map_err(dberr)?
    {
        return Err(format!("no device {device_id}"));
    }
    eprintln!("device {device_id} is now named {name:?}");
    Ok(())
}

/// Takes a kiosk's unused lease back; prints the units.
async fn reclaim(
    conn: &mut AsyncPgConnection,
    device_id: DeviceId,
    client: Option<ClientId>,
) -> Result<(), String> {
    if db::devices::state(conn, &device_id)
        .await
        .map_err(dberr)?
        .is_none()
    {
        return Err(format!("no device {device_id}"));
    }
    let returned = conn
        .transaction(async |conn| db::leases::release(conn, &device_id, client).await)
        .await
        .map_err(dberr)?;
    let units: i64 = returned.iter().map(|(_, u)| u).sum();
    println!("{units}");
    eprintln!("took back {units} unit(s) from {device_id}: {returned:?} (client, units)");
    Ok(())
}

fn change_err(e: DeviceChangeError) -> String {
    match e {
        DeviceChangeError::Db(e) => dberr(e),
        other => other.to_string(),
    }
}

fn check_name(name: Option<&str>) -> Result<(), String> {
    match name {
        Some(n) if n.is_empty() || n.len() > 128 || n.chars().any(char::is_control) => {
            Err("a device name is 1 to 128 printable characters".into())
        }
        _ => Ok(()),
    }
}

async fn list(
    conn: &mut AsyncPgConnection,
    json: bool,
    fleet: db::fleet::FleetPolicy,
) -> Result<(), String> {
    let rows = db::devices::list(conn).await.map_err(dberr)?;
    let mut health = db::fleet::health(conn, fleet, SystemClock.now())
        .await
        .map_err(dberr)?;
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["health"] = serde_json::to_value(health.remove(&r.device_id)).unwrap_or_default();
                v
            })
            .collect();
        return print_json(&v);
    }
    println!(
        "{:<32}  {:<20}  {:<8}  {:<7}  {:<8}  {:<16}  {:<10}  {:>7}  {:<24}  LAST SEEN",
        "DEVICE", "NAME", "STATUS", "ONLINE", "ENROLLED", "CLIENTS", "AGENT", "PENDING", "FLAGS"
    );
    for r in rows {
        let clients: Vec<String> = r.clients.iter().map(i64::to_string).collect();
        let h = health.remove(&r.device_id);
        let flags = h.as_ref().map(|h| h.flags.join(",")).unwrap_or_default();
        println!(
            "{:<32}  {:<20}  {:<8}  {:<7}  {:<8}  {:<16}  {:<10}  {:>7}  {:<24}  {}",
            r.device_id,
            r.name.as_deref().unwrap_or("-"),
            r.status.as_str(),
            if h.as_ref().is_some_and(|h| h.online) {
                "yes"
            } else {
                "no"
            },
            if r.enrolled { "yes" } else { "no" },
            if clients.is_empty() {
                "-".into()
            } else {
                clients.join(",")
            },
            r.agent_version.as_deref().unwrap_or("-"),
            h.as_ref()
                .and_then(|h| h.pending)
                .map_or("-".to_string(), |p| p.to_string()),
            if flags.is_empty() { "-".into() } else { flags },
            r.last_seen.to_rfc3339()
        );
    }
    Ok(())
}

async fn enroll(
    conn: &mut AsyncPgConnection,
    name: Option<String>,
    clients: Vec<i64>,
    device: Option<DeviceId>,
    valid_hours: u32,
    json: bool,
) -> Result<(), String> {
    check_name(name.as_deref())?;
    if valid_hours == 0 || valid_hours > MAX_CODE_HOURS {
        return Err(format!("--valid-hours must be 1 to {MAX_CODE_HOURS}"));
    }
    let code = secrets::enrollment_code(OsRng.secret_bytes());
    let canonical = secrets::normalize_code(&code).ok_or("generated an unreadable code")?;
    let now = SystemClock.now();
    let expires_at = now + Duration::hours(i64::from(valid_hours));
    db::enrollment::create_code(
        conn,
        NewCode {
            code_hash: &secrets::digest(&canonical),
            device_name: name.as_deref(),
            device_id: device.as_ref(),
            clients: &clients,
            now,
            expires_at,
        },
    )
    .await
    .map_err(change_err)?;
    if json {
        return print_json(&serde_json::json!({"code": code, "expires_at": expires_at}));
    }
    writeln!(std::io::stdout(), "{code}").map_err(|e| e.to_string())?;
    eprintln!(
        "one-time enrollment code, valid until {}: on the kiosk run\n  propass-agent enroll --server https://… --code {code}",
        expires_at.to_rfc3339()
    );
    Ok(())
}

async fn approve(
    conn: &mut AsyncPgConnection,
    device_id: DeviceId,
    clients: Vec<i64>,
) -> Result<(), String> {
    let Some(state) = db::devices::state(conn, &device_id).await.map_err(dberr)? else {
        return Err(format!(
            "no device {device_id}: it has not logged in yet (or register it ahead with `device add`)"
        ));
    };
    if state.status != DeviceStatus::Pending {
        return Err(format!(
            "device {device_id} is {}, not pending",
            state.status.as_str()
        ));
    }
    db::devices::assign(conn, &device_id, &clients, &[])
        .await
        .map_err(change_err)?;
    set_status(
        conn,
        device_id,
        DeviceStatus::Active,
        &[DeviceStatus::Pending],
    )
    .await
}

async fn set_status(
    conn: &mut AsyncPgConnection,
    device_id: DeviceId,
    to: DeviceStatus,
    from: &[DeviceStatus],
) -> Result<(), String> {
    match db::devices::set_status(conn, &device_id, to, from, SystemClock.now())
        .await
        .map_err(dberr)?
    {
        None => Err(format!("no device {device_id}")),
        Some(Err(was)) => Err(format!(
            "device {device_id} is {}; nothing changed",
            was.as_str()
        )),
        Some(Ok(())) => {
            eprintln!("device {device_id} is now {}", to.as_str());
            Ok(())
        }
    }
}

async fn leases(conn: &mut AsyncPgConnection, json: bool) -> Result<(), String> {
    let rows = db::leases::list(conn).await.map_err(dberr)?;
    if json {
        return print_json(&rows);
    }
    println!("{:<30}  {:>6}  {:>6}  UPDATED", "DEVICE", "CLIENT", "UNITS");
    for r in rows {
        println!(
            "{:<30}  {:>6}  {:>6}  {}",
            r.device_id,
            r.client_id,
            r.units,
            r.updated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    Ok(())
}
