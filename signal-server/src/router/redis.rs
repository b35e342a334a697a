//! Replicas sharing presence and routing through Redis (DESIGN §3 "Scale-out").
//!
//! - Presence: key `{prefix}cam:{camera}` holds the camera's session, with a TTL that the
//!   publishing replica refreshes every `presence_ttl / 3`. A replica that dies stops
//!   refreshing, so its cameras expire without anyone cleaning up after it.
//! - Routing: each session subscribes to `{prefix}s:{session}`; `PUBLISH` answers how many
//!   subscribers got the frame, so 0 means the peer is gone (`peer-gone`), with no lookup.
//! - Presence events: `{prefix}c:{camera}` carries online/offline events to every replica with
//!   watchers of that camera. Events can race or be missed while a pub/sub connection is down,
//!   so each replica also re-reads the keys of its watched cameras on every sweep; the hub only
//!   applies a read if no newer event arrived meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Delivery, Hub, Mailbox, Router, RouterError, SendError, SessionId};

/// Keys and ids per Redis command in a sweep; keeps each command's reply small.
const SWEEP_CHUNK: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Refreshes the presence keys of this replica's cameras: 1 refreshed, 2 re-created (it had
/// expired, e.g. after a Redis outage; watchers must hear it is online again), 0 taken over by
/// a newer session of the camera.
const REFRESH_SCRIPT: &str = r"
local out = {}
for i, k in ipairs(KEYS) do
  local s = ARGV[i + 1]
  local v = redis.call('GET', k)
  if v == s then
    redis.call('PEXPIRE', k, ARGV[1])
    out[i] = 1
  elseif not v then
    redis.call('SET', k, s, 'PX', ARGV[1])
    out[i] = 2
  else
    out[i] = 0
  end
end
return out
";

/// Deletes a presence key only if it still names the given session.
const RELEASE_SCRIPT: &str = r"
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
    pub backplane_errors: IntCounter,
}

/// A camera's presence change, on the camera's channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum CameraEvent {
    Online { session: SessionId },
    Offline { session: SessionId },
}

pub struct RedisRouter {
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRouter")
            .field("prefix", &self.inner.cfg.prefix)
            .finish_non_exhaustive()
    }
}

struct Inner {
    cfg: RedisRouterConfig,
    client: redis::Client,
    conn: ConnectionManager,
    hub: Hub,
    sink: Mutex<PubSubSink>,
    /// Camera channels subscribed; changed only under this lock so a last unwatch and a first
    /// watch of the same camera cannot reorder their UNSUBSCRIBE and SUBSCRIBE.
    camera_channels: tokio::sync::Mutex<HashSet<String>>,
    /// Cameras published on this replica and their sessions, for the TTL refresh.
    cameras: Mutex<HashMap<String, SessionId>>,
    refresh: redis::Script,
    release: redis::Script,
}

impl RedisRouter {
    /// Connects to Redis (failing if it cannot) and starts the pub/sub reader and the presence
    /// sweep.
    pub async fn connect(cfg: RedisRouterConfig) -> Result<Self, RouterError> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(backplane)?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            client.get_connection_manager_with_config(manager_cfg),
        )
        .await
        .map_err(|_| RouterError(format!("timed out connecting to {}", redact(&cfg.url))))?
        .map_err(backplane)?;
        let (sink, stream) = open_pubsub(&client).await?;
        let inner = Arc::new(Inner {
            cfg,
            client,
            conn,
            hub: Hub::default(),
            sink: Mutex::new(sink),
            camera_channels: tokio::sync::Mutex::default(),
            cameras: Mutex::default(),
            refresh: redis::Script::new(REFRESH_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
        });
        let stop = CancellationToken::new();
        tokio::spawn(read_pubsub(inner.clone(), stream, stop.clone()));
        tokio::spawn(sweep_loop(inner.clone(), stop.clone()));
        Ok(Self { inner, stop })
    }
}

