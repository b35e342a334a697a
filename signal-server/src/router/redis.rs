//! Replicas sharing presence and routing through Redis (docs/signaling.md, "Scale-out").
//!
//! - Liveness: each replica has an id, the prefix of every session id it hands out, and a key
//!   `{prefix}replica:{id}` with a short TTL (`replica_ttl`) that it refreshes four times per
//!   TTL. A replica whose key is gone is dead, and so are its sessions.
//! - Routing: each replica subscribes to its own channel `{prefix}r:{id}`; a frame for a
//!   session goes to the channel of the replica that owns it, and that replica decides whether
//!   the session is there and answers (an ack, or the refusal). No subscriber, or no answer
//!   (Redis can still count a subscriber whose connection is already dead, right after an
//!   outage), means the frame is sent again, until its deadline, unless the owner is dead; the
//!   owner delivers each frame once however many copies reach it. So a pub/sub reconnect
//!   never makes a live session look gone, and a frame is never lost without a word.
//! - Deadlines: every Redis call has one. A frame is published by a script that checks the
//!   deadline against Redis's own clock, so a frame the sender has given up on (and answered
//!   `internal` for) is never delivered late, e.g. after Redis resumes from a pause.
//! - Presence: key `{prefix}cam:{camera}` holds the camera's session, with a TTL the publishing
//!   replica refreshes. Changes go out on `{prefix}c:{camera}` to replicas with watchers, which
//!   also re-read the keys of watched cameras on every heartbeat: a key that is missing while
//!   its session's replica is alive is being restored (Redis restarted), not offline.
//! - Moves: a client that resumes its session on another replica takes it there. The new
//!   holder writes `{prefix}moved:{session}` (its own id, with a TTL it refreshes), and the send
//!   script follows that key, so the session keeps its id; the old holder hands over the state
//!   and the frames that waited, and answers `moved` to copies still on their way to it.
//! - Saved sessions: with resume on, each replica keeps the state of its sessions (camera
//!   published, viewers, watches) in the hash `{prefix}sessions:{id}`, written when it changes,
//!   with a TTL past its liveness and the resume grace. A client whose replica crashed resumes
//!   on another one from there, once the crashed replica is found dead: the claimer first
//!   fences the session (`moved` names it, set only if it named the old holder or nothing), so
//!   frames wait for it there and no other replica can restore it too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{IntoConnectionInfo, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    Claim, Claimer, Delivery, Handover, Hub, Mailbox, Router, RouterError, SendError, SessionId,
    SessionState, Who, now_us,
};

/// Keys and ids per Redis command in a sweep; keeps each command's reply small.
const SWEEP_CHUNK: usize = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Allowance for the clocks of a replica and of Redis disagreeing, and for a reply in flight:
/// a sender gives up on a frame this long after the deadline Redis enforces.
const CLOCK_MARGIN: Duration = Duration::from_secs(1);
/// Between two publishes of a frame not yet answered by its owner replica.
const RETRY: Duration = Duration::from_millis(200);
/// Frames remembered by their owner replica so that a copy sent again is not delivered twice.
const SEEN_LIMIT: usize = 65_536;
/// How long a replica's liveness, once read, is taken as still true.
const LIVENESS_CACHE: Duration = Duration::from_secs(1);
/// Redirects in a row a frame follows before it is refused (sessions moving back and forth).
const MAX_REDIRECTS: usize = 4;
/// One round of asking a holder for a session: short, so that a holder that does not answer
/// (crashed) is fenced off quickly.
const CLAIM_ROUND: Duration = Duration::from_secs(1);

/// Publishes a camera: KEYS presence key and tombstone; ARGV session, TTL (ms), camera
/// channel. The new presence gets an epoch (a fencing token) above any the key or its
/// tombstone held, from Redis's clock so that it survives a Redis restart; the key and the
/// online event change together. Returns the previous value (or "") and the epoch.
const PUBLISH_SCRIPT: &str = r#"
local t = redis.call('TIME')
local e = tonumber(t[1]) * 1000000 + tonumber(t[2])
local prev = redis.call('GET', KEYS[1])
local floor = tonumber(redis.call('GET', KEYS[2]) or '0')
if prev then
  local pe = tonumber(string.match(prev, '^(%d+) ') or '0')
  if pe > floor then floor = pe end
end
if e <= floor then e = floor + 1 end
local es = string.format('%d', e)
redis.call('SET', KEYS[1], es .. ' ' .. ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], '{"k":"online","session":"' .. ARGV[1] .. '","epoch":' .. es .. '}')
return {prev or '', es}
"#;

/// Refreshes this replica's cameras: KEYS presence key and tombstone per camera; ARGV the
/// TTL, then session, epoch and camera channel per camera. Per camera: 1 refreshed, 2
/// re-created (it had expired, e.g. Redis restarted empty; watchers hear it is online again),
/// 0 taken over by a newer session or released since (its tombstone is as new as this epoch:
/// a refresh racing an unpublish does not bring the camera back).
const REFRESH_SCRIPT: &str = r#"
local out = {}
for i = 1, #KEYS / 2 do
  local pk, gk = KEYS[2 * i - 1], KEYS[2 * i]
  local s, e, ch = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  local want = e .. ' ' .. s
  local v = redis.call('GET', pk)
  if v == want then
    redis.call('PEXPIRE', pk, ARGV[1])
    out[i] = 1
  elseif not v and tonumber(redis.call('GET', gk) or '0') < tonumber(e) then
    redis.call('SET', pk, want, 'PX', ARGV[1])
    redis.call('PUBLISH', ch, '{"k":"online","session":"' .. s .. '","epoch":' .. e .. '}')
    out[i] = 2
  else
    out[i] = 0
  end
end
return out
"#;

/// Releases a camera if its presence still names ARGV session: deletes the key, leaves a
/// tombstone with its epoch for a TTL (ms), and sends the offline event, together.
const RELEASE_SCRIPT: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local e, s = string.match(v, '^(%d+) (.+)$')
if s ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], e, 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], '{"k":"offline","session":"' .. s .. '","epoch":' .. e .. '}')
return 1
"#;

/// Publishes ARGV[3] on channel ARGV[2] unless Redis's clock is past ARGV[1] (Unix µs). If
/// KEYS[1] (the session's `moved` key) names a replica, on that replica's channel instead:
/// ARGV[4] is the channel prefix. Returns {-1, ""} expired, else {subscribers that got it,
/// the replica it was redirected to or ""}.
const SEND_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if now > tonumber(ARGV[1]) then
  return {-1, ''}
end
local moved = redis.call('GET', KEYS[1])
if moved then
  return {redis.call('PUBLISH', ARGV[4] .. moved, ARGV[3]), moved}
end
return {redis.call('PUBLISH', ARGV[2], ARGV[3]), ''}
";

/// Sets KEYS[1] (a session's `moved` key) to ARGV[2] with TTL ARGV[3] (ms) if it names
/// nothing, ARGV[1] (the holder it is taken from) or ARGV[2] already: the fence a claimer puts
/// up before restoring a crashed replica's session, so that only one replica restores it.
const FENCE_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if not v or v == ARGV[1] or v == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Deletes KEYS[1] if it holds ARGV[1]: a replica lets go of a moved session only if it is
/// still the one holding it.
const UNMOVE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

#[derive(Clone, Debug)]
pub struct RedisRouterConfig {
    pub url: String,
    /// Prefix of every key and channel, so several deployments can share one Redis.
    pub prefix: String,
    pub presence_ttl: Duration,
    /// Lifetime of a replica's liveness key: a replica that stops refreshing it (crashed, or
    /// cut from Redis) is declared dead, with its sessions, this long after.
    pub replica_ttl: Duration,
    /// Deadline of every Redis call, and of a frame routed through Redis.
    pub call_timeout: Duration,
    /// How long a client may take to resume its session; zero: resume is off, and sessions'
    /// states are not saved.
    pub resume_grace: Duration,
    pub backplane_errors: IntCounter,
}

