//! The shard's side of the fleet (issue 14): the core's admission
//! questions go to the cluster task through a bounded queue (never
//! waited on: a question that does not fit is dropped, and its Allocate
//! goes on with the local quota when its budget runs out); its answers,
//! and the budget's expiry, resume parked Allocates whose responses go
//! out here.

use std::rc::Rc;

use super::relay::ShellIo;
use super::shard::Shard;
use crate::cluster::{AdmitAsk, FromShard};
use turnpike_proto::core::{Admission, Now, Server};

/// Hand the core's admission questions to the cluster task, and wake the
/// timer task so it sleeps no longer than the new parked Allocate's budget.
pub(super) fn forward_admissions(shard: &Shard, core: &mut Server) {
    let mut asked = false;
    while let Some(a) = core.poll_admit() {
        asked = true;
        let Some(tx) = &shard.admit else { continue };
        let ask = FromShard::Admit(AdmitAsk {
            shard: shard.id,
            ticket: a.ticket,
            user: a.user,
        });
        if tx.try_send(ask).is_err() {
            tracing::debug!("cluster admission queue full; the Allocate waits for its budget");
        }
    }
    if asked {
        shard.timer_wake.notify_one();
    }
}

/// The cluster task's answer for a parked Allocate.
pub(super) fn admitted(shard: &Rc<Shard>, now: Now, ticket: u64, verdict: Admission) {
    let mut out = Vec::new();
    let (ft, used) = {
        let mut core = shard.core.borrow_mut();
        let ft = core.admitted(now, ticket, verdict, &mut out, &mut ShellIo { shard });
        (ft, core.allocation_alive(ticket))
    };
    if verdict == Admission::Granted && !used {
        // Refused here after all (full, no port, revoked, gone): the
        // lease it took goes now.
        if let Some(tx) = &shard.admit {
            let _ = tx.try_send(FromShard::Ended {
                id: ticket,
                user: None,
            });
        }
    }
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

/// An allocation ended: its cluster lease can go at once (best effort: a
/// full queue leaves it to the next refresh).
pub(super) fn ended(shard: &Shard, id: u64, username: &str) {
    let Some(tx) = &shard.admit else { return };
    let user = turnpike_proto::core::auth::parse_rest_username(username)
        .map_or(username, |(_, u)| u)
        .to_string();
    let _ = tx.try_send(FromShard::Ended {
        id,
        user: Some(user),
    });
}
