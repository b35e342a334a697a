//! signal mode: N camera/viewer pairs over WebSocket against a signaling server. Each pair
//! negotiates (see [`frames`]), then cameras send stamped `candidate` frames of about
//! `message_size` bytes to their viewer at a fixed total rate, and viewers record the relay
//! latency (send → relayed receipt, one clock: both ends live in this process). With `rate` 0
//! the pairs only hold their connections for `duration` (the idle shape: RSS per connection).
//!
//! Three protocols: Iceway's (DESIGN §3, a distinct-`sub` HS256 app token on the upgrade),
//! peerjs-server's (`--protocol peerjs`), for side-by-side numbers with the same load, and the
//! bare relay of `ceiling-ws` (`--protocol ceiling`), the most any WebSocket relay on this stack
//! could do. With `storm` set, the run is a reconnect storm instead (see [`storm`]).

pub mod fd_limit;
pub mod frames;
pub mod storm;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use iceway_auth::app_token::{AppClaims, Role, mint_hs256};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use fd_limit::FdLimitError;
pub use frames::SignalProtocol;

use crate::progress::Progress;
use crate::stats::{
    LoadShape, Percentiles, Report, ServerReport, SetupReport, SignalReport, TrafficReport,
    TrafficStats, latency_curve, new_histogram,
};
use crate::sysstat::{ProcessSample, rss_kb};

