//! The cluster task: one tokio task that owns the Redis connections (a
//! multiplexed one for commands, one for pub/sub), reconnects with backoff
//! and serves the HTTP side's commands, the channels and the periodic
//! refresh (leases, registry, load); beside it the admissions task answers
//! the shards' questions over the same multiplexed connection, so nothing
//! the cluster task waits for delays an Allocate.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use turnpike_proto::core::auth::parse_rest_username;
use turnpike_proto::core::{Admission, Alternate, Fleet};

use super::{AdmitAsk, Cmd, FromShard, RevOp, UNREACHABLE, next_backoff, weight};
use crate::io::ServerHandle;
use crate::revocation::Revocation;

type Conn = redis::aio::MultiplexedConnection;
type Stream = redis::aio::PubSubStream;

/// How long one Redis exchange may take before the connection is judged
/// lost (the admission's own budget is shorter).
const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Local changes kept while Redis is away, at most.
const MAX_PENDING: usize = 10_000;

/// Take a lease for one more allocation of a user if the fleet counts
/// fewer than the quota. KEYS[1]: the user's ZSET; ARGV: member, quota,
/// lease ms. Scores are Redis' own time, so nodes' clocks do not matter.
static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
",
    )
});

/// A lease this node took or refreshed: the ZSET it is in, and when.
pub(super) struct Lease {
    key: String,
    since: Instant,
}

/// A node's load as published (`P:load:NODE`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Load {
    pub node: String,
    /// Where clients are sent (ALTERNATE-SERVER); `None`: never.
    pub advertise: Option<SocketAddr>,
    /// Where TLS clients are sent; `None`: not there.
    #[serde(default)]
    pub advertise_tls: Option<SocketAddr>,
    pub allocations: usize,
    /// `policy.max_allocations` (0: no limit).
    pub max_allocations: usize,
    /// Relayed bits per second, both ways, since the last refresh.
    pub bandwidth_bps: u64,
    /// The process's CPU use over all cores, 0 to 1, since the last refresh.
    pub cpu: f64,
    pub draining: bool,
}

/// Turns counters into rates between two refreshes.
#[derive(Default)]
pub(super) struct LoadMeter {
    last: Option<(Instant, u64, f64)>,
}

impl LoadMeter {
    /// Bits per second and the CPU share since the last sample.
    fn sample(&mut self, now: Instant, bytes: u64, cpu_s: f64) -> (u64, f64) {
        let rates = match self.last {
            Some((t, b, c)) if now > t => {
                let dt = (now - t).as_secs_f64();
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                (
                    (bytes.saturating_sub(b) as f64 * 8.0 / dt) as u64,
                    ((cpu_s - c) / dt / cores).clamp(0.0, 1.0),
                )
            }
            _ => (0, 0.0),
        };
        self.last = Some((now, bytes, cpu_s));
        rates
    }
}

/// A Redis client for `url`, with `password` (if set) instead of the
/// URL's, and for `rediss://` the CA in PEM `ca` (if set) instead of the
/// system's roots.
pub(super) fn client(
    url: &str,
    password: Option<&str>,
    ca: Option<Vec<u8>>,
) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let mut info = url.into_connection_info()?;
    if let Some(p) = password {
        let r = info.redis_settings().clone().set_password(p);
        info = info.set_redis_settings(r);
    }
    match ca {
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            },
        ),
        None => redis::Client::open(info),
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

pub(super) struct Task {
    pub client: redis::Client,
    pub handle: Arc<ServerHandle>,
    pub node: String,
    pub prefix: String,
    pub advertise: Option<SocketAddr>,
    pub advertise_tls: Option<SocketAddr>,
    pub budget: Duration,
    pub refresh: Duration,
    pub ttl: Duration,
    pub up: Arc<AtomicBool>,
    pub(super) cmds: mpsc::Receiver<Cmd>,
    /// The connection the admissions task uses (`None` while Redis is away).
    pub conn: watch::Sender<Option<Conn>>,
    /// Revocation changes made here that Redis has not taken yet.
    pub(super) pending: Vec<RevOp>,
    /// Leases this node holds, by member (`NODE:ID`).
    pub(super) leases: Arc<Mutex<BTreeMap<String, Lease>>>,
    pub(super) load: LoadMeter,
    /// The fleet view last pushed into the shards.
    pub last_fleet: Option<Fleet>,
    /// Numbers the reply keys of remote commands.
    pub replies: Arc<AtomicU64>,
}

