//! Subcommands of the binary that are clients, not the server:
//! `ice-check` and `loadgen`.

pub(crate) mod ice_check;
pub(crate) mod loadgen;
