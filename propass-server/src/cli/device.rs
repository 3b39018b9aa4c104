//! `propass-server device …`: the kiosk fleet's records — enrollment codes
//! for our agent, approval and pre-registration for the seed client,
//! assignment of clients, revocation.

use std::io::Write;

use clap::Subcommand;
use diesel_async::AsyncPgConnection;
use propass_protocol::{ClientId, DeviceId};

use super::{dberr, print_json, LeaseSizeArgs};
use crate::admin::{self, Actor, StatusChange};
use crate::clock::{Clock, SystemClock};
use crate::db;
use crate::rng::{OsRng, Rng};

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
    /// Set this kiosk's own lease sizes, for every client it serves (they
    /// replace the clients' `client lease` sizes and the server's defaults)
    Lease {
        device_id: DeviceId,
        #[command(flatten)]
        sizes: LeaseSizeArgs,
    },
}

/// Runs one `device` command as `actor`; `fleet` says when a kiosk is
/// offline or flagged. Every change is audited by its use case (`admin`).
pub async fn run(
    conn: &mut AsyncPgConnection,
    cmd: DeviceCmd,
    fleet: db::fleet::FleetPolicy,
    actor: &Actor,
) -> Result<(), String> {
    match cmd {
        DeviceCmd::List { json } => list(conn, json, fleet).await,
        DeviceCmd::Enroll {
            name,
            clients,
            device,
            valid_hours,
            json,
        } => {
            let req = admin::CodeRequest {
                name: name.as_deref(),
                clients: &clients,
                device: device.as_ref(),
                valid_hours,
            };
            enroll(conn, actor, req, json).await
        }
        DeviceCmd::Leases { json } => leases(conn, json).await,
        DeviceCmd::Lease { device_id, sizes } => {
            lease(conn, actor, &device_id, sizes.parse()?).await
        }
        DeviceCmd::Reclaim { device_id, client } => {
            let returned = admin::reclaim_leases(conn, actor, &device_id, client).await?;
            let units: i64 = returned.iter().map(|(_, u)| u).sum();
            println!("{units}");
            eprintln!("took back {units} unit(s) from {device_id}: {returned:?} (client, units)");
            Ok(())
        }
        change => {
            let done = change_device(conn, change, actor).await?;
            eprintln!("{done}");
            Ok(())
        }
    }
}

/// The commands that change one kiosk's record; what is true afterwards.
async fn change_device(
    conn: &mut AsyncPgConnection,
    cmd: DeviceCmd,
    actor: &Actor,
) -> Result<String, String> {
    let now = SystemClock.now();
    Ok(match cmd {
        DeviceCmd::Add {
            device_id,
            name,
            clients,
        } => {
            admin::add_device(conn, actor, &device_id, name.as_deref(), &clients).await?;
            format!("device {device_id} registered, active, serving {clients:?}")
        }
        DeviceCmd::Approve { device_id, clients } => {
            admin::approve_device(conn, actor, &device_id, &clients, now).await?;
            format!("device {device_id} is now active")
        }
        DeviceCmd::Assign {
            device_id,
            add,
            remove,
        } => {
            let serves = admin::assign_device(conn, actor, &device_id, &add, &remove).await?;
            format!("device {device_id} now serves {serves:?}")
        }
        DeviceCmd::Rename { device_id, name } => {
            admin::rename_device(conn, actor, &device_id, &name).await?;
            format!("device {device_id} is now named {:?}", name.trim())
        }
        DeviceCmd::Revoke { device_id } => {
            admin::set_device_status(conn, actor, &device_id, StatusChange::Revoke, now).await?;
            format!("device {device_id} is now revoked")
        }
        DeviceCmd::Restore { device_id } => {
            admin::set_device_status(conn, actor, &device_id, StatusChange::Reinstate, now).await?;
            format!("device {device_id} is now active")
        }
        DeviceCmd::List { .. }
        | DeviceCmd::Enroll { .. }
        | DeviceCmd::Leases { .. }
        | DeviceCmd::Lease { .. }
        | DeviceCmd::Reclaim { .. } => {
            unreachable!("run answers the commands that change nothing or print")
        }
    })
}

/// `device lease`: the kiosk's own sizes (`None`: its clients').
async fn lease(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    device_id: &DeviceId,
    sizes: Option<db::leases::LeasePolicy>,
) -> Result<(), String> {
    admin::size_device_leases(conn, actor, device_id, sizes).await?;
    match sizes {
        Some(s) => eprintln!(
            "device {device_id}: holds up to {} unit(s) of each client, refilled below {}; a larger lease is given back by the kiosk as far as it has not spent it, at its next sync (`device reclaim` takes it back now)",
            s.target, s.low_water
        ),
        None => eprintln!("device {device_id}: its clients' lease sizes"),
    }
    Ok(())
}

async fn list(
    conn: &mut AsyncPgConnection,
    json: bool,
    fleet: db::fleet::FleetPolicy,
) -> Result<(), String> {
    let rows = db::devices::list(conn, None).await.map_err(dberr)?;
    let mut health = db::fleet::health(conn, fleet, SystemClock.now(), None)
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
    actor: &Actor,
    req: admin::CodeRequest<'_>,
    json: bool,
) -> Result<(), String> {
    let admin::EnrollmentCode { code, expires_at } =
        admin::create_enrollment_code(conn, actor, req, OsRng.secret_bytes(), SystemClock.now())
            .await?;
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

async fn leases(conn: &mut AsyncPgConnection, json: bool) -> Result<(), String> {
    let rows = db::leases::list(conn, None).await.map_err(dberr)?;
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