/// A session's saved state, in its replica's `sessions` hash.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    state: SessionState,
    /// The presence epoch of its published camera.
    #[serde(default)]
    epoch: u64,
}

/// A request to another replica as sent (and sent again) until answered.
struct Request<'a> {
    id: u64,
    /// The session it is for, whose `moved` key redirects it.
    follow: Option<&'a str>,
    payload: &'a str,
    /// Its deadline, Unix µs.
    until_us: u64,
}

/// How a claim for a session held elsewhere ended.
enum Taken {
    Handover(Box<Handover>),
    /// Its replica is dead; restored from its saved state.
    Restored(Record),
    /// Not taken; `fenced`: the `moved` key was set on the way and must be undone.
    No {
        fenced: bool,
    },
}

/// A camera's presence change, on the camera's channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum CameraEvent {
    Online {
        session: SessionId,
        #[serde(default)]
        epoch: u64,
    },
    Offline {
        session: SessionId,
        #[serde(default)]
        epoch: u64,
    },
}

/// A presence key's value: `"<epoch> <session>"`.
fn parse_presence(value: &str) -> Option<(SessionId, u64)> {
    let (epoch, session) = value.split_once(' ')?;
    Some((SessionId::from(session), epoch.parse().ok()?))
}

/// What a replica's channel carries.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
enum Envelope {
    /// Frame `id` of replica `from` for session `to`, owned by the receiving replica.
    /// `until` (Unix µs) is when the sender gives up on it: a copy that reaches the owner later
    /// (held in a cut network, say) is dropped, since its sender has answered it already.
    Deliver {
        id: u64,
        from: String,
        to: SessionId,
        d: Delivery,
        #[serde(default)]
        until: u64,
    },
    /// Which of these sessions are gone? Answered with `Answer::Gone`.
    Probe {
        id: u64,
        from: String,
        to: Vec<SessionId>,
    },
    /// A client resumes `session` on replica `from`: hand it over if `secret` and `who` are
    /// its. Answered with `Answer::Handover`, `Busy` or `Gone`.
    Claim {
        id: u64,
        from: String,
        session: SessionId,
        secret: String,
        who: Who,
    },
    /// The owner's answer to request `id`.
    Answer { id: u64, answer: Answer },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "a", rename_all = "snake_case")]
enum Answer {
    Delivered,
    /// The session is not on its replica (any more).
    Gone,
    /// The sender's share of the session's mailbox is full.
    Full,
    /// Answer to a probe: the sessions asked about that are not here.
    Missing {
        sessions: Vec<SessionId>,
    },
    /// The session moved to `replica`: send it there.
    Moved {
        replica: String,
    },
    /// Answer to a claim: the session, now the claimer's.
    Handover(Box<Handover>),
    /// Answer to a claim: the session is still attached here; ask again shortly.
    Busy,
}

/// A request to the pub/sub task: make the subscription to a camera's channel match whether
/// anyone here watches it, and say when that is done.
struct SyncCamera {
    camera: String,
    done: Option<oneshot::Sender<()>>,
}

/// Recent frames with their answers, oldest first; bounded by count and age.
#[derive(Default)]
struct Seen {
    answers: HashMap<(String, u64), Answer>,
    order: std::collections::VecDeque<((String, u64), Instant)>,
}

impl Seen {
    fn get(&self, key: &(String, u64)) -> Option<Answer> {
        self.answers.get(key).cloned()
    }

    fn insert(&mut self, key: (String, u64), answer: Answer, keep: Duration) {
        let now = Instant::now();
        while let Some((k, at)) = self.order.front()
            && (self.order.len() >= SEEN_LIMIT || now.duration_since(*at) > keep)
        {
            self.answers.remove(k);
            self.order.pop_front();
        }
        self.answers.insert(key.clone(), answer);
        self.order.push_back((key, now));
    }
}

pub struct RedisRouter {
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRouter")
            .field("prefix", &self.inner.cfg.prefix)
            .field("replica", &self.inner.replica)
            .finish_non_exhaustive()
    }
}

struct Inner {
    cfg: RedisRouterConfig,
    /// This replica's id: the prefix of its session ids and the name of its channel.
    replica: String,
    client: redis::Client,
    conn: ConnectionManager,
    hub: Hub,
    /// Cameras published on this replica, their sessions and presence epochs, for the refresh.
    cameras: Mutex<HashMap<String, (SessionId, u64)>>,
    /// Camera-channel changes, applied in order by the pub/sub task (the only one that
    /// touches the subscriptions, so no lock is held across network I/O).
    sync: mpsc::UnboundedSender<SyncCamera>,
    pubsub_up: AtomicBool,
    commands_ok: AtomicBool,
    /// Since when the backplane has been healthy without a break; `None` while it is not.
    healthy_since: Mutex<Option<Instant>>,
    /// Other replicas' liveness as last read.
    replicas: Mutex<HashMap<String, (bool, Instant)>>,
    /// Wakes the heartbeat after a reconnect: liveness and presence are restored at once.
    reconnected: Notify,
    next_id: AtomicU64,
    /// Requests sent to other replicas and waiting for their answer.
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    /// Frames delivered here lately, by sending replica and id, with their answer: a copy sent
    /// again gets the same answer and is not delivered twice.
    seen: Mutex<Seen>,
    publish: Script,
    refresh: Script,
    release: Script,
    send: Script,
    unmove: Script,
    /// Sessions that moved here from another replica: their `moved` keys are refreshed.
    moved_in: Mutex<HashSet<SessionId>>,
    /// Sessions that moved from here lately, and where to: a frame already on its way here is
    /// redirected, not refused.
    moved_out: Mutex<HashMap<SessionId, (String, Instant)>>,
    /// The server's side of hand-overs.
    claimer: Mutex<Option<std::sync::Weak<dyn Claimer>>>,
    /// The key of resume secrets, shared by every replica of the deployment.
    resume_key: [u8; 32],
    fence: Script,
    /// Sessions' states to save (`None`: to delete), newest only, by the saving task.
    unsaved: Mutex<HashMap<SessionId, Option<String>>>,
    unsaved_ready: Notify,
}

impl RedisRouter {
    /// Connects to Redis (failing if it cannot) and starts the pub/sub task and the
    /// heartbeat.
    pub async fn connect(cfg: RedisRouterConfig) -> Result<Self, RouterError> {
        let info = cfg.url.as_str().into_connection_info().map_err(backplane)?;
        // Keepalive and a user timeout: a half-open connection (a cut network) fails within
        // seconds instead of hanging until the kernel gives up.
        let keepalive = TcpKeepalive::new()
            .with_time(Duration::from_secs(5))
            .with_interval(Duration::from_secs(2))
            .with_retries(3);
        let tcp = TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(keepalive)
            .set_user_timeout(cfg.call_timeout * 2);
        let client = redis::Client::open(info.set_tcp_settings(tcp)).map_err(backplane)?;
        // Past a frame's deadline plus the margin: the send script's outcome must be known
        // before the command connection itself gives up on it.
        let response_timeout = cfg.call_timeout + CLOCK_MARGIN * 2;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.call_timeout))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            cfg.call_timeout * 2,
            client.get_connection_manager_with_config(manager_cfg),
        )
        .await
        .map_err(|_| RouterError(format!("timed out connecting to {}", redact(&cfg.url))))?
        .map_err(backplane)?;
        let replica = new_replica_id();
        let resume_key = shared_resume_key(&conn, &cfg).await?;
        let (sync, requests) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            cfg,
            replica,
            client,
            conn,
            hub: Hub::default(),
            cameras: Mutex::default(),
            sync,
            pubsub_up: AtomicBool::new(false),
            commands_ok: AtomicBool::new(false),
            healthy_since: Mutex::new(None),
            replicas: Mutex::default(),
            reconnected: Notify::new(),
            next_id: AtomicU64::new(1),
            pending: Mutex::default(),
            seen: Mutex::default(),
            publish: Script::new(PUBLISH_SCRIPT),
            refresh: Script::new(REFRESH_SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
            send: Script::new(SEND_SCRIPT),
            unmove: Script::new(UNMOVE_SCRIPT),
            moved_in: Mutex::default(),
            moved_out: Mutex::default(),
            claimer: Mutex::new(None),
            resume_key,
            fence: Script::new(FENCE_SCRIPT),
            unsaved: Mutex::default(),
            unsaved_ready: Notify::new(),
        });
        // Up before serving: alive to the others, and subscribed to its own channel.
        inner.beat().await?;
        let (sink, stream) = inner.open_pubsub().await?;
        inner.set_health(Some(true), None);
        let stop = CancellationToken::new();
        tokio::spawn(run_pubsub(
            inner.clone(),
            Some((sink, stream)),
            requests,
            stop.clone(),
        ));
        tokio::spawn(heartbeat(inner.clone(), stop.clone()));
        if inner.keeps_state() {
            tokio::spawn(save_states(inner.clone(), stop.clone()));
        }
        Ok(Self { inner, stop })
    }
}