#[derive(Debug, Clone)]
pub struct SignalOptions {
    /// Iceway: ws://IP:PORT/v1/ws. PeerJS: ws://IP:PORT/peerjs (key, id and token are added).
    pub url: String,
    pub protocol: SignalProtocol,
    pub pairs: usize,
    /// HS256 app-token key, for the Iceway protocol.
    pub jwt_secret: Vec<u8>,
    pub jwt_kid: String,
    /// Relayed messages per second over all pairs (camera → viewer); 0 holds the connections
    /// idle for `duration`.
    pub rate: f64,
    /// Approximate bytes of each relayed frame's candidate string.
    pub message_size: usize,
    pub duration: Duration,
    /// After sending stops, how long to wait for messages still in flight.
    pub drain: Duration,
    /// Client source addresses (round-robin). Empty: 127.0.0.1–127.0.0.8 for a loopback
    /// server, so the kernel's search for a free local port is not the bottleneck.
    pub bind: Vec<IpAddr>,
    pub connect_concurrency: usize,
    /// Bound on the connect phase and, separately, on the negotiation phase.
    pub setup_timeout: Duration,
    pub server_pid: Option<u32>,
    pub threads: usize,
    pub progress: bool,
    pub interval: Duration,
    /// A reconnect storm instead of traffic: every client is dropped by the server at `url`
    /// and reconnects to another.
    pub storm: Option<storm::StormOptions>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("bad URL {0}")]
    Url(String),
    #[error(transparent)]
    FdLimit(#[from] FdLimitError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("no connection succeeded; errors: {0}")]
    NothingConnected(String),
    #[error("cannot signal the server to drain (pid {pid}): {source}")]
    Drain {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// 127.0.0.1 to 127.0.0.8.
pub fn loopback_spread() -> Vec<IpAddr> {
    (1..=8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

/// Runs the load on its own runtime and returns the report.
pub fn run_signal(opts: &SignalOptions) -> Result<Report, SignalError> {
    let server = target_addr(&opts.url)?;
    fd_limit::ensure((opts.pairs as u64).saturating_mul(2))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads.max(1))
        .enable_all()
        .build()
        .map_err(SignalError::Runtime)?;
    match &opts.storm {
        Some(storm) => {
            target_addr(&storm.reconnect_url)?;
            rt.block_on(storm::run(opts, storm))
        }
        None => rt.block_on(run_async(opts, server)),
    }
}

fn target_addr(url: &str) -> Result<SocketAddr, SignalError> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| SignalError::Url(format!("{url}: only ws:// is supported")))?;
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    hostport
        .parse()
        .map_err(|_| SignalError::Url(format!("{url}: the host must be IP:PORT")))
}

/// Counters the connection tasks share with the driver.
struct Shared {
    epoch: Instant,
    protocol: SignalProtocol,
    errors: Mutex<BTreeMap<String, u64>>,
    negotiated: AtomicU64,
    negotiated_now: tokio::sync::Notify,
    received: AtomicU64,
    traffic: Mutex<TrafficStats>,
    traffic_start: Mutex<Option<Instant>>,
    /// Set when the load closes its connections: how a server ends them after that is not an
    /// error of the run.
    closing: AtomicBool,
}

impl Shared {
    fn error(&self, code: impl Into<String>) {
        if self.closing.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(code.into()).or_insert(0) += 1;
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// One pair's negotiation, written by its two connection tasks.
#[derive(Default)]
struct PairState {
    watch_sent: Mutex<Option<Instant>>,
    watch_to_answer: Mutex<Option<Duration>>,
    viewer_id: Mutex<Option<String>>,
}

impl PairState {
    fn negotiated(&self, shared: &Shared) {
        let started = self.watch_sent.lock().ok().and_then(|g| *g);
        if let (Some(t), Ok(mut n)) = (started, self.watch_to_answer.lock()) {
            if n.is_none() {
                *n = Some(t.elapsed());
                shared.negotiated.fetch_add(1, Ordering::Relaxed);
                shared.negotiated_now.notify_one();
            }
        }
    }
}

struct Conn {
    tx: mpsc::UnboundedSender<Message>,
    /// Iceway: the session id from `welcome`; PeerJS: the peer id we chose.
    id: String,
    reader: tokio::task::JoinHandle<Option<Histogram<u64>>>,
}

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Who one connection of the plan is.
pub(crate) struct Peer {
    pub name: String,
    pub role: Role,
    /// A viewer's token `cams`.
    pub cams: Vec<String>,
    /// The bare relay's partner: the pair's other end.
    pub partner: String,
}

/// The names of one run's cameras and viewers: distinct per run (a tag from the clock), so
/// reruns against one server never collide.
pub(crate) struct Names {
    tag: String,
}

impl Names {
    pub fn new() -> Self {
        let tag = format!(
            "{:x}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() % 0xffff_ffff)
                .unwrap_or(0)
        );
        Self { tag }
    }

    pub fn camera(&self, i: usize) -> String {
        format!("cam-{}-{i}", self.tag)
    }

    pub fn viewer(&self, i: usize) -> String {
        format!("view-{}-{i}", self.tag)
    }

    pub fn peer(&self, i: usize, is_camera: bool) -> Peer {
        let (camera, viewer) = (self.camera(i), self.viewer(i));
        if is_camera {
            Peer {
                name: camera,
                role: Role::Camera,
                cams: vec![],
                partner: viewer,
            }
        } else {
            Peer {
                name: viewer,
                role: Role::Viewer,
                cams: vec![camera.clone()],
                partner: camera,
            }
        }
    }
}

/// Opens one WebSocket from `bind` to `url` and waits for the greeting; returns it with the id
/// the peer is known by, or an error code for the report.
pub(crate) async fn connect(
    opts: &SignalOptions,
    url: &str,
    bind: IpAddr,
    peer: &Peer,
) -> Result<(Ws, String), String> {
    let server = target_addr(url).map_err(|e| e.to_string())?;
    let name = peer.name.as_str();
    let url = match opts.protocol {
        SignalProtocol::Iceway | SignalProtocol::Ceiling => url.to_string(),
        SignalProtocol::PeerJs => format!("{url}?key=peerjs&id={name}&token=t{name}"),
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    if opts.protocol == SignalProtocol::Iceway {
        let claims = AppClaims::new(
            name,
            peer.role,
            peer.cams.clone(),
            SystemTime::now(),
            Duration::from_secs(3600),
        );
        let bearer = format!(
            "Bearer {}",
            mint_hs256(&opts.jwt_kid, &opts.jwt_secret, &claims)
        );
        let value = HeaderValue::from_str(&bearer).map_err(|_| "token header".to_string())?;
        req.headers_mut().insert("authorization", value);
    }
    let socket = match bind {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {}", e.kind()))?;
    defer_port_choice(&socket);
    socket
        .bind(SocketAddr::new(bind, 0))
        .map_err(|e| format!("bind: {}", e.kind()))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    // Small frames must not wait for delayed ACKs: that would measure Nagle, not the server.
    let _ = stream.set_nodelay(true);
    // tungstenite's default 128 KiB read buffer, zeroed per connection, made page faults and
    // memset the load tool's main cost at 19,000 connections; frames here are under 1 KiB.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => format!("http {}", r.status()),
            other => format!("handshake: {other}"),
        })?;
    if opts.protocol == SignalProtocol::Ceiling {
        ws.send(Message::text(frames::ceiling_bind(name, &peer.partner)))
            .await
            .map_err(|e| format!("bind: {e}"))?;
    }
    let greeting = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .map_err(|_| "no greeting within 10 s".to_string())?;
    match greeting {
        Some(Ok(Message::Text(t))) => {
            frames::on_greeting(opts.protocol, name, t.as_str()).map(|id| (ws, id))
        }
        Some(Ok(Message::Close(f))) => Err(format!(
            "closed {}",
            f.map(|f| u16::from(f.code)).unwrap_or(0)
        )),
        other => Err(format!("unexpected greeting {other:?}")),
    }
}

/// IP_BIND_ADDRESS_NO_PORT: with it, bind() only fixes the source address and connect()
/// picks the port by the full four-tuple. Without it, bind() must find a port free on that
/// address alone, a search that grows with every socket held and made the load tool, not the
/// server, the bottleneck past a few thousand connections. Best effort: on failure the kernel
/// simply searches at bind time.
fn defer_port_choice(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd we own, and a pointer/length pair to a c_int that outlives
    // the call.
    let _ = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// A writer task (frames from the channel) and a reader task (frames through
/// [`frames::on_frame`]) for one connection.
fn spawn_conn(
    ws: Ws,
    id: String,
    is_camera: bool,
    pair: Arc<PairState>,
    shared: Arc<Shared>,
) -> Conn {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let reply = tx.clone();
    let reader = tokio::spawn(async move {
        let mut latency = (!is_camera).then(new_histogram);
        while let Some(msg) = stream.next().await {
            let text = match msg {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(Some(f))) => {
                    let code = u16::from(f.code);
                    if code != 1000 && code != 1001 {
                        shared.error(format!("close {code}"));
                    }
                    break;
                }
                Ok(Message::Close(None)) => break,
                Ok(_) => continue,
                Err(_) => {
                    shared.error("connection reset");
                    break;
                }
            };
            let step = frames::on_frame(shared.protocol, is_camera, text.as_str());
            if let Some(viewer) = step.viewer {
                if let Ok(mut g) = pair.viewer_id.lock() {
                    *g = Some(viewer);
                }
            }
            if let Some(r) = step.reply {
                let _ = reply.send(Message::text(r));
            }
            if step.negotiated {
                pair.negotiated(&shared);
            }
            if let Some(code) = step.error {
                shared.error(code);
            }
            if let (Some(sent_ns), Some(h)) = (step.stamp_ns, latency.as_mut()) {
                let one_way = shared.now_ns().saturating_sub(sent_ns).max(1);
                let _ = h.record(one_way.min(h.high()));
                shared.received.fetch_add(1, Ordering::Relaxed);
                let since = shared
                    .traffic_start
                    .lock()
                    .ok()
                    .and_then(|s| *s)
                    .map(|s| s.elapsed())
                    .unwrap_or_default();
                if let Ok(mut t) = shared.traffic.lock() {
                    t.record_received(since, one_way);
                }
            }
        }
        latency
    });
    Conn { tx, id, reader }
}

/// Where client sockets come from: `opts.bind`, or for a loopback server 127.0.0.1–8.
pub(crate) fn source_addresses(opts: &SignalOptions, server: SocketAddr) -> Vec<IpAddr> {
    match (opts.bind.is_empty(), server) {
        (false, _) => opts.bind.clone(),
        (true, SocketAddr::V4(a)) if a.ip().is_loopback() => loopback_spread(),
        (true, SocketAddr::V4(_)) => vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
        (true, SocketAddr::V6(_)) => vec![IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)],
    }
}

/// The cameras (or viewers) of the plan connecting to `url`, `connect_concurrency` at a time,
/// each bounded by `deadline`: (pair index, connect → greeting, result), as they finish.
#[allow(clippy::too_many_arguments)]
pub(crate) fn connect_all<'a>(
    opts: &'a SignalOptions,
    url: &'a str,
    bind: &'a [IpAddr],
    names: &'a Names,
    is_camera: bool,
    deadline: tokio::time::Instant,
    attempted: &'a AtomicU64,
    progress: &'a Progress,
) -> impl futures_util::Stream<Item = (usize, Duration, Result<(Ws, String), String>)> + 'a {
    futures_util::stream::iter(0..opts.pairs)
        .map(move |i| {
            let src = bind[(2 * i + usize::from(!is_camera)) % bind.len()];
            async move {
                let peer = names.peer(i, is_camera);
                let t = Instant::now();
                let r = tokio::time::timeout_at(deadline, connect(opts, url, src, &peer))
                    .await
                    .unwrap_or_else(|_| Err("connect timeout".into()));
                progress.setup(attempted.fetch_add(1, Ordering::Relaxed) + 1);
                (i, t.elapsed(), r)
            }
        })
        .buffer_unordered(opts.connect_concurrency.max(1))
}

