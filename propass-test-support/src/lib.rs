//! # propass-test-support
//!
//! What the tests, benchmarks and xtask of PROPASS share, written once:
//! [`TestDatabase`] (a fresh PostgreSQL database that drops itself),
//! [`FaultProxy`] (a TCP proxy a test can cut, restore, or make swallow
//! answers after the upstream committed), [`eventually`] (wait on a
//! condition with a deadline, never a bare sleep), [`ProcessGuard`] (a child
//! stopped with SIGTERM, then SIGKILL, when dropped), [`free_port`],
//! [`TempDir`], [`SmallDisk`] (a tmpfs of its own under a directory, to
//! fill up), [`percentile`], [`rss_kib`] and [`cpu_seconds`] (what
//! benchmarks read), [`owner_comment`] and [`abandoned`] (test databases a
//! killed run left behind, recognised), [`haproxy_config`] (the shipped load balancer, runnable), [`assert_generated`] (generated docs and files kept current), and [`module_graph`] with [`find_cycle`] (the check that a
//! crate's modules form no cycle).
//!
//! What it is **not**: a dependency of any shipped binary (only
//! `[dev-dependencies]` and xtask use it), nor a mock of anything — every
//! part is the real thing, made disposable.
#![allow(clippy::disallowed_methods)] // the shell around real time and ids, for tests only

mod disk;
mod generated;
mod haproxy;
mod measure;
mod modgraph;
mod net;
mod owner;
mod process;
mod temp;

#[cfg(feature = "async")]
mod database;
#[cfg(feature = "async")]
mod proxy;
#[cfg(feature = "async")]
mod wait;

pub use disk::{private_mount_command, SmallDisk};
pub use generated::{assert_generated, uncommented_assignments};
pub use haproxy::{haproxy_config, spawn_haproxy};
pub use measure::{cpu_seconds, machine_busy_seconds, percentile, rss_kib};
pub use modgraph::{assert_no_module_cycle, find_cycle, module_graph, Graph};
pub use net::free_port;
pub use owner::{abandoned, owner_comment, OWNER_PREFIX};
pub use process::{terminate, ProcessGuard};
pub use temp::TempDir;

#[cfg(feature = "async")]
pub use database::{database_url_named, TestDatabase};
#[cfg(feature = "async")]
pub use proxy::{FaultProxy, Mode};
#[cfg(feature = "async")]
pub use wait::eventually;
