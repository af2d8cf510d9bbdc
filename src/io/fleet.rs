//! The shard's side of the fleet (issue 14): the core's admission
//! questions go to the cluster task through a bounded queue (never
//! waited on: a question that does not fit is dropped, and its Allocate
//! goes on with the local quota when its budget runs out); its answers,
//! and the budget's expiry, resume parked Allocates whose responses go
//! out here.

use std::rc::Rc;

use super::relay::ShellIo;
use super::shard::Shard;
use crate::cluster::AdmitAsk;
use turnpike_proto::core::{Admission, Now, Server};

/// Hand the core's admission questions to the cluster task.
pub(super) fn forward_admissions(shard: &Shard, core: &mut Server) {
    while let Some(a) = core.poll_admit() {
        let Some(tx) = &shard.admit else { continue };
        let ask = AdmitAsk {
            shard: shard.id,
            ticket: a.ticket,
            user: a.user,
        };
        if tx.try_send(ask).is_err() {
            tracing::debug!("cluster admission queue full; the Allocate waits for its budget");
        }
    }
}

/// The cluster task's answer for a parked Allocate.
pub(super) fn admitted(shard: &Rc<Shard>, now: Now, ticket: u64, verdict: Admission) {
    let mut out = Vec::new();
    let ft =
        shard
            .core
            .borrow_mut()
            .admitted(now, ticket, verdict, &mut out, &mut ShellIo { shard });
    if let Some(ft) = ft {
        send(shard, &ft, &out);
    }
}

/// Parked Allocates whose budget ran out go on with the local quota.
pub(super) fn expire_admissions(shard: &Rc<Shard>, now: Now) {
    let mut out = Vec::new();
    loop {
        out.clear();
        let ft = shard
            .core
            .borrow_mut()
            .expire_admissions(now, &mut out, &mut ShellIo { shard });
        let Some(ft) = ft else { return };
        send(shard, &ft, &out);
    }
}

fn send(shard: &Shard, ft: &turnpike_proto::core::FiveTuple, out: &[u8]) {
    if !shard.send_to_client(ft, out) {
        shard
            .counters
            .dropped(turnpike_proto::core::DropReason::SendBufferFull);
    }
}
