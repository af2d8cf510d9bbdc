//! The tokio driver of the ICE connectivity checker (`turnpike
//! ice-check`): it owns the sockets (optionally inside network namespaces)
//! and drives the sans-IO agents of [`turnpike_proto::ice`].

pub mod driver;