impl Task {
    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }

    /// Connect, serve until the connection is lost, back off, again. One
    /// warning when Redis goes away (not one per attempt), one line when
    /// it is back.
    pub(super) async fn run(mut self) {
        let mut backoff = Duration::ZERO;
        let mut warned = false;
        loop {
            let why = match self.connect().await {
                Ok((conn, stream)) => {
                    if warned {
                        tracing::info!("cluster: Redis reachable again; catching up");
                    } else {
                        tracing::info!("cluster: connected to Redis");
                    }
                    warned = false;
                    backoff = Duration::ZERO;
                    let why = self.connected(conn, stream).await;
                    self.up.store(false, Ordering::Relaxed);
                    self.conn.send_replace(None);
                    // Local quotas, static alternates until it is back.
                    self.push_fleet(Fleet {
                        redirect_when_full: true,
                        ..Fleet::default()
                    });
                    why
                }
                Err(e) => e,
            };
            if warned {
                tracing::debug!(error = %why, "cluster: Redis still unreachable");
            } else {
                tracing::warn!(
                    error = %why,
                    "cluster: Redis unreachable: serving with local quotas and the revocations known; retrying"
                );
                warned = true;
            }
            backoff = next_backoff(backoff);
            if !self.down_for(backoff).await {
                return;
            }
        }
    }

    async fn connect(&self) -> Result<(Conn, Stream), String> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(err)?;
        let subscribe = async {
            let mut ps = self.client.get_async_pubsub().await?;
            ps.subscribe(self.key("revocations")).await?;
            ps.subscribe(self.key(&format!("node:{}", self.node)))
                .await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let ps = tokio::time::timeout(IO_TIMEOUT, subscribe)
            .await
            .map_err(|_| "subscribing timed out".to_string())?
            .map_err(err)?;
        Ok((conn, ps.into_on_message()))
    }

    /// Catch up (changes made meanwhile, the revocation set, leases,
    /// registry, load), then serve until the connection is lost; why.
    async fn connected(&mut self, mut conn: Conn, mut stream: Stream) -> String {
        if let Err(e) = self.replay(&mut conn).await {
            return e;
        }
        if let Err(e) = self.merge_known(&mut conn).await {
            return e;
        }
        if let Err(e) = self.sync_revocations(&mut conn).await {
            return e;
        }
        if let Err(e) = self.refresh(&mut conn).await {
            return e;
        }
        // Up once caught up: the shards park Allocates from now on, and
        // the admissions task asks this connection.
        self.up.store(true, Ordering::Relaxed);
        self.conn.send_replace(Some(conn.clone()));
        let mut tick = tokio::time::interval(self.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                c = self.cmds.recv() => {
                    let Some(c) = c else { return "stopped".into() };
                    if let Err(e) = self.command(&mut conn, c).await {
                        return e;
                    }
                }
                m = stream.next() => {
                    let Some(m) = m else { return "the subscription connection closed".into() };
                    if let Err(e) = self.message(&mut conn, &m).await {
                        return e;
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = self.refresh(&mut conn).await {
                        return e;
                    }
                }
            }
        }
    }

    /// While Redis is away: revocation changes are kept for later, reads
    /// fail (admissions are answered at once by the admissions task).
    /// False when the server is stopping.
    async fn down_for(&mut self, d: Duration) -> bool {
        let until = tokio::time::sleep(d);
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = &mut until => return true,
                c = self.cmds.recv() => match c {
                    None => return false,
                    Some(Cmd::RevocationsChanged(op)) => self.keep(op),
                    Some(Cmd::Sessions(reply)) => {
                        let _ = reply.send(Err(UNREACHABLE.into()));
                    }
                    Some(Cmd::Delete { reply, .. }) => {
                        let _ = reply.send(Err(UNREACHABLE.into()));
                    }
                },
            }
        }
    }

    fn keep(&mut self, op: RevOp) {
        if self.pending.len() >= MAX_PENDING {
            tracing::warn!(
                "cluster: too many revocation changes while Redis is away; the oldest is not shared"
            );
            self.pending.remove(0);
        }
        self.pending.push(op);
    }

    async fn command(&mut self, conn: &mut Conn, c: Cmd) -> Result<(), String> {
        match c {
            Cmd::RevocationsChanged(op) => {
                self.keep(op);
                self.replay(conn).await
            }
            Cmd::Sessions(reply) => {
                let mut conn = conn.clone();
                let prefix = self.prefix.clone();
                tokio::spawn(async move {
                    let _ = reply.send(read_sessions(&mut conn, &prefix).await.map_err(err));
                });
                Ok(())
            }
            Cmd::Delete { node, id, reply } => {
                if node == self.node {
                    let handle = self.handle.clone();
                    tokio::spawn(async move {
                        let _ = reply.send(Ok(handle.delete_session(id).await));
                    });
                    return Ok(());
                }
                let mut conn = conn.clone();
                let n = self.replies.fetch_add(1, Ordering::Relaxed);
                let reply_key = self.key(&format!("reply:{}:{n}", self.node));
                let channel = self.key(&format!("node:{node}"));
                tokio::spawn(async move {
                    let _ = reply.send(remote_delete(&mut conn, &channel, &reply_key, id).await);
                });
                Ok(())
            }
        }
    }

    /// Write the changes made here into Redis, then tell every node.
    async fn replay(&mut self, conn: &mut Conn) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let key = self.key("revocations");
        let mut p = redis::pipe();
        for op in &self.pending {
            match op {
                RevOp::Revoke(r) => {
                    let json = serde_json::to_string(r).map_err(err)?;
                    p.cmd("HSET").arg(&key).arg(&r.username).arg(json).ignore();
                }
                RevOp::Lift(name) => {
                    p.cmd("HDEL").arg(&key).arg(name).ignore();
                }
            }
        }
        p.cmd("PUBLISH").arg(&key).arg("changed").ignore();
        p.query_async::<()>(conn).await.map_err(err)?;
        self.pending.clear();
        Ok(())
    }

    /// Put every revocation this node enforces into Redis unless it holds
    /// that name already: a Redis that lost its data (restarted without
    /// persistence) gets the fleet's revocations back instead of lifting
    /// them everywhere. (The price: a lift this node missed while cut off
    /// comes back once; lift it again.)
    async fn merge_known(&mut self, conn: &mut Conn) -> Result<(), String> {
        let known = self.handle.revocations(crate::clock::now().unix);
        if known.is_empty() {
            return Ok(());
        }
        let key = self.key("revocations");
        let mut p = redis::pipe();
        for r in &known {
            let json = serde_json::to_string(r).map_err(err)?;
            p.cmd("HSETNX").arg(&key).arg(&r.username).arg(json);
        }
        let added: Vec<i64> = p.query_async(conn).await.map_err(err)?;
        if added.contains(&1) {
            redis::cmd("PUBLISH")
                .arg(&key)
                .arg("changed")
                .query_async::<()>(conn)
                .await
                .map_err(err)?;
        }
        Ok(())
    }

    /// Read the whole revocation set (dropping lapsed entries) and make
    /// it this node's.
    async fn sync_revocations(&mut self, conn: &mut Conn) -> Result<(), String> {
        // Changes made here and still queued go in first, so the set read
        // back has them.
        while let Ok(c) = self.cmds.try_recv() {
            self.command(conn, c).await?;
        }
        let key = self.key("revocations");
        let all: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(conn)
            .await
            .map_err(err)?;
        let now = crate::clock::now().unix;
        let mut list = Vec::new();
        let mut lapsed = Vec::new();
        for (name, v) in all {
            match serde_json::from_str::<Revocation>(&v) {
                Ok(r) if r.username == name && r.until.is_none_or(|u| now < u) => list.push(r),
                _ => lapsed.push(name),
            }
        }
        if !lapsed.is_empty() {
            redis::cmd("HDEL")
                .arg(&key)
                .arg(&lapsed)
                .query_async::<()>(conn)
                .await
                .map_err(err)?;
        }
        self.handle.replace_revocations(list, now).await;
        Ok(())
    }

    async fn message(&mut self, conn: &mut Conn, m: &redis::Msg) -> Result<(), String> {
        if m.get_channel_name() == self.key("revocations") {
            return self.sync_revocations(conn).await;
        }
        // A command for this node.
        let Ok(c) = serde_json::from_slice::<RemoteCmd>(m.get_payload_bytes()) else {
            tracing::debug!("cluster: unreadable command ignored");
            return Ok(());
        };
        let handle = self.handle.clone();
        let mut conn = conn.clone();
        tokio::spawn(async move {
            let found = handle.delete_session(c.delete).await;
            let _ = redis::cmd("SET")
                .arg(&c.reply)
                .arg(if found { "1" } else { "0" })
                .arg("EX")
                .arg(10)
                .query_async::<()>(&mut conn)
                .await;
        });
        Ok(())
    }

    /// Refresh this node's leases, registry entries and load; read the
    /// others' load and push the alternates into the shards.
    async fn refresh(&mut self, conn: &mut Conn) -> Result<(), String> {
        let sessions = self.handle.sessions().await;
        let now = crate::clock::now();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.map_err(err)?;
        let redis_ms = secs * 1000 + micros / 1000;
        let ttl_ms = self.ttl.as_millis() as u64;
        let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in &sessions {
            let user = parse_rest_username(&s.username).map_or(s.username.as_str(), |(_, u)| u);
            by_user
                .entry(user.to_string())
                .or_default()
                .push(format!("{}:{}", self.node, s.id));
        }
        let mut p = redis::pipe();
        p.atomic();
        let live: BTreeSet<&String> = by_user.values().flatten().collect();
        {
            let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            let grace = self.refresh;
            let dead: Vec<String> = leases
                .iter()
                .filter(|(m, l)| !live.contains(m) && now.mono.duration_since(l.since) > grace)
                .map(|(m, _)| m.clone())
                .collect();
            for m in dead {
                if let Some(l) = leases.remove(&m) {
                    p.cmd("ZREM").arg(&l.key).arg(&m).ignore();
                }
            }
            for (user, members) in &by_user {
                let key = self.key(&format!("quota:{user}"));
                let mut zadd = redis::cmd("ZADD");
                zadd.arg(&key);
                for m in members {
                    zadd.arg(redis_ms + ttl_ms).arg(m);
                    leases.insert(
                        m.clone(),
                        Lease {
                            key: key.clone(),
                            since: now.mono,
                        },
                    );
                }
                p.add_command(zadd).ignore();
                p.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
            }
        }
        // The registry: this node's allocations, replaced whole.
        let skey = self.key(&format!("sessions:{}", self.node));
        p.cmd("DEL").arg(&skey).ignore();
        if !sessions.is_empty() {
            let mut hset = redis::cmd("HSET");
            hset.arg(&skey);
            for s in &sessions {
                let json = crate::http::session_json(&self.node, now.unix, s);
                hset.arg(s.id).arg(json.to_string());
            }
            p.add_command(hset).ignore();
            p.cmd("PEXPIRE").arg(&skey).arg(ttl_ms).ignore();
        }
        // The load.
        let bytes: u64 = self
            .handle
            .counters()
            .iter()
            .map(|c| c.relayed_bytes_out.get() + c.relayed_bytes_in.get())
            .sum();
        let (bandwidth_bps, cpu) =
            self.load
                .sample(now.mono, bytes, turnpike_sys::procfs::self_cpu_s());
        let load = Load {
            node: self.node.clone(),
            advertise: self.advertise,
            advertise_tls: self.advertise_tls,
            allocations: self.handle.allocations(),
            max_allocations: self.handle.max_allocations(),
            bandwidth_bps,
            cpu,
            draining: self.handle.is_draining(),
        };
        let nodes = self.key("nodes");
        p.cmd("SET")
            .arg(self.key(&format!("load:{}", self.node)))
            .arg(serde_json::to_string(&load).map_err(err)?)
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        p.cmd("ZADD")
            .arg(&nodes)
            .arg(secs + self.ttl.as_secs().max(1))
            .arg(&self.node)
            .ignore();
        p.cmd("ZREMRANGEBYSCORE")
            .arg(&nodes)
            .arg("-inf")
            .arg(secs)
            .ignore();
        p.cmd("ZRANGE").arg(&nodes).arg(0).arg(-1);
        let (names,): (Vec<String>,) = p.query_async(conn).await.map_err(err)?;
        let keys: Vec<String> = names
            .iter()
            .filter(|n| **n != self.node)
            .map(|n| self.key(&format!("load:{n}")))
            .collect();
        let loads: Vec<Option<String>> = if keys.is_empty() {
            Vec::new()
        } else {
            redis::cmd("MGET")
                .arg(&keys)
                .query_async(conn)
                .await
                .map_err(err)?
        };
        let alternates = loads
            .iter()
            .flatten()
            .filter_map(|j| serde_json::from_str::<Load>(j).ok())
            .filter_map(|l| {
                Some(Alternate {
                    addr: l.advertise?,
                    tls: l.advertise_tls,
                    weight: weight(&l),
                })
            })
            .filter(|a| a.weight > 0)
            .collect();
        let quota = self.handle.max_allocations_per_user() > 0;
        self.push_fleet(Fleet {
            admission_budget: quota.then_some(self.budget),
            redirect_when_full: true,
            alternates,
        });
        Ok(())
    }

    fn push_fleet(&mut self, f: Fleet) {
        if self.last_fleet.as_ref() == Some(&f) {
            return;
        }
        self.handle.set_fleet(Arc::new(f.clone()));
        self.last_fleet = Some(f);
    }
}