impl Drop for RedisRouter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The deployment's resume key: `{prefix}resume-key`, made by whichever replica starts first.
/// Whoever can read Redis can already route frames as any session, so keeping it there adds
/// no power an attacker with Redis access lacks.
async fn shared_resume_key(
    conn: &ConnectionManager,
    cfg: &RedisRouterConfig,
) -> Result<[u8; 32], RouterError> {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let key = format!("{}resume-key", cfg.prefix);
    let fresh = engine.encode(rand::random::<[u8; 32]>());
    let read = async {
        redis::cmd("SET")
            .arg(&key)
            .arg(&fresh)
            .arg("NX")
            .query_async::<()>(&mut conn.clone())
            .await?;
        redis::cmd("GET")
            .arg(&key)
            .query_async::<String>(&mut conn.clone())
            .await
    };
    let value = tokio::time::timeout(cfg.call_timeout, read)
        .await
        .map_err(|_| RouterError("timed out reading the resume key".into()))?
        .map_err(backplane)?;
    engine
        .decode(value)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| RouterError(format!("{key} does not hold a 32-byte base64 key")))
}

fn new_replica_id() -> String {
    use base64::Engine;
    let bytes: [u8; 8] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The replica that handed out `session`.
fn owner_of(session: &str) -> Option<&str> {
    session.split_once('.').map(|(replica, _)| replica)
}

fn backplane(e: redis::RedisError) -> RouterError {
    RouterError(e.to_string())
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl Inner {
    fn replica_key(&self, replica: &str) -> String {
        format!("{}replica:{replica}", self.cfg.prefix)
    }

    fn replica_channel(&self, replica: &str) -> String {
        format!("{}r:{replica}", self.cfg.prefix)
    }

    fn camera_channel(&self, camera: &str) -> String {
        format!("{}c:{camera}", self.cfg.prefix)
    }

    fn presence_key(&self, camera: &str) -> String {
        format!("{}cam:{camera}", self.cfg.prefix)
    }

    fn states_key(&self, replica: &str) -> String {
        format!("{}sessions:{replica}", self.cfg.prefix)
    }

    fn keeps_state(&self) -> bool {
        !self.cfg.resume_grace.is_zero()
    }

    /// How long a replica's saved sessions outlive its last heartbeat: until it is found dead
    /// and its clients have had the resume grace to come back elsewhere.
    fn states_ttl(&self) -> Duration {
        self.cfg.replica_ttl + self.cfg.resume_grace + self.cfg.call_timeout
    }

    /// Queues `session`'s saved state to be written (`Some`) or deleted (`None`).
    fn queue_state(&self, session: &SessionId, record: Option<String>) {
        if !self.keeps_state() {
            return;
        }
        self.unsaved.lock().insert(session.clone(), record);
        self.unsaved_ready.notify_one();
    }

    fn moved_key(&self, session: &str) -> String {
        format!("{}moved:{session}", self.cfg.prefix)
    }

    fn tombstone_key(&self, camera: &str) -> String {
        format!("{}gone:{camera}", self.cfg.prefix)
    }

    fn ms(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    fn error<E: std::fmt::Display>(&self, what: &str, e: E) -> RouterError {
        self.cfg.backplane_errors.inc();
        tracing::warn!(error = %e, "redis {what} failed");
        RouterError(format!("{what}: {e}"))
    }

    /// Runs one Redis call within the call deadline.
    async fn call<T>(
        &self,
        what: &str,
        f: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RouterError> {
        match tokio::time::timeout(self.cfg.call_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(what, e)),
            Err(_) => Err(self.error(what, "timed out")),
        }
    }

    fn healthy(&self) -> bool {
        self.pubsub_up.load(Ordering::Acquire) && self.commands_ok.load(Ordering::Acquire)
    }

    fn set_health(&self, pubsub: Option<bool>, commands: Option<bool>) {
        if let Some(up) = pubsub {
            self.pubsub_up.store(up, Ordering::Release);
        }
        if let Some(ok) = commands {
            self.commands_ok.store(ok, Ordering::Release);
        }
        let healthy = self.healthy();
        let mut since = self.healthy_since.lock();
        match (healthy, since.is_some()) {
            (true, false) => *since = Some(Instant::now()),
            (false, true) => *since = None,
            _ => {}
        }
    }

    /// Whether absence in Redis can be trusted: the backplane has been healthy for a whole
    /// replica TTL, so every live replica has refreshed its keys since any outage.
    fn settled(&self) -> bool {
        self.healthy_since
            .lock()
            .is_some_and(|t| t.elapsed() >= self.cfg.replica_ttl)
    }

    /// Refreshes this replica's liveness key.
    async fn beat(&self) -> Result<(), RouterError> {
        let r = self
            .call(
                "SET replica",
                redis::cmd("SET")
                    .arg(self.replica_key(&self.replica))
                    .arg(1)
                    .arg("PX")
                    .arg(Self::ms(self.cfg.replica_ttl))
                    .query_async::<()>(&mut self.conn.clone()),
            )
            .await;
        self.set_health(None, Some(r.is_ok()));
        r?;
        self.refresh_moved().await;
        if self.keeps_state() {
            let _ = self
                .call(
                    "PEXPIRE sessions",
                    redis::cmd("PEXPIRE")
                        .arg(self.states_key(&self.replica))
                        .arg(Self::ms(self.states_ttl()))
                        .query_async::<i64>(&mut self.conn.clone()),
                )
                .await;
        }
        Ok(())
    }

    /// Restates the `moved` keys of sessions that moved here. They outlive this replica's
    /// liveness key (three TTLs), so that while it lives no sender falls back to the old
    /// holder, and once it is dead the sessions are found dead with it.
    async fn refresh_moved(&self) {
        let moved: Vec<SessionId> = self.moved_in.lock().iter().cloned().collect();
        for chunk in moved.chunks(SWEEP_CHUNK) {
            let mut pipe = redis::pipe();
            for session in chunk {
                pipe.cmd("SET")
                    .arg(self.moved_key(session))
                    .arg(&self.replica)
                    .arg("PX")
                    .arg(Self::ms(self.cfg.replica_ttl * 3))
                    .ignore();
            }
            let _ = self
                .call("SET moved", pipe.query_async::<()>(&mut self.conn.clone()))
                .await;
        }
    }

    /// Whether `replica` is alive. Unknown (Redis unreachable, or just back from an outage)
    /// counts as alive: only a replica's own silence over a whole TTL declares it dead.
    async fn replica_alive(&self, replica: &str) -> bool {
        if replica == self.replica {
            return true;
        }
        if let Some((alive, at)) = self.replicas.lock().get(replica)
            && at.elapsed() < LIVENESS_CACHE
        {
            return *alive;
        }
        let exists = self
            .call(
                "EXISTS replica",
                redis::cmd("EXISTS")
                    .arg(self.replica_key(replica))
                    .query_async::<i64>(&mut self.conn.clone()),
            )
            .await;
        let alive = match exists {
            Ok(n) => n > 0 || !self.settled(),
            Err(_) => true,
        };
        let mut replicas = self.replicas.lock();
        if replicas.len() > 4096 {
            replicas.clear();
        }
        replicas.insert(replica.to_owned(), (alive, Instant::now()));
        alive
    }

    async fn open_pubsub(&self) -> Result<(PubSubSink, PubSubStream), RouterError> {
        let pubsub = self
            .call("pub/sub connect", self.client.get_async_pubsub())
            .await?;
        let (mut sink, stream) = pubsub.split();
        let own = self.replica_channel(&self.replica);
        self.call("SUBSCRIBE", sink.subscribe(&own)).await?;
        Ok((sink, stream))
    }

    /// Publishes `payload` on `channel` through the deadline script: `Ok(n)` subscribers got
    /// it, `Ok(-1)` Redis saw the deadline pass first.
    async fn publish_until(
        &self,
        channel: &str,
        follow: Option<&str>,
        payload: &str,
        until_us: u64,
    ) -> Result<(i64, String), RouterError> {
        let left = Duration::from_micros(until_us.saturating_sub(now_us()));
        let mut invocation = self.send.prepare_invoke();
        // Not following: a key no session has.
        invocation
            .key(self.moved_key(follow.unwrap_or("")))
            .arg(until_us)
            .arg(channel)
            .arg(payload)
            .arg(format!("{}r:", self.cfg.prefix));
        // Not the plain call deadline: the sender must not give up before Redis would refuse.
        match tokio::time::timeout(
            left + CLOCK_MARGIN,
            invocation.invoke_async::<(i64, String)>(&mut self.conn.clone()),
        )
        .await
        {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(self.error("PUBLISH", e)),
            Err(_) => Err(self.error("PUBLISH", "timed out")),
        }
    }

    /// Sends a request to `replica` and waits for its answer: sent again every `RETRY` while
    /// unanswered, until the deadline (then a backplane error), or until the replica is found
    /// dead (then `Gone`). `make` builds the request with its id.
    /// `follow`: the session the request is for, whose `moved` key redirects it.
    async fn ask(
        &self,
        replica: &str,
        follow: Option<&str>,
        make: impl FnOnce(u64, String, u64) -> Envelope,
    ) -> Result<Answer, SendError> {
        self.ask_within(replica, follow, self.cfg.call_timeout, make)
            .await
    }

    /// As [`ask`](Self::ask), with a deadline of `within`.
    async fn ask_within(
        &self,
        replica: &str,
        follow: Option<&str>,
        within: Duration,
        make: impl FnOnce(u64, String, u64) -> Envelope,
    ) -> Result<Answer, SendError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline = u64::try_from(within.as_micros()).unwrap_or(u64::MAX);
        let until_us = now_us().saturating_add(deadline);
        let payload = serde_json::to_string(&make(id, self.replica.clone(), until_us))
            .map_err(|e| SendError::Backplane(self.error("encode", e).0))?;
        let (tx, mut answered) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let request = Request {
            id,
            follow,
            payload: &payload,
            until_us,
        };
        let result = self
            .ask_until_answered(replica, &request, &mut answered)
            .await;
        self.pending.lock().remove(&id);
        result
    }

    async fn ask_until_answered(
        &self,
        replica: &str,
        request: &Request<'_>,
        answered: &mut oneshot::Receiver<Answer>,
    ) -> Result<Answer, SendError> {
        let &Request {
            id,
            follow,
            payload,
            until_us,
        } = request;
        let mut replica = replica.to_owned();
        let mut channel = self.replica_channel(&replica);
        let mut redirects = 0;
        loop {
            let published = self
                .publish_until(&channel, follow, payload, until_us)
                .await;
            if let Ok((_, moved)) = &published
                && !moved.is_empty()
                && *moved != replica
            {
                // Answered by the holder named in Redis; its liveness is what counts now.
                replica.clone_from(moved);
                channel = self.replica_channel(&replica);
            }
            let expired = match published {
                Ok((n, _)) if n > 0 => false,
                Ok((0, _)) => {
                    if !self.replica_alive(&replica).await {
                        return Err(SendError::Gone);
                    }
                    false
                }
                // Redis saw the deadline pass: no copy was published after it.
                Ok(_) => true,
                // Most likely never run (the connection broke, e.g. Redis restarted); sent
                // again, since the owner delivers a frame once however many copies arrive.
                Err(_) => now_us() >= until_us,
            };
            if expired {
                // Only an answer to an earlier copy can still be on its way.
                let late = tokio::time::timeout(CLOCK_MARGIN, &mut *answered).await;
                return match late {
                    Ok(Ok(answer)) => Ok(answer),
                    // Whatever became of the frame, its receiver is gone with its replica.
                    _ if !self.replica_alive(&replica).await => Err(SendError::Gone),
                    _ => Err(SendError::Backplane(
                        self.error("PUBLISH", "no answer before the deadline").0,
                    )),
                };
            }
            let left = Duration::from_micros(until_us.saturating_sub(now_us()));
            match tokio::time::timeout(RETRY.min(left + CLOCK_MARGIN), &mut *answered).await {
                // A copy reached the old holder before the move was known: on to the new one.
                Ok(Ok(Answer::Moved { replica: to })) if redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    replica = to;
                    channel = self.replica_channel(&replica);
                    let (tx, rx) = oneshot::channel();
                    *answered = rx;
                    self.pending.lock().insert(id, tx);
                }
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(_)) => return Err(SendError::Backplane("request dropped".into())),
                Err(_) => {}
            }
        }
    }

    /// Publishes an answer to `replica`; best effort, the asker sends again if it is lost.
    fn answer(self: &Arc<Self>, replica: String, id: u64, answer: Answer) {
        let inner = self.clone();
        tokio::spawn(async move {
            let Ok(payload) = serde_json::to_string(&Envelope::Answer { id, answer }) else {
                return;
            };
            let _ = inner
                .call(
                    "PUBLISH answer",
                    redis::cmd("PUBLISH")
                        .arg(inner.replica_channel(&replica))
                        .arg(payload)
                        .query_async::<i64>(&mut inner.conn.clone()),
                )
                .await;
        });
    }

    /// Asks `holder` for `session` until it hands it over or refuses. A holder that does not
    /// answer is fenced off (the session's `moved` key names this replica from then on, so
    /// frames for it come here and wait) and asked on until it answers or is found dead; a dead
    /// holder's session is restored from the state it saved.
    async fn take_from(&self, holder: &str, session: &SessionId, secret: &str, who: &Who) -> Taken {
        // Long enough for a crashed holder's liveness key to expire and be read as gone.
        let deadline =
            Instant::now() + self.cfg.replica_ttl + self.cfg.call_timeout + LIVENESS_CACHE;
        let mut fenced = false;
        // Nobody on the holder's channel: it crashed (or its pub/sub connection is down). Fence
        // at once, before its liveness key runs out and others declare the session gone.
        let channel = self.replica_channel(holder);
        let listeners = self
            .call(
                "PUBSUB NUMSUB",
                redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(&channel)
                    .query_async::<(String, i64)>(&mut self.conn.clone()),
            )
            .await;
        if matches!(listeners, Ok((_, 0))) {
            match self.fence_off(holder, session).await {
                Ok(true) => fenced = true,
                Ok(false) => return Taken::No { fenced },
                Err(_) => {}
            }
        }
        loop {
            let answer = self
                .ask_within(
                    holder,
                    None,
                    CLAIM_ROUND.min(self.cfg.call_timeout),
                    |id, from, _| Envelope::Claim {
                        id,
                        from,
                        session: session.clone(),
                        secret: secret.to_owned(),
                        who: who.clone(),
                    },
                )
                .await;
            match answer {
                Ok(Answer::Handover(h)) => return Taken::Handover(h),
                // The old socket is letting go of it.
                Ok(Answer::Busy) => tokio::time::sleep(Duration::from_millis(20)).await,
                Ok(_) => return Taken::No { fenced },
                Err(SendError::Gone) => return self.restore(holder, session, who, fenced).await,
                Err(_) if !fenced => match self.fence_off(holder, session).await {
                    Ok(true) => fenced = true,
                    // Another replica took it first.
                    Ok(false) => return Taken::No { fenced },
                    Err(_) => {}
                },
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Taken::No { fenced };
            }
        }
    }

    /// Points `session`'s `moved` key here unless a replica other than `holder` has it.
    async fn fence_off(&self, holder: &str, session: &SessionId) -> Result<bool, RouterError> {
        let set = self
            .call(
                "fence session",
                self.fence
                    .key(self.moved_key(session))
                    .arg(holder)
                    .arg(&self.replica)
                    .arg(Self::ms(self.cfg.replica_ttl * 3))
                    .invoke_async::<i64>(&mut self.conn.clone()),
            )
            .await?;
        if set == 1 {
            self.moved_in.lock().insert(session.clone());
        }
        Ok(set == 1)
    }

    /// `session` from the state its dead `holder` saved, if that state is `who`'s.
    async fn restore(&self, holder: &str, session: &SessionId, who: &Who, fenced: bool) -> Taken {
        let saved = self
            .call(
                "HGET sessions",
                redis::cmd("HGET")
                    .arg(self.states_key(holder))
                    .arg(&**session)
                    .query_async::<Option<String>>(&mut self.conn.clone()),
            )
            .await;
        let record = saved
            .ok()
            .flatten()
            .and_then(|json| serde_json::from_str::<Record>(&json).ok())
            .filter(|r| {
                r.state.id == *session && r.state.user == who.user && r.state.role == who.role
            });
        let Some(record) = record else {
            return Taken::No { fenced };
        };
        if !fenced && !matches!(self.fence_off(holder, session).await, Ok(true)) {
            return Taken::No { fenced: false };
        }
        tracing::info!(%session, replica = holder, "session restored from a dead replica");
        Taken::Restored(record)
    }

    /// Deletes `session`'s `moved` key if it still names this replica.
    async fn unmove(&self, session: &str) {
        let _ = self
            .call(
                "DEL moved",
                self.unmove
                    .key(self.moved_key(session))
                    .arg(&self.replica)
                    .invoke_async::<i64>(&mut self.conn.clone()),
            )
            .await;
    }

    async fn release(&self, camera: &str, session: &SessionId) {
        let _ = self
            .call(
                "release presence",
                self.release
                    .key(self.presence_key(camera))
                    .key(self.tombstone_key(camera))
                    .arg(&**session)
                    .arg(Self::ms(self.cfg.presence_ttl))
                    .arg(self.camera_channel(camera))
                    .invoke_async::<i64>(&mut self.conn.clone()),
            )
            .await;
    }

    /// Asks the pub/sub task to match the camera's channel subscription to its watchers here;
    /// resolves once done (or at the deadline).
    async fn sync_camera(&self, camera: &str) -> Result<(), RouterError> {
        let (done, applied) = oneshot::channel();
        let request = SyncCamera {
            camera: camera.to_owned(),
            done: Some(done),
        };
        if self.sync.send(request).is_err() {
            return Err(RouterError("pub/sub task ended".into()));
        }
        match tokio::time::timeout(self.cfg.call_timeout, applied).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(self.error("SUBSCRIBE camera", "not done in time")),
        }
    }

    /// Reads the presence keys of watched cameras and applies what changed. A camera whose
    /// session's replica is dead goes offline (its key is released); a key missing while that
    /// replica lives is kept as it was until the backplane has settled, since the replica
    /// restores it after a Redis restart.
    async fn reconcile(&self) {
        let watched = self.hub.watched();
        for chunk in watched.chunks(SWEEP_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|(c, _)| self.presence_key(c)).collect();
            let values = self
                .call(
                    "MGET presence",
                    redis::cmd("MGET")
                        .arg(&keys)
                        .query_async::<Vec<Option<String>>>(&mut self.conn.clone()),
                )
                .await;
            let Ok(values) = values else {
                return;
            };
            for ((camera, known), value) in chunk.iter().zip(values) {
                let value = value.as_deref().and_then(parse_presence);
                let owner_alive = match &value {
                    Some((s, _)) => self.session_alive(s).await,
                    None => true,
                };
                match (known, value) {
                    (Some(Some(s)), Some((v, epoch))) if *s == v && !owner_alive => {
                        self.release(camera, &v).await;
                        self.hub.observe_if(camera, Some(known), None, Some(epoch));
                    }
                    (Some(Some(s)), None) if !self.settled() || self.restoring(s).await => {}
                    (_, None) => self.hub.observe_if(camera, Some(known), None, None),
                    (_, Some((v, epoch))) => {
                        self.hub
                            .observe_if(camera, Some(known), Some(v), Some(epoch));
                    }
                }
            }
        }
    }

    /// A presence key is missing but names a session whose replica is alive and which the
    /// refresh may not have restored yet (it runs every third of the presence TTL).
    async fn restoring(&self, session: &SessionId) -> bool {
        let recent = self
            .healthy_since
            .lock()
            .is_some_and(|t| t.elapsed() < self.cfg.presence_ttl);
        recent && self.session_alive(session).await
    }

    async fn session_alive(&self, session: &str) -> bool {
        if self.hub.contains(session) {
            return true;
        }
        match owner_of(session) {
            Some(owner) if self.replica_alive(owner).await => true,
            Some(_) => self.moved_alive(session).await,
            None => false,
        }
    }

    /// Whether `session` moved from the replica that made it to one that is alive.
    async fn moved_alive(&self, session: &str) -> bool {
        match self.holder(session).await {
            Some(holder) if Some(holder.as_str()) != owner_of(session) => {
                self.replica_alive(&holder).await
            }
            _ => false,
        }
    }

    /// Refreshes the TTL of this replica's cameras.
    async fn refresh(&self) {
        let cameras: Vec<(String, SessionId, u64)> = self
            .cameras
            .lock()
            .iter()
            .map(|(c, (s, e))| (c.clone(), s.clone(), *e))
            .collect();
        self.refresh_cameras(&cameras).await;
    }

    /// Refreshes (or restores) the presence of `cameras`; one taken over meanwhile is
    /// forgotten here and its session told it was replaced.
    async fn refresh_cameras(&self, cameras: &[(String, SessionId, u64)]) {
        for chunk in cameras.chunks(SWEEP_CHUNK) {
            let mut invocation = self.refresh.prepare_invoke();
            invocation.arg(Self::ms(self.cfg.presence_ttl));
            for (camera, session, epoch) in chunk {
                invocation
                    .key(self.presence_key(camera))
                    .key(self.tombstone_key(camera))
                    .arg(&**session)
                    .arg(*epoch)
                    .arg(self.camera_channel(camera));
            }
            let Ok(statuses) = self
                .call(
                    "refresh presence",
                    invocation.invoke_async::<Vec<i64>>(&mut self.conn.clone()),
                )
                .await
            else {
                continue;
            };
            for ((camera, session, _), status) in chunk.iter().zip(statuses) {
                if status == 0 && self.forget_camera(camera, session) {
                    let _ = self.hub.deliver(
                        session,
                        Arc::new(Delivery::Replaced {
                            camera: camera.clone(),
                        }),
                    );
                }
            }
        }
    }

    /// Forgets `camera` if `session` still publishes it here; returns whether it did.
    fn forget_camera(&self, camera: &str, session: &SessionId) -> bool {
        let mut cameras = self.cameras.lock();
        if cameras.get(camera).is_some_and(|(s, _)| s == session) {
            cameras.remove(camera);
            return true;
        }
        false
    }

    /// Where `session` moved from here lately, if it did.
    fn moved_to(&self, session: &str) -> Option<String> {
        let keep = self.cfg.call_timeout + CLOCK_MARGIN * 2;
        let mut moved = self.moved_out.lock();
        moved.retain(|_, (_, at)| at.elapsed() < keep);
        moved.get(session).map(|(replica, _)| replica.clone())
    }

    /// Answers a claim for `session` from replica `to`: asks the server for it and, if it is
    /// handed over, lets go of it here without a word to its peers or presence.
    fn hand_over(&self, session: &SessionId, secret: &str, who: &Who, to: &str) -> Answer {
        let claimer = self
            .claimer
            .lock()
            .as_ref()
            .and_then(std::sync::Weak::upgrade);
        let Some(claimer) = claimer else {
            return Answer::Gone;
        };
        let mut handover = match claimer.claim(session, secret, who) {
            Claim::Handover(h) => h,
            Claim::Busy => return Answer::Busy,
            Claim::No => return Answer::Gone,
        };
        if let Some(camera) = &handover.state.published {
            let mut cameras = self.cameras.lock();
            if let Some((_, epoch)) = cameras.get(camera).filter(|(s, _)| s == session) {
                handover.epoch = *epoch;
                cameras.remove(camera);
            }
        }
        for (camera, _) in &handover.state.watches {
            if self.hub.remove_watcher(camera, session) {
                let _ = self.sync.send(SyncCamera {
                    camera: camera.clone(),
                    done: None,
                });
            }
        }
        self.hub.remove_session(session);
        self.moved_in.lock().remove(session);
        self.queue_state(session, None);
        self.moved_out
            .lock()
            .insert(session.clone(), (to.to_owned(), Instant::now()));
        tracing::debug!(%session, replica = to, "session handed over");
        Answer::Handover(Box::new(handover))
    }

    /// The replica `session` is on: the one that moved it there, or the one that made it.
    async fn holder(&self, session: &str) -> Option<String> {
        let moved = self
            .call(
                "GET moved",
                redis::cmd("GET")
                    .arg(self.moved_key(session))
                    .query_async::<Option<String>>(&mut self.conn.clone()),
            )
            .await
            .ok()
            .flatten();
        moved.or_else(|| owner_of(session).map(str::to_owned))
    }

    /// A message on one of this replica's channels.
    fn dispatch(self: &Arc<Self>, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        let Some(rest) = channel.strip_prefix(self.cfg.prefix.as_str()) else {
            return;
        };
        if rest.strip_prefix("r:").is_some() {
            match serde_json::from_slice::<Envelope>(msg.get_payload_bytes()) {
                Ok(envelope) => self.on_envelope(envelope),
                Err(e) => {
                    self.error("decode envelope", e);
                }
            }
        } else if let Some(camera) = rest.strip_prefix("c:") {
            match serde_json::from_slice::<CameraEvent>(msg.get_payload_bytes()) {
                Ok(CameraEvent::Online { session, epoch }) => {
                    self.hub
                        .observe_if(camera, None, Some(session), Some(epoch));
                }
                Ok(CameraEvent::Offline { session, epoch }) => {
                    self.hub.observe_offline(camera, &session, Some(epoch));
                }
                Err(e) => {
                    self.error("decode camera event", e);
                }
            }
        }
    }

    /// This replica owns the sessions an envelope names: it alone says whether they are here.
    fn on_envelope(self: &Arc<Self>, envelope: Envelope) {
        match envelope {
            Envelope::Deliver {
                id,
                from,
                to,
                d,
                until,
            } => {
                if until > 0 && now_us() > until {
                    self.cfg.backplane_errors.inc();
                    tracing::debug!(%to, "a frame arrived after its deadline; dropped");
                    return;
                }
                let key = (from, id);
                let seen = self.seen.lock().get(&key);
                let answer = match seen {
                    Some(answer) => answer,
                    None => {
                        let answer = match self.hub.deliver(&to, Arc::new(d)) {
                            Ok(()) => Answer::Delivered,
                            Err(SendError::Full) => Answer::Full,
                            Err(_) => match self.moved_to(&to) {
                                Some(replica) => Answer::Moved { replica },
                                None => Answer::Gone,
                            },
                        };
                        let keep = self.cfg.call_timeout + CLOCK_MARGIN * 2;
                        self.seen.lock().insert(key.clone(), answer.clone(), keep);
                        answer
                    }
                };
                self.answer(key.0, id, answer);
            }
            Envelope::Probe { id, from, to } => {
                let sessions = to
                    .into_iter()
                    .filter(|s| !self.hub.contains(s) && self.moved_to(s).is_none())
                    .collect();
                self.answer(from, id, Answer::Missing { sessions });
            }
            Envelope::Claim {
                id,
                from,
                session,
                secret,
                who,
            } => {
                let key = (from, id);
                let seen = self.seen.lock().get(&key);
                let answer = match seen {
                    Some(answer) => answer,
                    None => {
                        let answer = self.hand_over(&session, &secret, &who, &key.0);
                        // A hand-over is remembered until the claimer must have its answer: a
                        // claim sent again gets the session, not a "gone".
                        if !matches!(answer, Answer::Busy) {
                            let keep = self.cfg.call_timeout + CLOCK_MARGIN * 2;
                            self.seen.lock().insert(key.clone(), answer.clone(), keep);
                        }
                        answer
                    }
                };
                self.answer(key.0, id, answer);
            }
            Envelope::Answer { id, answer } => {
                if let Some(tx) = self.pending.lock().remove(&id) {
                    let _ = tx.send(answer);
                }
            }
        }
    }
}