async fn run_async(opts: &SignalOptions, server: SocketAddr) -> Result<Report, SignalError> {
    let bind = source_addresses(opts, server);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        protocol: opts.protocol,
        errors: Mutex::new(BTreeMap::new()),
        negotiated: AtomicU64::new(0),
        negotiated_now: tokio::sync::Notify::new(),
        received: AtomicU64::new(0),
        traffic: Mutex::new(TrafficStats::new(opts.interval)),
        traffic_start: Mutex::new(None),
        closing: AtomicBool::new(false),
    });
    let n = opts.pairs;
    let progress = Progress::new(opts.progress, (n * 2) as u64, opts.duration);
    let rss_before = opts.server_pid.and_then(rss_kb);
    let pairs: Vec<Arc<PairState>> = (0..n).map(|_| Arc::default()).collect();
    let names = Names::new();
    // Connect: cameras first (they publish), then viewers, a bounded number at a time.
    let connect_started = Instant::now();
    let connect_deadline = tokio::time::Instant::now() + opts.setup_timeout;
    let attempted = AtomicU64::new(0);
    let mut setup_latency = new_histogram();
    let mut cameras: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    let mut viewers: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    for is_camera in [true, false] {
        let mut results = connect_all(
            opts,
            &opts.url,
            &bind,
            &names,
            is_camera,
            connect_deadline,
            &attempted,
            &progress,
        );
        while let Some((i, took, r)) = results.next().await {
            match r {
                Ok((ws, id)) => {
                    let _ = setup_latency.record((took.as_nanos() as u64).max(1));
                    let conn = spawn_conn(ws, id, is_camera, pairs[i].clone(), shared.clone());
                    if is_camera {
                        if let Some(p) = frames::publish(opts.protocol) {
                            let _ = conn.tx.send(Message::text(p));
                        }
                        cameras[i] = Some(conn);
                    } else {
                        viewers[i] = Some(conn);
                    }
                }
                Err(e) => shared.error(format!("connect: {e}")),
            }
        }
    }
    let setup_seconds = connect_started.elapsed().as_secs_f64();
    let connected = cameras.iter().chain(viewers.iter()).flatten().count() as u64;
    if connected == 0 {
        let errors = shared
            .errors
            .lock()
            .map(|e| format!("{e:?}"))
            .unwrap_or_default();
        return Err(SignalError::NothingConnected(errors));
    }

    // Negotiate: every viewer whose camera is connected starts at once.
    let mut expected = 0_u64;
    for i in 0..n {
        let (Some(cam), Some(viewer)) = (&cameras[i], &viewers[i]) else {
            continue;
        };
        expected += 1;
        if let Ok(mut g) = pairs[i].watch_sent.lock() {
            *g = Some(Instant::now());
        }
        let first = frames::start(opts.protocol, &names.camera(i), &cam.id, &viewer.id);
        let _ = viewer.tx.send(Message::text(first));
    }
    let negotiate_deadline = tokio::time::Instant::now() + opts.setup_timeout;
    while shared.negotiated.load(Ordering::Relaxed) < expected {
        let wake = shared.negotiated_now.notified();
        if tokio::time::timeout_at(negotiate_deadline, wake)
            .await
            .is_err()
        {
            break;
        }
    }
    let mut watch_to_answer = new_histogram();
    let mut ready: Vec<(mpsc::UnboundedSender<Message>, String)> = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        let took = p.watch_to_answer.lock().ok().and_then(|g| *g);
        let viewer = p.viewer_id.lock().ok().and_then(|g| g.clone());
        if let (Some(d), Some(viewer), Some(cam)) = (took, viewer, &cameras[i]) {
            let _ = watch_to_answer.record((d.as_nanos() as u64).max(1));
            ready.push((cam.tx.clone(), viewer));
        }
    }

    // Traffic (or an idle hold): stamped candidates at a fixed total rate, round-robin over
    // the negotiated pairs.
    let server_before = opts.server_pid.map(ProcessSample::take);
    let load_before = crate::sysstat::cpu_seconds(std::process::id());
    let start = Instant::now();
    if let Ok(mut t) = shared.traffic_start.lock() {
        *t = Some(start);
    }
    progress.start_traffic();
    let sending = !ready.is_empty() && opts.rate > 0.0;
    let mut sent: u64 = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(if sending { 1 } else { 50 }));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_progress = Instant::now();
    while start.elapsed() < opts.duration {
        ticker.tick().await;
        if sending {
            let due = (start.elapsed().min(opts.duration).as_secs_f64() * opts.rate) as u64;
            while sent < due {
                let (tx, viewer) = &ready[(sent % ready.len() as u64) as usize];
                let frame = frames::candidate(
                    opts.protocol,
                    viewer,
                    sent,
                    shared.now_ns(),
                    opts.message_size,
                );
                let _ = tx.send(Message::text(frame));
                if let Ok(mut t) = shared.traffic.lock() {
                    t.record_sent(start.elapsed(), 1);
                }
                sent += 1;
            }
        }
        if last_progress.elapsed() >= Duration::from_millis(100) {
            progress.traffic(sent, shared.received.load(Ordering::Relaxed));
            last_progress = Instant::now();
        }
    }
    let drain_deadline = Instant::now() + opts.drain;
    while shared.received.load(Ordering::Relaxed) < sent && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let window = start.elapsed().as_secs_f64().max(1e-9);
    let server_after = opts.server_pid.map(ProcessSample::take);
    let load_after = crate::sysstat::cpu_seconds(std::process::id());
    progress.finish();

    // Connections whose reader still runs are the ones the server held to the end.
    let conns: Vec<Conn> = cameras.into_iter().chain(viewers).flatten().collect();
    let held = conns.iter().filter(|c| !c.reader.is_finished()).count() as u64;
    let errors = shared.errors.lock().map(|e| e.clone()).unwrap_or_default();
    shared.closing.store(true, Ordering::Relaxed);
    for c in &conns {
        let _ = c.tx.send(Message::Close(None));
    }
    let mut latency = new_histogram();
    for c in conns {
        if let Ok(Ok(Some(h))) = tokio::time::timeout(Duration::from_secs(5), c.reader).await {
            let _ = latency.add(&h);
        }
    }
    let traffic = shared
        .traffic
        .lock()
        .map(|mut t| std::mem::replace(&mut *t, TrafficStats::new(opts.interval)))
        .unwrap_or_else(|_| TrafficStats::new(opts.interval));
    // A duplicate delivery would count twice; never report more received than sent.
    let received = traffic.received.min(sent);
    let lost = sent - received;
    let cpu = server_before
        .zip(server_after)
        .and_then(|(b, a)| a.cpu_seconds.zip(b.cpu_seconds))
        .map(|(a, b)| a - b);
    let rss_after = server_after.and_then(|s| s.rss_kb);
    let server = opts.server_pid.map(|pid| ServerReport {
        pid,
        cpu_seconds: cpu.unwrap_or(0.0),
        cores_busy: cpu.unwrap_or(0.0) / window,
        relayed_per_cpu_second: cpu
            .filter(|c| *c > 0.0 && received > 0)
            .map(|c| received as f64 / c),
        responses_per_cpu_second: None,
        rss_kb_before: rss_before,
        rss_kb_after: rss_after,
        // Growth from before the first connect to the end of the window, over the connections
        // still held then (idle: the cost of an open, negotiated session).
        rss_bytes_per_flow: rss_before
            .zip(rss_after)
            .filter(|_| held > 0)
            .map(|(b, a)| (a as f64 - b as f64) * 1024.0 / held as f64),
    });
    Ok(Report {
        mode: "signal".into(),
        protocol: protocol_name(opts.protocol).into(),
        target: opts.url.clone(),
        load: LoadShape {
            flows: n as u64,
            pps_per_flow: Some(opts.rate / n.max(1) as f64),
            window: None,
            payload_bytes: opts.message_size,
            planned_seconds: opts.duration.as_secs_f64(),
            packets_per_flow: None,
            threads: opts.threads,
            refresh_seconds: None,
            churn_per_second: 0.0,
        },
        setup: Some(SetupReport {
            requested: 2 * n as u64,
            succeeded: connected,
            failed: 2 * n as u64 - connected,
            seconds: setup_seconds,
            per_second: connected as f64 / setup_seconds.max(1e-9),
            latency_us: Percentiles::from_ns(&setup_latency),
            errors: errors
                .iter()
                .filter(|(k, _)| k.starts_with("connect: "))
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }),
        traffic: TrafficReport {
            sent,
            received,
            lost,
            loss_ratio: if sent > 0 {
                lost as f64 / sent as f64
            } else {
                0.0
            },
            send_errors: 0,
            seconds: window,
            sent_per_second: sent as f64 / window,
            received_per_second: received as f64 / window,
            relayed_to_peer: None,
            relayed_to_client: None,
            relayed_total: None,
            relayed_per_second: None,
            latency_us: Percentiles::from_ns(&latency),
            control: None,
        },
        server,
        kernel_udp: None,
        load_cpu_seconds: load_before.zip(load_after).map(|(b, a)| a - b),
        series: traffic.series(),
        latency_curve: latency_curve(&latency),
        signal: Some(SignalReport {
            pairs: n as u64,
            negotiated: shared.negotiated.load(Ordering::Relaxed),
            watch_to_answer_us: Percentiles::from_ns(&watch_to_answer),
            connections_held: held,
            errors,
            storm: None,
        }),
    })
}

