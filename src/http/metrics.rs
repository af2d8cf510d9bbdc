//! `/metrics`: the shards' plain counters, summed and published through the
//! `metrics` facade into a Prometheus recorder that only this route
//! renders (no global recorder, no background thread). Values are read at
//! scrape time, so they are live. No label carries a user.

use std::sync::Arc;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::HttpStats;
use crate::config::Transport;
use crate::io::{ConnRefusal, ConnStats, ConnTimeout, FastpathTotals};
use turnpike_proto::core::counters::{COUNTED_METHODS, RESULT_CODES, TRANSPORTS};
use turnpike_proto::core::{
    AuthFailureReason, Counters, DropReason, EndReason, Family, RateLimitReason,
};

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        Metrics { recorder, handle }
    }
}

fn sum(shards: &[Arc<Counters>], f: impl Fn(&Counters) -> u64) -> u64 {
    shards.iter().map(|c| f(c)).sum()
}

fn gauge_sum(shards: &[Arc<Counters>], f: impl Fn(&Counters) -> i64) -> f64 {
    shards.iter().map(|c| f(c)).sum::<i64>() as f64
}

impl Metrics {
    /// Publish the current totals and render the exposition text.
    /// `turnpike_cluster_up`: whether Redis is reachable (issue 14; only
    /// with a `[cluster]`).
    /// and `turnpike_cluster_admissions_total{result}`: the cluster's
    /// answers to Allocates that asked for the cluster quota.
    pub fn cluster(&self, c: &crate::cluster::Link) {
        metrics::with_local_recorder(&self.recorder, || {
            metrics::gauge!("turnpike_cluster_up").set(if c.is_up() { 1.0 } else { 0.0 });
            for (result, n) in c.admissions().counts() {
                metrics::counter!("turnpike_cluster_admissions_total", "result" => result)
                    .absolute(n);
            }
        });
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per source of metrics; a struct would only rename them"
    )]
    pub fn render(
        &self,
        shards: &[Arc<Counters>],
        http: &HttpStats,
        conns: &ConnStats,
        start_unix: u64,
        draining: bool,
        revocations: usize,
        fastpath: FastpathTotals,
    ) -> String {
        metrics::with_local_recorder(&self.recorder, || {
            publish(shards, start_unix, draining);
            // Revocations in force (issue 14; src/revocation.rs).
            metrics::gauge!("turnpike_revocations").set(revocations as f64);
            publish_http(http);
            publish_connections(conns);
            publish_fastpath(shards, fastpath);
        });
        self.handle.render()
    }
}

/// What the TCP and TLS listeners refused at accept and cut by a deadline
/// (src/io/gate.rs); their open connections are
/// `turnpike_connections_open{transport}`.
fn publish_connections(c: &ConnStats) {
    use metrics::counter;
    for r in ConnRefusal::ALL {
        counter!("turnpike_connections_refused_total", "reason" => r.name())
            .absolute(c.refused_count(r));
    }
    for k in ConnTimeout::ALL {
        counter!("turnpike_connection_timeouts_total", "kind" => k.name())
            .absolute(c.timeout_count(k));
    }
}

/// The HTTP listener's own counters (src/http/serve.rs).
fn publish_http(h: &HttpStats) {
    // No gauge of open connections: a scrape would count itself and, for
    // a moment, the scrape before it; refusals say when the cap bites.
    use metrics::counter;
    use std::sync::atomic::Ordering::Relaxed;
    counter!("turnpike_http_connections_refused_total", "reason" => "max_connections")
        .absolute(h.refused_total_cap.load(Relaxed));
    counter!("turnpike_http_connections_refused_total", "reason" => "max_connections_per_ip")
        .absolute(h.refused_per_ip_cap.load(Relaxed));
    counter!("turnpike_http_timeouts_total", "stage" => "tls_handshake")
        .absolute(h.handshake_timeouts.load(Relaxed));
    counter!("turnpike_http_timeouts_total", "stage" => "header")
        .absolute(h.header_timeouts.load(Relaxed));
    counter!("turnpike_http_timeouts_total", "stage" => "idle")
        .absolute(h.idle_timeouts.load(Relaxed));
}