/// The pub/sub connection: this replica's channel and the channels of watched cameras. It
/// alone changes the subscriptions, in the order asked; when the connection fails (or stops
/// answering pings) it reconnects, subscribes to everything again and re-reads presence, since
/// events sent meanwhile are lost.
async fn run_pubsub(
    inner: Arc<Inner>,
    mut first: Option<(PubSubSink, PubSubStream)>,
    mut requests: mpsc::UnboundedReceiver<SyncCamera>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let ping_every = (inner.cfg.replica_ttl / 4).max(Duration::from_millis(100));
    loop {
        let connected = match first.take() {
            Some(c) => Ok(c),
            None => inner.open_pubsub().await,
        };
        let (mut sink, mut stream) = match connected {
            Ok(c) => c,
            Err(_) => {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let mut subscribed: HashSet<String> = HashSet::new();
        let cameras: Vec<String> = inner.hub.watched().into_iter().map(|(c, _)| c).collect();
        if resubscribe(&inner, &mut sink, &cameras, &mut subscribed)
            .await
            .is_err()
        {
            continue;
        }
        backoff = Duration::from_millis(100);
        inner.set_health(Some(true), None);
        inner.reconnected.notify_one();
        tracing::info!(replica = %inner.replica, "redis pub/sub up");
        let mut ping = tokio::time::interval(ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost = loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => inner.dispatch(&msg),
                    None => break "connection lost",
                },
                Some(request) = requests.recv() => {
                    let channel = inner.camera_channel(&request.camera);
                    let wanted = inner.hub.known(&request.camera).is_some();
                    let result = match (wanted, subscribed.contains(&channel)) {
                        (true, false) => inner.call("SUBSCRIBE", sink.subscribe(&channel)).await.map(|()| {
                            subscribed.insert(channel);
                        }),
                        (false, true) => inner.call("UNSUBSCRIBE", sink.unsubscribe(&channel)).await.map(|()| {
                            subscribed.remove(&channel);
                        }),
                        _ => Ok(()),
                    };
                    if result.is_err() {
                        // Dropped unanswered: the watcher's deadline answers it.
                        break "subscription change failed";
                    }
                    if let Some(done) = request.done {
                        let _ = done.send(());
                    }
                }
                _ = ping.tick() => {
                    if inner.call("PING", sink.ping::<redis::Value>()).await.is_err() {
                        break "ping unanswered";
                    }
                }
                () = stop.cancelled() => return,
            }
        };
        inner.set_health(Some(false), None);
        inner.error("pub/sub connection", lost);
    }
}