pub(crate) fn protocol_name(p: SignalProtocol) -> &'static str {
    match p {
        SignalProtocol::Iceway => "iceway-ws",
        SignalProtocol::PeerJs => "peerjs",
        SignalProtocol::Ceiling => "ceiling-ws",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_must_name_an_ip() {
        assert!(target_addr("ws://127.0.0.1:8080/v1/ws").is_ok());
        assert!(target_addr("ws://127.0.0.1:9000/peerjs").is_ok());
        assert!(target_addr("wss://h/v1/ws").is_err());
        assert!(target_addr("ws://localhost:1/v1/ws").is_err());
    }

    #[test]
    fn an_oversized_plan_is_refused_before_connecting() {
        let (soft, _) = fd_limit::raise_soft_limit();
        if soft == u64::MAX {
            // Unlimited: no plan is too large, and this one would really connect.
            return;
        }
        let opts = SignalOptions {
            url: "ws://127.0.0.1:9/v1/ws".into(),
            protocol: SignalProtocol::Iceway,
            pairs: (soft / 2 + 1) as usize,
            jwt_secret: vec![0; 32],
            jwt_kid: "default".into(),
            rate: 0.0,
            message_size: 100,
            duration: Duration::from_secs(1),
            drain: Duration::from_secs(1),
            bind: vec![],
            connect_concurrency: 1,
            setup_timeout: Duration::from_secs(1),
            server_pid: None,
            threads: 1,
            progress: false,
            interval: Duration::from_millis(100),
            storm: None,
        };
        assert!(matches!(run_signal(&opts), Err(SignalError::FdLimit(_))));
    }
}
