//! portcullis: a privileged-access-management bastion. Engineers reach production SSH hosts,
//! containers and PostgreSQL databases only through it, after leadership approves a time-boxed
//! request; every session is recorded and every action audited.
//!
//! See ARCHITECTURE.md for the map of these modules and the rules between them.

pub mod access;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod ids;
pub mod keys;
pub mod postgres;
pub mod recording;
pub mod review;
pub mod secret;
pub mod server;
pub mod session;
pub mod sinks;
pub mod ssh;
pub mod store;
pub mod text;
pub mod tokens;
pub mod views;
pub mod web;