async fn resubscribe(
    inner: &Inner,
    sink: &mut PubSubSink,
    cameras: &[String],
    subscribed: &mut HashSet<String>,
) -> Result<(), RouterError> {
    for chunk in cameras.chunks(SWEEP_CHUNK) {
        let channels: Vec<String> = chunk.iter().map(|c| inner.camera_channel(c)).collect();
        inner.call("SUBSCRIBE", sink.subscribe(&channels)).await?;
        subscribed.extend(channels);
    }
    Ok(())
}

/// Writes the sessions' states queued by `save` (and deletes those of sessions gone), a
/// pipeline per `SWEEP_CHUNK`; what fails to be written waits for the next try.
async fn save_states(inner: Arc<Inner>, stop: CancellationToken) {
    let key = inner.states_key(&inner.replica);
    loop {
        tokio::select! {
            () = inner.unsaved_ready.notified() => {}
            () = stop.cancelled() => return,
        }
        loop {
            let batch: Vec<(SessionId, Option<String>)> = {
                let mut unsaved = inner.unsaved.lock();
                let sessions: Vec<SessionId> = unsaved.keys().take(SWEEP_CHUNK).cloned().collect();
                sessions
                    .into_iter()
                    .filter_map(|s| unsaved.remove(&s).map(|r| (s, r)))
                    .collect()
            };
            if batch.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            for (session, record) in &batch {
                match record {
                    Some(json) => pipe.cmd("HSET").arg(&key).arg(&**session).arg(json),
                    None => pipe.cmd("HDEL").arg(&key).arg(&**session),
                }
                .ignore();
            }
            pipe.cmd("PEXPIRE")
                .arg(&key)
                .arg(Inner::ms(inner.states_ttl()))
                .ignore();
            let written = inner
                .call(
                    "save sessions",
                    pipe.query_async::<()>(&mut inner.conn.clone()),
                )
                .await;
            if written.is_err() {
                // Kept unless a newer state replaced it meanwhile; tried again shortly.
                {
                    let mut unsaved = inner.unsaved.lock();
                    for (session, record) in batch {
                        unsaved.entry(session).or_insert(record);
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}

/// Liveness every quarter of the replica TTL, presence re-read at the same pace (a crashed
/// replica's cameras go offline within the TTL and one beat), presence refreshed every third
/// of its TTL. Right after a pub/sub reconnect, all of it at once.
async fn heartbeat(inner: Arc<Inner>, stop: CancellationToken) {
    let beat_every = (inner.cfg.replica_ttl / 4).max(Duration::from_millis(100));
    let refresh_every = (inner.cfg.presence_ttl / 3).max(Duration::from_millis(100));
    let mut beat = tokio::time::interval(beat_every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(refresh_every);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = beat.tick() => {
                let _ = inner.beat().await;
                inner.reconcile().await;
            }
            _ = refresh.tick() => inner.refresh().await,
            () = inner.reconnected.notified() => {
                let _ = inner.beat().await;
                inner.refresh().await;
                inner.reconcile().await;
            }
            () = stop.cancelled() => return,
        }
    }
}

impl Router for RedisRouter {
    fn new_session_id(&self) -> SessionId {
        let random = super::new_session_id();
        SessionId::from(format!("{}.{random}", self.inner.replica))
    }

    fn healthy(&self) -> bool {
        self.inner.healthy()
    }

    fn register<'a>(
        &'a self,
        session: &'a SessionId,
        mailbox: Arc<Mailbox>,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        // Frames for it come through this replica's channel: nothing to ask Redis.
        self.inner.hub.insert_session(session.clone(), mailbox);
        async { Ok(()) }.boxed()
    }

    fn unregister<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, ()> {
        let inner = &self.inner;
        inner.hub.remove_session(session);
        inner.queue_state(session, None);
        let moved_in = inner.moved_in.lock().remove(session);
        async move {
            if moved_in {
                inner.unmove(session).await;
            }
        }
        .boxed()
    }

    fn local_mailbox(&self, session: &str) -> Option<Arc<Mailbox>> {
        self.inner.hub.mailbox(session)
    }

    fn keeps_state(&self) -> bool {
        self.inner.keeps_state()
    }

    fn save(&self, state: SessionState) {
        let inner = &self.inner;
        let epoch = state
            .published
            .as_ref()
            .and_then(|camera| {
                let cameras = inner.cameras.lock();
                cameras
                    .get(camera)
                    .filter(|(s, _)| *s == state.id)
                    .map(|(_, e)| *e)
            })
            .unwrap_or(0);
        let id = state.id.clone();
        if let Ok(json) = serde_json::to_string(&Record { state, epoch }) {
            inner.queue_state(&id, Some(json));
        }
    }

    fn resume_key(&self) -> Option<[u8; 32]> {
        Some(self.inner.resume_key)
    }

    fn set_claimer(&self, claimer: std::sync::Weak<dyn Claimer>) {
        *self.inner.claimer.lock() = Some(claimer);
    }

    fn claim<'a>(
        &'a self,
        session: &'a SessionId,
        secret: &'a str,
        who: &'a Who,
        mailbox: Arc<Mailbox>,
    ) -> BoxFuture<'a, Option<SessionState>> {
        async move {
            let inner = &self.inner;
            if !inner.healthy() {
                return None;
            }
            let holder = inner.holder(session).await?;
            if holder == inner.replica {
                return None;
            }
            // Reachable here before the old holder lets go: a frame that reaches it after the
            // hand-over is answered `moved` and sent on here. The `moved` key is written once
            // the session is ours, or as a fence while a silent holder is awaited.
            inner.hub.insert_session(session.clone(), mailbox.clone());
            let (state, epoch, queued, restored) =
                match inner.take_from(&holder, session, secret, who).await {
                    Taken::Handover(h) => {
                        let Handover {
                            state,
                            epoch,
                            queued,
                        } = *h;
                        (state, epoch, queued, false)
                    }
                    Taken::Restored(Record { state, epoch }) => (state, epoch, Vec::new(), true),
                    Taken::No { fenced } => {
                        inner.hub.remove_session(session);
                        if fenced {
                            inner.moved_in.lock().remove(session);
                            inner.unmove(session).await;
                            // Frames that came here behind the fence: their senders hear the
                            // session is gone, as its holder would have told them.
                            super::refuse_waiting(self, session, &mailbox).await;
                        }
                        return None;
                    }
                };
            inner.moved_in.lock().insert(session.clone());
            let _ = inner
                .call(
                    "SET moved",
                    redis::cmd("SET")
                        .arg(inner.moved_key(session))
                        .arg(&inner.replica)
                        .arg("PX")
                        .arg(Inner::ms(inner.cfg.replica_ttl * 3))
                        .query_async::<()>(&mut inner.conn.clone()),
                )
                .await;
            mailbox.prepend(queued);
            if let Some(camera) = &state.published {
                let entry = (camera.clone(), session.clone(), epoch);
                inner
                    .cameras
                    .lock()
                    .insert(camera.clone(), (session.clone(), epoch));
                if restored {
                    // Its presence may have lapsed while its replica was dying.
                    inner.refresh_cameras(&[entry]).await;
                }
            }
            tracing::debug!(%session, from = holder, "session moved here");
            Some(state)
        }
        .boxed()
    }

    fn send<'a>(
        &'a self,
        to: &'a SessionId,
        delivery: Delivery,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        async move {
            let inner = &self.inner;
            let owner = match owner_of(to) {
                // Here, or not an id any replica handed out: the hub has the answer.
                _ if inner.hub.contains(to) => return inner.hub.deliver(to, Arc::new(delivery)),
                None => return Err(SendError::Gone),
                // Made elsewhere, or made here and moved away: its `moved` key, if any, says
                // where it is now.
                Some(owner) => owner,
            };
            let follow = to.clone();
            let to = to.clone();
            let answer = inner
                .ask(owner, Some(&follow), |id, from, until| Envelope::Deliver {
                    id,
                    from,
                    to,
                    d: delivery,
                    until,
                })
                .await?;
            match answer {
                Answer::Delivered => Ok(()),
                Answer::Full => Err(SendError::Full),
                Answer::Gone
                | Answer::Missing { .. }
                | Answer::Moved { .. }
                | Answer::Handover(_)
                | Answer::Busy => Err(SendError::Gone),
            }
        }
        .boxed()
    }

    fn publish<'a>(
        &'a self,
        camera: &'a str,
        session: &'a SessionId,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        async move {
            let inner = &self.inner;
            if !inner.healthy() {
                return Err(RouterError("backplane unavailable".into()));
            }
            let published = inner
                .call(
                    "publish presence",
                    inner
                        .publish
                        .key(inner.presence_key(camera))
                        .key(inner.tombstone_key(camera))
                        .arg(&**session)
                        .arg(Inner::ms(inner.cfg.presence_ttl))
                        .arg(inner.camera_channel(camera))
                        .invoke_async::<(String, u64)>(&mut inner.conn.clone()),
                )
                .await?;
            let (previous, epoch) = published;
            inner
                .cameras
                .lock()
                .insert(camera.to_owned(), (session.clone(), epoch));
            if let Some((previous, _)) = parse_presence(&previous).filter(|(p, _)| p != session) {
                let replaced = Delivery::Replaced {
                    camera: camera.to_owned(),
                };
                let _ = self.send(&previous, replaced).await;
            }
            Ok(())
        }
        .boxed()
    }

    fn unpublish<'a>(&'a self, camera: &'a str, session: &'a SessionId) -> BoxFuture<'a, ()> {
        async move {
            self.inner.forget_camera(camera, session);
            self.inner.release(camera, session).await;
        }
        .boxed()
    }

    fn watch<'a>(
        &'a self,
        camera: &'a str,
        viewer: &'a SessionId,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        async move {
            let inner = &self.inner;
            // A camera published here is known without Redis, outage or not.
            let local = inner.cameras.lock().get(camera).map(|(s, _)| s.clone());
            if let Some(session) = local {
                inner.hub.add_watcher(camera, viewer, Some(Some(session)));
                let _ = inner.sync.send(SyncCamera {
                    camera: camera.to_owned(),
                    done: None,
                });
                return Ok(());
            }
            if !inner.healthy() {
                return Err(RouterError("backplane unavailable".into()));
            }
            inner.hub.add_watcher(camera, viewer, None);
            // Subscribed before the key is read, so an event after the read is not missed.
            let read = async {
                inner.sync_camera(camera).await?;
                inner
                    .call(
                        "GET presence",
                        redis::cmd("GET")
                            .arg(inner.presence_key(camera))
                            .query_async::<Option<String>>(&mut inner.conn.clone()),
                    )
                    .await
            };
            match read.await {
                Ok(value) => {
                    let known = None;
                    match value.as_deref().and_then(parse_presence) {
                        Some((s, epoch)) => {
                            inner
                                .hub
                                .observe_if(camera, Some(&known), Some(s), Some(epoch));
                        }
                        None => inner.hub.observe_if(camera, Some(&known), None, None),
                    }
                    Ok(())
                }
                Err(e) => {
                    self.unwatch(camera, viewer).await;
                    Err(e)
                }
            }
        }
        .boxed()
    }

    fn unwatch<'a>(&'a self, camera: &'a str, viewer: &'a SessionId) -> BoxFuture<'a, ()> {
        if self.inner.hub.remove_watcher(camera, viewer) {
            let _ = self.inner.sync.send(SyncCamera {
                camera: camera.to_owned(),
                done: None,
            });
        }
        async {}.boxed()
    }

    fn camera_gone<'a>(&'a self, camera: &'a str, session: &'a SessionId) -> BoxFuture<'a, ()> {
        async move {
            self.inner.release(camera, session).await;
        }
        .boxed()
    }

    fn alive<'a>(&'a self, sessions: &'a [SessionId]) -> BoxFuture<'a, Vec<bool>> {
        async move {
            let inner = &self.inner;
            let mut alive = vec![true; sessions.len()];
            let mut remote: HashMap<&str, Vec<usize>> = HashMap::new();
            for (i, s) in sessions.iter().enumerate() {
                match owner_of(s) {
                    _ if inner.hub.contains(s) => {}
                    Some(owner) if owner != inner.replica => {
                        remote.entry(owner).or_default().push(i)
                    }
                    Some(_) => alive[i] = inner.moved_alive(s).await,
                    None => alive[i] = false,
                }
            }
            // Each owner says which of its sessions are gone; no answer leaves them alive.
            for (owner, indices) in remote {
                let to: Vec<SessionId> = indices.iter().map(|&i| sessions[i].clone()).collect();
                match inner
                    .ask(owner, None, |id, from, _| Envelope::Probe { id, from, to })
                    .await
                {
                    Ok(Answer::Missing { sessions: gone }) => {
                        for &i in &indices {
                            // Not at its maker; it may have moved (to a live replica).
                            alive[i] = !gone.contains(&sessions[i])
                                || inner.moved_alive(&sessions[i]).await;
                        }
                    }
                    Err(SendError::Gone) => {
                        for &i in &indices {
                            alive[i] = inner.moved_alive(&sessions[i]).await;
                        }
                    }
                    _ => {}
                }
            }
            alive
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    async fn redis() -> (iceway_testkit::Proc, String) {
        iceway_testkit::require(
            "redis-server",
            "apt-get install -y --no-install-recommends redis-server",
        );
        let port = iceway_testkit::free_port();
        let proc = iceway_testkit::Proc::spawn(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null()),
            "redis-server",
        );
        let url = format!("redis://127.0.0.1:{port}/");
        let client = redis::Client::open(url.as_str()).expect("url");
        iceway_testkit::wait_until("redis answers", Duration::from_secs(15), || async {
            client.get_multiplexed_async_connection().await.is_ok()
        })
        .await;
        (proc, url)
    }

    async fn router(url: &str) -> RedisRouter {
        RedisRouter::connect(RedisRouterConfig {
            url: url.to_owned(),
            prefix: "t:".into(),
            presence_ttl: Duration::from_secs(30),
            replica_ttl: Duration::from_secs(10),
            call_timeout: Duration::from_secs(5),
            resume_grace: Duration::ZERO,
            backplane_errors: IntCounter::new("e", "e").expect("counter"),
        })
        .await
        .expect("connect")
    }

    #[tokio::test]
    async fn a_refresh_racing_an_unpublish_does_not_bring_the_camera_back() {
        let (_redis, url) = redis().await;
        let r = router(&url).await;
        let session = r.new_session_id();
        r.register(&session, Mailbox::new())
            .await
            .expect("register");
        r.publish("cam1", &session).await.expect("publish");
        // The refresh took its list of cameras just before the camera left.
        let snapshot = r.inner.cameras.lock().clone();
        r.unpublish("cam1", &session).await;
        *r.inner.cameras.lock() = snapshot;
        r.inner.refresh().await;
        let value: Option<String> = redis::cmd("GET")
            .arg(r.inner.presence_key("cam1"))
            .query_async(&mut r.inner.conn.clone())
            .await
            .expect("GET");
        assert_eq!(value, None, "the departed camera is not re-created");
        assert!(r.inner.cameras.lock().is_empty(), "and is forgotten");
    }

    #[tokio::test]
    async fn each_publish_gets_a_newer_epoch_than_the_last_even_across_a_release() {
        let (_redis, url) = redis().await;
        let (a, b) = (router(&url).await, router(&url).await);
        let (sa, sb) = (a.new_session_id(), b.new_session_id());
        a.publish("cam1", &sa).await.expect("publish on a");
        let ea = a.inner.cameras.lock()["cam1"].1;
        b.publish("cam1", &sb).await.expect("publish on b");
        let eb = b.inner.cameras.lock()["cam1"].1;
        assert!(eb > ea, "{eb} > {ea}");
        b.unpublish("cam1", &sb).await;
        a.publish("cam1", &sa).await.expect("publish again");
        let again = a.inner.cameras.lock()["cam1"].1;
        assert!(again > eb, "{again} > {eb}");
    }
}
