//! Subcommands of the binary that are clients, not the server:
//! `ice-check` and `loadgen`.

pub mod ice_check;
pub mod loadgen;