/// The admissions task: answers the shards' questions on its own, so a
/// refresh or a sync in the cluster task never delays them. Each question
/// is one Lua call in a task of its own, cut at the budget.
pub(super) struct Admissions {
    pub handle: Arc<ServerHandle>,
    pub node: String,
    pub prefix: String,
    pub budget: Duration,
    pub ttl: Duration,
    pub admits: mpsc::Receiver<FromShard>,
    pub conn: watch::Receiver<Option<Conn>>,
    pub(super) leases: Arc<Mutex<BTreeMap<String, Lease>>>,
    pub(super) stats: Arc<super::AdmissionStats>,
}

impl Admissions {
    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }

    pub(super) async fn run(mut self) {
        while let Some(m) = self.admits.recv().await {
            let conn = self.conn.borrow().clone();
            match (m, conn) {
                (FromShard::Admit(a), Some(conn)) => self.admit(conn, a),
                (FromShard::Admit(a), None) => {
                    // Redis is away: the local quota, at once.
                    self.stats.count(Admission::Unavailable);
                    self.handle
                        .admitted(a.shard, a.ticket, Admission::Unavailable);
                }
                (FromShard::Ended { id, user }, Some(conn)) => {
                    self.ended(conn, id, user.as_deref());
                }
                // Leases of allocations that ended while Redis was away
                // go at the first refresh after it returns.
                (FromShard::Ended { .. }, None) => {}
            }
        }
    }

    /// Ask Redis for a lease, within the budget, and answer the shard.
    fn admit(&self, mut conn: Conn, a: AdmitAsk) {
        let quota = self.handle.max_allocations_per_user();
        let key = self.key(&format!("quota:{}", a.user));
        let member = format!("{}:{}", self.node, a.ticket);
        let ttl_ms = self.ttl.as_millis() as u64;
        let (handle, leases, budget) = (self.handle.clone(), self.leases.clone(), self.budget);
        let stats = self.stats.clone();
        tokio::spawn(async move {
            let verdict = if quota == 0 {
                Admission::Unavailable
            } else {
                // Past the budget the Allocate has gone on with the local
                // quota: waiting longer only holds a task.
                let call = tokio::time::timeout(
                    budget,
                    ADMIT
                        .key(&key)
                        .arg(&member)
                        .arg(quota)
                        .arg(ttl_ms)
                        .invoke_async::<i64>(&mut conn),
                )
                .await;
                match call {
                    Ok(Ok(1)) => {
                        let lease = Lease {
                            key,
                            since: crate::clock::instant(),
                        };
                        leases
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(member, lease);
                        Admission::Granted
                    }
                    Ok(Ok(_)) => Admission::Refused,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "cluster: admission unanswered; local quota");
                        Admission::Unavailable
                    }
                    Err(_) => Admission::Unavailable,
                }
            };
            // Late is harmless: past its budget the Allocate went on with
            // the local quota, and this answer finds nothing parked.
            stats.count(verdict);
            handle.admitted(a.shard, a.ticket, verdict);
        });
    }

    /// Drop the lease of an allocation that ended here.
    fn ended(&self, mut conn: Conn, id: u64, user: Option<&str>) {
        let member = format!("{}:{id}", self.node);
        let held = self
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&member);
        let Some(key) = held
            .map(|l| l.key)
            .or_else(|| user.map(|u| self.key(&format!("quota:{u}"))))
        else {
            return;
        };
        tokio::spawn(async move {
            let _ = redis::cmd("ZREM")
                .arg(&key)
                .arg(&member)
                .query_async::<()>(&mut conn)
                .await;
        });
    }
}