impl Drop for RedisRouter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn open_pubsub(client: &redis::Client) -> Result<(PubSubSink, PubSubStream), RouterError> {
    let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| RouterError("timed out opening the pub/sub connection".into()))?
        .map_err(backplane)?;
    Ok(pubsub.split())
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
    fn session_channel(&self, session: &str) -> String {
        format!("{}s:{session}", self.cfg.prefix)
    }

    fn camera_channel(&self, camera: &str) -> String {
        format!("{}c:{camera}", self.cfg.prefix)
    }

    fn presence_key(&self, camera: &str) -> String {
        format!("{}cam:{camera}", self.cfg.prefix)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.cfg.presence_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn error<E: std::fmt::Display>(&self, what: &str, e: E) -> RouterError {
        self.cfg.backplane_errors.inc();
        tracing::warn!(error = %e, "redis {what} failed");
        RouterError(format!("{what}: {e}"))
    }

    fn sink(&self) -> PubSubSink {
        self.sink.lock().clone()
    }

    async fn publish_json<T: Serialize>(&self, channel: &str, msg: &T) -> Result<i64, RouterError> {
        let payload = serde_json::to_string(msg).map_err(|e| self.error("encode", e))?;
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(|e| self.error("PUBLISH", e))
    }

    async fn camera_event(&self, camera: &str, event: CameraEvent) {
        let _ = self
            .publish_json(&self.camera_channel(camera), &event)
            .await;
    }

    /// Subscribes to or unsubscribes from a camera's channel to match whether anyone here
    /// watches it.
    async fn sync_camera_channel(&self, camera: &str) -> Result<(), RouterError> {
        let mut subscribed = self.camera_channels.lock().await;
        let wanted = self.hub.known(camera).is_some();
        let channel = self.camera_channel(camera);
        match (wanted, subscribed.contains(&channel)) {
            (true, false) => {
                self.sink()
                    .subscribe(&channel)
                    .await
                    .map_err(|e| self.error("SUBSCRIBE", e))?;
                subscribed.insert(channel);
            }
            (false, true) => {
                subscribed.remove(&channel);
                if let Err(e) = self.sink().unsubscribe(&channel).await {
                    self.error("UNSUBSCRIBE", e);
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn release(&self, camera: &str, session: &SessionId) {
        let released = self
            .release
            .key(self.presence_key(camera))
            .arg(&**session)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await;
        match released {
            Ok(1) => {
                self.camera_event(
                    camera,
                    CameraEvent::Offline {
                        session: session.clone(),
                    },
                )
                .await;
            }
            Ok(_) => {}
            Err(e) => {
                self.error("release presence", e);
            }
        }
    }

    /// Reads the presence keys of watched cameras and applies what changed.
    async fn reconcile(&self) {
        let watched = self.hub.watched();
        for chunk in watched.chunks(SWEEP_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|(c, _)| self.presence_key(c)).collect();
            let values = redis::cmd("MGET")
                .arg(&keys)
                .query_async::<Vec<Option<String>>>(&mut self.conn.clone())
                .await;
            match values {
                Ok(values) => {
                    for ((camera, known), value) in chunk.iter().zip(values) {
                        self.hub
                            .observe_if(camera, Some(known), value.map(SessionId::from));
                    }
                }
                Err(e) => {
                    self.error("MGET presence", e);
                }
            }
        }
    }

    /// Refreshes the TTL of this replica's cameras.
    async fn refresh(&self) {
        let cameras: Vec<(String, SessionId)> = self
            .cameras
            .lock()
            .iter()
            .map(|(c, s)| (c.clone(), s.clone()))
            .collect();
        for chunk in cameras.chunks(SWEEP_CHUNK) {
            let mut invocation = self.refresh.prepare_invoke();
            invocation.arg(self.ttl_ms());
            for (camera, session) in chunk {
                invocation.key(self.presence_key(camera)).arg(&**session);
            }
            let result = invocation
                .invoke_async::<Vec<i64>>(&mut self.conn.clone())
                .await;
            let statuses = match result {
                Ok(s) => s,
                Err(e) => {
                    self.error("refresh presence", e);
                    continue;
                }
            };
            for ((camera, session), status) in chunk.iter().zip(statuses) {
                match status {
                    2 => {
                        self.camera_event(
                            camera,
                            CameraEvent::Online {
                                session: session.clone(),
                            },
                        )
                        .await;
                    }
                    0 => {
                        self.forget_camera(camera, session);
                        let _ = self.hub.deliver(
                            session,
                            Arc::new(Delivery::Replaced {
                                camera: camera.clone(),
                            }),
                        );
                    }
                    _ => {}
                }
            }
        }
    }

    fn forget_camera(&self, camera: &str, session: &SessionId) {
        let mut cameras = self.cameras.lock();
        if cameras.get(camera) == Some(session) {
            cameras.remove(camera);
        }
    }

    fn dispatch(&self, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        let Some(rest) = channel.strip_prefix(self.cfg.prefix.as_str()) else {
            return;
        };
        if let Some(session) = rest.strip_prefix("s:") {
            match serde_json::from_slice::<Delivery>(msg.get_payload_bytes()) {
                Ok(d) => {
                    // A miss means the session is leaving; its subscription is on its way out.
                    let _ = self.hub.deliver(session, Arc::new(d));
                }
                Err(e) => {
                    self.error("decode delivery", e);
                }
            }
        } else if let Some(camera) = rest.strip_prefix("c:") {
            match serde_json::from_slice::<CameraEvent>(msg.get_payload_bytes()) {
                Ok(CameraEvent::Online { session }) => self.hub.observe(camera, Some(session)),
                Ok(CameraEvent::Offline { session }) => self.hub.observe_offline(camera, &session),
                Err(e) => {
                    self.error("decode camera event", e);
                }
            }
        }
    }

    /// After a reconnect: subscribe again to every channel this replica needs.
    async fn resubscribe(&self) -> Result<(), RouterError> {
        let mut sink = self.sink();
        let sessions: Vec<String> = self
            .hub
            .session_ids()
            .iter()
            .map(|s| self.session_channel(s))
            .collect();
        for chunk in sessions.chunks(SWEEP_CHUNK) {
            sink.subscribe(chunk)
                .await
                .map_err(|e| self.error("SUBSCRIBE", e))?;
        }
        let cameras: Vec<String> = self.camera_channels.lock().await.iter().cloned().collect();
        for chunk in cameras.chunks(SWEEP_CHUNK) {
            sink.subscribe(chunk)
                .await
                .map_err(|e| self.error("SUBSCRIBE", e))?;
        }
        Ok(())
    }
}

/// Reads pub/sub messages; when the connection drops, reconnects, resubscribes and re-reads
/// presence, since events sent meanwhile are lost.
async fn read_pubsub(inner: Arc<Inner>, mut stream: PubSubStream, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => inner.dispatch(&msg),
                    None => break,
                },
                () = stop.cancelled() => return,
            }
        }
        inner.error("pub/sub connection", "connection lost");
        loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match open_pubsub(&inner.client).await {
                Ok((sink, new_stream)) => {
                    *inner.sink.lock() = sink;
                    stream = new_stream;
                    if inner.resubscribe().await.is_ok() {
                        tracing::info!("redis pub/sub reconnected");
                        backoff = Duration::from_millis(100);
                        inner.reconcile().await;
                        break;
                    }
                }
                Err(e) => {
                    inner.error("pub/sub reconnect", e);
                }
            }
        }
    }
}

