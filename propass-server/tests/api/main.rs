//! Integration tests of propass-server: the real server on a free port,
//! against a fresh database of the real PostgreSQL named by `DATABASE_URL`
//! (`cargo xtask test` provisions one). One binary for all of them.
#![allow(clippy::disallowed_methods)] // tests run on the real clock

mod admin;
mod audit;
mod auth;
mod copy_policy;
mod database_tls;
mod devices;
mod fleet;
mod health;
mod helpers;
mod hostile;
mod instances;
mod leases;
mod migrations;
mod roles;
mod sync;
mod ws;