/// A command sent to one node's channel.
#[derive(Serialize, Deserialize)]
struct RemoteCmd {
    /// The allocation to end.
    delete: u64,
    /// Where to write "1" (ended) or "0" (no such allocation).
    reply: String,
}

/// Every live node's registry entries.
async fn read_sessions(
    conn: &mut Conn,
    prefix: &str,
) -> redis::RedisResult<Vec<serde_json::Value>> {
    let nodes: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{prefix}:nodes"))
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    let mut all = Vec::new();
    let mut nodes = nodes;
    nodes.sort();
    for n in nodes {
        let entries: BTreeMap<u64, String> = redis::cmd("HGETALL")
            .arg(format!("{prefix}:sessions:{n}"))
            .query_async(conn)
            .await?;
        all.extend(
            entries
                .values()
                .filter_map(|j| serde_json::from_str::<serde_json::Value>(j).ok()),
        );
    }
    Ok(all)
}

/// Ask `channel`'s node to end allocation `id`; its answer (2 s at most).
async fn remote_delete(
    conn: &mut Conn,
    channel: &str,
    reply: &str,
    id: u64,
) -> Result<bool, String> {
    let cmd = serde_json::to_string(&RemoteCmd {
        delete: id,
        reply: reply.to_string(),
    })
    .map_err(err)?;
    let heard: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(cmd)
        .query_async(conn)
        .await
        .map_err(err)?;
    if heard == 0 {
        return Err("that node is not connected to the cluster".into());
    }
    let deadline = crate::clock::instant() + Duration::from_secs(2);
    while crate::clock::instant() < deadline {
        let v: Option<String> = redis::cmd("GET")
            .arg(reply)
            .query_async(conn)
            .await
            .map_err(err)?;
        if let Some(v) = v {
            let _ = redis::cmd("DEL").arg(reply).query_async::<()>(conn).await;
            return Ok(v == "1");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("that node did not answer within 2 s".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_turns_counters_into_rates() {
        let mut m = LoadMeter::default();
        let t = crate::clock::instant();
        assert_eq!(m.sample(t, 1000, 1.0), (0, 0.0), "no rate from one sample");
        let (bps, cpu) = m.sample(t + Duration::from_secs(2), 1000 + 250_000, 1.0);
        assert_eq!(bps, 1_000_000);
        assert_eq!(cpu, 0.0);
    }

    #[test]
    fn a_password_from_the_config_replaces_the_urls() {
        let c = client("redis://:old@127.0.0.1:6379/2", Some("new"), None).unwrap();
        let r = c.get_connection_info().redis_settings();
        assert_eq!(r.password(), Some("new"));
        assert_eq!(r.db(), 2);
        let c = client("rediss://127.0.0.1:6380", None, None).unwrap();
        assert!(matches!(
            c.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        ));
    }
}
