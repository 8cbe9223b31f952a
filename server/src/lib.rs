//! byol-server: the boot server (HTTP API, OVH-compatible endpoints, iPXE endpoints, TFTP,
//! durable store) and the CLI client that talks to it. `main.rs` only parses the command line.

pub mod agent_api;
pub mod api;
pub mod apikeys;
pub mod auth;
pub mod boot;
pub mod cli;
pub mod config;
pub mod files;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod ovh;
pub mod ovhauth;
pub mod power;
pub mod ratelimit;
pub mod schemes;
pub mod seal;
pub mod serve;
pub mod store;
pub mod tftp;
pub mod views;