/// The XDP fast path (issue 15): what the program relayed, by direction,
/// and folded into the relayed totals, which count both paths (so this
/// runs after [`publish`] and sets them again).
fn publish_fastpath(s: &[Arc<Counters>], f: FastpathTotals) {
    use metrics::counter;
    for (dir, d, user_packets, user_bytes) in [
        (
            "to_peer",
            f.to_peer,
            sum(s, |c| c.relayed_packets_out.get()),
            sum(s, |c| c.relayed_bytes_out.get()),
        ),
        (
            "to_client",
            f.to_client,
            sum(s, |c| c.relayed_packets_in.get()),
            sum(s, |c| c.relayed_bytes_in.get()),
        ),
    ] {
        counter!("turnpike_fastpath_packets_total", "direction" => dir).absolute(d.packets);
        counter!("turnpike_relayed_packets_total", "direction" => dir)
            .absolute(user_packets + d.packets);
        counter!("turnpike_relayed_bytes_total", "direction" => dir).absolute(user_bytes + d.bytes);
    }
}

fn publish(s: &[Arc<Counters>], start_unix: u64, draining: bool) {
    use metrics::{counter, gauge};
    gauge!("process_start_time_seconds").set(start_unix as f64);
    gauge!("turnpike_draining").set(if draining { 1.0 } else { 0.0 });
    if let Some(h) = turnpike_sys::alloc::heap_stats() {
        gauge!("turnpike_heap_in_use_bytes").set(h.in_use as f64);
        gauge!("turnpike_heap_free_bytes").set(h.free as f64);
    }
    for &t in &TRANSPORTS {
        for f in Family::ALL {
            gauge!("turnpike_allocations_active", "transport" => t.as_str(), "family" => f.name())
                .set(gauge_sum(s, |c| c.active(t, f).get()));
        }
    }
    counter!("turnpike_allocations_created_total")
        .absolute(sum(s, |c| c.allocations_created.get()));
    counter!("turnpike_allocations_expired_total")
        .absolute(sum(s, |c| c.ended_count(EndReason::Expired)));
    for r in EndReason::ALL.iter().filter(|r| **r != EndReason::Expired) {
        let reason = match r {
            EndReason::Refreshed0 => "refresh",
            r => r.name(),
        };
        counter!("turnpike_allocations_deleted_total", "reason" => reason)
            .absolute(sum(s, |c| c.ended_count(*r)));
    }
    counter!("turnpike_binding_requests_total").absolute(sum(s, |c| c.binding_requests.get()));
    for m in COUNTED_METHODS {
        for code in RESULT_CODES {
            let n = sum(s, |c| c.answered_count(m, code));
            if n > 0 {
                let code = if code == 0 {
                    "other".to_string()
                } else {
                    code.to_string()
                };
                counter!("turnpike_requests_total", "method" => m.name(), "code" => code)
                    .absolute(n);
            }
        }
    }
    for r in AuthFailureReason::ALL {
        counter!("turnpike_auth_failures_total", "reason" => r.name())
            .absolute(sum(s, |c| c.auth_failure_count(*r)));
    }
    for r in RateLimitReason::ALL {
        counter!("turnpike_rate_limited_total", "reason" => r.name())
            .absolute(sum(s, |c| c.rate_limited_count(*r)));
    }
    counter!("turnpike_peer_policy_refusals_total").absolute(sum(s, |c| c.policy_refusals.get()));
    counter!("turnpike_quota_refusals_total").absolute(sum(s, |c| c.quota_refusals.get()));
    counter!("turnpike_relayed_packets_total", "direction" => "to_peer")
        .absolute(sum(s, |c| c.relayed_packets_out.get()));
    counter!("turnpike_relayed_packets_total", "direction" => "to_client")
        .absolute(sum(s, |c| c.relayed_packets_in.get()));
    counter!("turnpike_relayed_bytes_total", "direction" => "to_peer")
        .absolute(sum(s, |c| c.relayed_bytes_out.get()));
    counter!("turnpike_relayed_bytes_total", "direction" => "to_client")
        .absolute(sum(s, |c| c.relayed_bytes_in.get()));
    counter!("turnpike_relayed_local_total").absolute(sum(s, |c| c.relayed_local.get()));
    counter!("turnpike_relayed_cross_shard_total")
        .absolute(sum(s, |c| c.relayed_cross_shard.get()));
    for r in DropReason::ALL {
        counter!("turnpike_dropped_packets_total", "reason" => r.name())
            .absolute(sum(s, |c| c.dropped_count(*r)));
    }
    gauge!("turnpike_permissions_active").set(gauge_sum(s, |c| c.permissions_active.get()));
    gauge!("turnpike_channels_active").set(gauge_sum(s, |c| c.channels_active.get()));
    for t in [Transport::Tcp, Transport::Tls] {
        gauge!("turnpike_connections_open", "transport" => t.as_str())
            .set(gauge_sum(s, |c| c.connections_open(t).get()));
    }
}