async fn sweep_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let period = (inner.cfg.presence_ttl / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        inner.refresh().await;
        inner.reconcile().await;
    }
}

impl Router for RedisRouter {
    fn register<'a>(
        &'a self,
        session: &'a SessionId,
        mailbox: Arc<Mailbox>,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        async move {
            let inner = &self.inner;
            inner.hub.insert_session(session.clone(), mailbox);
            if let Err(e) = inner.sink().subscribe(inner.session_channel(session)).await {
                inner.hub.remove_session(session);
                return Err(inner.error("SUBSCRIBE", e));
            }
            Ok(())
        }
        .boxed()
    }

    fn unregister<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, ()> {
        async move {
            let inner = &self.inner;
            inner.hub.remove_session(session);
            if let Err(e) = inner
                .sink()
                .unsubscribe(inner.session_channel(session))
                .await
            {
                inner.error("UNSUBSCRIBE", e);
            }
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
            if inner.hub.contains(to) {
                return inner.hub.deliver(to, Arc::new(delivery));
            }
            match inner
                .publish_json(&inner.session_channel(to), &delivery)
                .await
            {
                Ok(0) => Err(SendError::Gone),
                Ok(_) => Ok(()),
                Err(e) => Err(SendError::Backplane(e.0)),
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
            let previous = redis::cmd("SET")
                .arg(inner.presence_key(camera))
                .arg(&**session)
                .arg("PX")
                .arg(inner.ttl_ms())
                .arg("GET")
                .query_async::<Option<String>>(&mut inner.conn.clone())
                .await
                .map_err(|e| inner.error("SET presence", e))?;
            inner
                .cameras
                .lock()
                .insert(camera.to_owned(), session.clone());
            if let Some(previous) = previous.filter(|p| **p != **session) {
                let previous = SessionId::from(previous);
                let _ = self
                    .send(
                        &previous,
                        Delivery::Replaced {
                            camera: camera.to_owned(),
                        },
                    )
                    .await;
            }
            inner
                .camera_event(
                    camera,
                    CameraEvent::Online {
                        session: session.clone(),
                    },
                )
                .await;
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
            inner.hub.add_watcher(camera, viewer, None);
            // Subscribe before reading the key, so an event after the read is not missed.
            if let Err(e) = inner.sync_camera_channel(camera).await {
                self.unwatch(camera, viewer).await;
                return Err(e);
            }
            let Some(known @ None) = inner.hub.known(camera) else {
                return Ok(());
            };
            let value = redis::cmd("GET")
                .arg(inner.presence_key(camera))
                .query_async::<Option<String>>(&mut inner.conn.clone())
                .await;
            match value {
                Ok(value) => {
                    inner
                        .hub
                        .observe_if(camera, Some(&known), value.map(SessionId::from));
                    Ok(())
                }
                Err(e) => {
                    let e = inner.error("GET presence", e);
                    self.unwatch(camera, viewer).await;
                    Err(e)
                }
            }
        }
        .boxed()
    }

    fn unwatch<'a>(&'a self, camera: &'a str, viewer: &'a SessionId) -> BoxFuture<'a, ()> {
        async move {
            if self.inner.hub.remove_watcher(camera, viewer) {
                let _ = self.inner.sync_camera_channel(camera).await;
            }
        }
        .boxed()
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
            let mut alive: Vec<bool> = sessions.iter().map(|s| inner.hub.contains(s)).collect();
            let remote: Vec<usize> = (0..sessions.len()).filter(|&i| !alive[i]).collect();
            for chunk in remote.chunks(SWEEP_CHUNK) {
                let channels: Vec<String> = chunk
                    .iter()
                    .map(|&i| inner.session_channel(&sessions[i]))
                    .collect();
                let counts = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(&channels)
                    .query_async::<Vec<(String, i64)>>(&mut inner.conn.clone())
                    .await;
                match counts {
                    Ok(counts) => {
                        for (&i, (_, n)) in chunk.iter().zip(counts) {
                            alive[i] = n > 0;
                        }
                    }
                    Err(e) => {
                        // Unknown is not gone: keep peers through a backplane hiccup.
                        inner.error("PUBSUB NUMSUB", e);
                        for &i in chunk {
                            alive[i] = true;
                        }
                    }
                }
            }
            alive
        }
        .boxed()
    }
}
