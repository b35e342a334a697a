//! The `signal` mode: N camera/viewer pairs over WebSocket. Each pair negotiates (watch →
//! viewer-joined → offer → answer), then cameras send stamped `candidate` frames to their viewer
//! at a fixed total rate, and viewers measure the relay latency.
//!
//! Two protocols: Iceway's (DESIGN §3, JWT on the upgrade) and peerjs-server's (`--protocol
//! peerjs`: OPEN / OFFER / ANSWER / CANDIDATE with src/dst ids), for side-by-side numbers.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use iceway_auth::app_token::{AppClaims, Role, mint_hs256};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::{Mutex, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::progress::Progress;
use crate::stats::{
    LoadShape, Percentiles, Report, ServerReport, SetupReport, SignalReport, TrafficReport,
    TrafficStats, latency_curve, new_histogram,
};
use crate::sysstat::{ProcessSample, rss_kb};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalProtocol {
    Iceway,
    PeerJs,
}

#[derive(Debug, Clone)]
pub struct SignalOptions {
    /// Iceway: ws://HOST:PORT/v1/ws. PeerJS: ws://HOST:PORT/peerjs (key, id and token are added).
    pub url: String,
    pub protocol: SignalProtocol,
    pub pairs: usize,
    /// HS256 app-token key (kid `default` unless set), for the Iceway protocol.
    pub jwt_secret: Vec<u8>,
    pub jwt_kid: String,
    /// Relayed messages per second over all pairs (camera → viewer).
    pub rate: f64,
    /// Approximate bytes of each relayed frame.
    pub message_size: usize,
    pub duration: Duration,
    pub drain: Duration,
    /// Client source addresses (round-robin); spreading over 127.0.0.1–8 keeps the kernel's
    /// local-port search off the client's critical path.
    pub bind: Vec<IpAddr>,
    pub connect_concurrency: usize,
    pub setup_timeout: Duration,
    pub server_pid: Option<u32>,
    pub threads: usize,
    pub progress: bool,
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("bad URL {0}")]
    Url(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("no pair could connect: {0}")]
    NothingConnected(String),
}

/// The default source addresses for a loopback server: 127.0.0.1 to 127.0.0.8.
pub fn loopback_spread() -> Vec<IpAddr> {
    (1..=8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

#[derive(Default)]
struct Tally {
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn error(&mut self, code: impl Into<String>) {
        *self.errors.entry(code.into()).or_insert(0) += 1;
    }
}

type Sink = mpsc::UnboundedSender<Message>;

struct Conn {
    tx: Sink,
    /// Iceway: the session id from `welcome`; PeerJS: the peer id we chose.
    id: String,
    reader: tokio::task::JoinHandle<ReaderResult>,
}

#[derive(Default)]
struct ReaderResult {
    latency: Option<Histogram<u64>>,
    received: u64,
    closed_early: bool,
}

/// What a pair shares between its two reader tasks and the driver.
struct PairState {
    watch_sent: std::sync::Mutex<Option<Instant>>,
    negotiated: std::sync::Mutex<Option<Duration>>,
    viewer_id: std::sync::Mutex<Option<String>>,
}

struct Shared {
    epoch: Instant,
    tally: Mutex<Tally>,
    negotiated: AtomicU64,
    received: AtomicU64,
    traffic: std::sync::Mutex<TrafficStats>,
    traffic_start: std::sync::Mutex<Option<Instant>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn token(opts: &SignalOptions, sub: &str, role: Role, cams: Vec<String>) -> String {
    let now = unix_now();
    let claims = AppClaims {
        sub: sub.into(),
        role,
        cams,
        exp: now + 3600,
        iat: now,
        nbf: None,
        iss: None,
        aud: Some("iceway".into()),
    };
    mint_hs256(&opts.jwt_kid, &opts.jwt_secret, &claims)
}

fn target_addr(url: &str) -> Result<SocketAddr, SignalError> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| SignalError::Url(format!("{url}: only ws:// is supported")))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport
        .parse()
        .map_err(|_| SignalError::Url(format!("{url}: host must be IP:PORT")))
}

/// Opens one WebSocket from `bind`, waits for the greeting (welcome / OPEN); returns the
/// stream and the id the peer is known by.
async fn connect(
    opts: &SignalOptions,
    bind: IpAddr,
    server: SocketAddr,
    name: &str,
    role: Role,
    cams: Vec<String>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
        String,
    ),
    String,
> {
    let url = match opts.protocol {
        SignalProtocol::Iceway => opts.url.clone(),
        SignalProtocol::PeerJs => format!("{}?key=peerjs&id={name}&token=t{name}", opts.url),
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    if opts.protocol == SignalProtocol::Iceway {
        let bearer = format!("Bearer {}", token(opts, name, role, cams));
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&bearer).map_err(|_| "header".to_string())?,
        );
    }
    let socket = match bind {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {}", e.kind()))?;
    socket
        .bind(SocketAddr::new(bind, 0))
        .map_err(|e| format!("bind: {}", e.kind()))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => format!("http {}", r.status()),
            other => format!("handshake: {other}"),
        })?;
    let greeting = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .map_err(|_| "no greeting".to_string())?;
    let text = match greeting {
        Some(Ok(Message::Text(t))) => t.to_string(),
        Some(Ok(Message::Close(f))) => {
            return Err(format!(
                "closed {}",
                f.map(|f| u16::from(f.code)).unwrap_or(0)
            ));
        }
        other => return Err(format!("unexpected greeting {other:?}")),
    };
    let v: Value = serde_json::from_str(&text).map_err(|_| "greeting not JSON".to_string())?;
    match (opts.protocol, v["type"].as_str()) {
        (SignalProtocol::Iceway, Some("welcome")) => {
            Ok((ws, v["session"].as_str().unwrap_or_default().to_string()))
        }
        (SignalProtocol::PeerJs, Some("OPEN")) => Ok((ws, name.to_string())),
        (_, Some("error")) => Err(v["code"].as_str().unwrap_or("error").to_string()),
        (_, t) => Err(format!("unexpected greeting type {t:?}")),
    }
}

fn stamp_payload(seq: u64, sent_ns: u64, size: usize) -> String {
    let mut s = format!("lt:{seq}:{sent_ns}:");
    while s.len() < size {
        s.push('x');
    }
    s
}

fn parse_stamp(s: &str) -> Option<u64> {
    let mut parts = s.strip_prefix("lt:")?.split(':');
    let _seq = parts.next()?;
    parts.next()?.parse().ok()
}

fn spawn_conn(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    id: String,
    is_camera: bool,
    pair: Arc<PairState>,
    shared: Arc<Shared>,
    protocol: SignalProtocol,
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
    let my_id = id.clone();
    let reader = tokio::spawn(async move {
        let mut out = ReaderResult::default();
        let mut hist = (!is_camera).then(new_histogram);
        while let Some(msg) = stream.next().await {
            let text = match msg {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(f)) => {
                    if let Some(f) = f {
                        let code = u16::from(f.code);
                        if code != 1000 && code != 1001 {
                            shared.tally.lock().await.error(format!("close {code}"));
                        }
                    }
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    out.closed_early = true;
                    break;
                }
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                shared.tally.lock().await.error("unparsable frame");
                continue;
            };
            let ty = v["type"].as_str().unwrap_or_default();
            match (protocol, is_camera, ty) {
                (SignalProtocol::Iceway, true, "viewer-joined") => {
                    let viewer = v["viewer"].as_str().unwrap_or_default().to_string();
                    if let Ok(mut g) = pair.viewer_id.lock() {
                        *g = Some(viewer.clone());
                    }
                    let offer = json!({"type": "offer", "to": viewer, "sdp": "v=0 loadtest offer"});
                    let _ = reply.send(Message::text(offer.to_string()));
                }
                (SignalProtocol::PeerJs, true, "OFFER") => {
                    let src = v["src"].as_str().unwrap_or_default().to_string();
                    if let Ok(mut g) = pair.viewer_id.lock() {
                        *g = Some(src.clone());
                    }
                    let answer = json!({"type": "ANSWER", "dst": src, "payload": {"sdp": "v=0 loadtest answer"}});
                    let _ = reply.send(Message::text(answer.to_string()));
                    negotiated(&pair, &shared);
                }
                (SignalProtocol::Iceway, false, "offer") => {
                    let from = v["from"].as_str().unwrap_or_default();
                    let answer =
                        json!({"type": "answer", "to": from, "sdp": "v=0 loadtest answer"});
                    let _ = reply.send(Message::text(answer.to_string()));
                }
                (SignalProtocol::Iceway, true, "answer")
                | (SignalProtocol::PeerJs, false, "ANSWER") => {
                    negotiated(&pair, &shared);
                }
                (SignalProtocol::Iceway, false, "candidate")
                | (SignalProtocol::PeerJs, false, "CANDIDATE") => {
                    let c = match protocol {
                        SignalProtocol::Iceway => v["candidate"].as_str(),
                        SignalProtocol::PeerJs => v["payload"]["candidate"].as_str(),
                    };
                    if let (Some(sent_ns), Some(h)) = (c.and_then(parse_stamp), hist.as_mut()) {
                        let now_ns = shared.epoch.elapsed().as_nanos() as u64;
                        let rtt = now_ns.saturating_sub(sent_ns).max(1);
                        let _ = h.record(rtt.min(h.high()));
                        out.received += 1;
                        shared.received.fetch_add(1, Ordering::Relaxed);
                        let since = shared
                            .traffic_start
                            .lock()
                            .ok()
                            .and_then(|s| *s)
                            .map(|s| s.elapsed())
                            .unwrap_or_default();
                        if let Ok(mut t) = shared.traffic.lock() {
                            t.record_received(since, rtt);
                        }
                    }
                }
                (SignalProtocol::Iceway, _, "error") => {
                    let code = v["code"].as_str().unwrap_or("error").to_string();
                    shared.tally.lock().await.error(code);
                }
                (SignalProtocol::PeerJs, _, "ERROR" | "EXPIRE" | "ID-TAKEN" | "INVALID-KEY") => {
                    shared.tally.lock().await.error(ty.to_lowercase());
                }
                _ => {}
            }
        }
        out.latency = hist;
        let _ = my_id;
        out
    });
    Conn { tx, id, reader }
}

fn negotiated(pair: &PairState, shared: &Shared) {
    let started = pair.watch_sent.lock().ok().and_then(|g| *g);
    if let (Some(t), Ok(mut n)) = (started, pair.negotiated.lock()) {
        if n.is_none() {
            *n = Some(t.elapsed());
            shared.negotiated.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub fn run_signal(opts: &SignalOptions) -> Result<Report, SignalError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads.max(1))
        .enable_all()
        .build()
        .map_err(SignalError::Runtime)?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: &SignalOptions) -> Result<Report, SignalError> {
    let server = target_addr(&opts.url)?;
    let bind = if opts.bind.is_empty() {
        if server.ip().is_loopback() && server.is_ipv4() {
            loopback_spread()
        } else {
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        }
    } else {
        opts.bind.clone()
    };
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        tally: Mutex::new(Tally::default()),
        negotiated: AtomicU64::new(0),
        received: AtomicU64::new(0),
        traffic: std::sync::Mutex::new(TrafficStats::new(opts.interval)),
        traffic_start: std::sync::Mutex::new(None),
    });
    let progress = Progress::new(opts.progress, (opts.pairs * 2) as u64, opts.duration);
    let rss_before = opts.server_pid.and_then(rss_kb);
    let run = opts.pairs;
    let pairs: Vec<Arc<PairState>> = (0..run)
        .map(|_| {
            Arc::new(PairState {
                watch_sent: std::sync::Mutex::new(None),
                negotiated: std::sync::Mutex::new(None),
                viewer_id: std::sync::Mutex::new(None),
            })
        })
        .collect();

    // Connect: cameras first (they publish), then viewers, a bounded number at a time.
    let connect_started = Instant::now();
    let connected = Arc::new(AtomicU64::new(0));
    let mut setup_latency = new_histogram();
    let mut cameras: Vec<Option<Conn>> = (0..run).map(|_| None).collect();
    let mut viewers: Vec<Option<Conn>> = (0..run).map(|_| None).collect();
    let tag = format!("{:x}", unix_now() % 0xffff_ffff);
    for is_camera in [true, false] {
        let results = futures_util::stream::iter(0..run)
            .map(|i| {
                let (opts, bind, connected) = (opts, &bind, connected.clone());
                let cam_name = format!("cam-{tag}-{i}");
                let (name, role, cams) = if is_camera {
                    (cam_name, Role::Camera, vec![])
                } else {
                    (format!("view-{tag}-{i}"), Role::Viewer, vec![cam_name])
                };
                let src = bind[(2 * i + usize::from(!is_camera)) % bind.len()];
                async move {
                    let t = Instant::now();
                    let r = tokio::time::timeout(
                        opts.setup_timeout,
                        connect(opts, src, server, &name, role, cams),
                    )
                    .await
                    .unwrap_or_else(|_| Err("connect timeout".into()));
                    connected.fetch_add(1, Ordering::Relaxed);
                    (i, t.elapsed(), r)
                }
            })
            .buffer_unordered(opts.connect_concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        progress.setup(connected.load(Ordering::Relaxed));
        for (i, took, r) in results {
            match r {
                Ok((ws, id)) => {
                    let _ = setup_latency.record((took.as_nanos() as u64).max(1));
                    let conn = spawn_conn(
                        ws,
                        id,
                        is_camera,
                        pairs[i].clone(),
                        shared.clone(),
                        opts.protocol,
                    );
                    if is_camera {
                        if opts.protocol == SignalProtocol::Iceway {
                            let _ = conn
                                .tx
                                .send(Message::text(json!({"type": "publish"}).to_string()));
                        }
                        cameras[i] = Some(conn);
                    } else {
                        viewers[i] = Some(conn);
                    }
                }
                Err(e) => shared.tally.lock().await.error(format!("connect: {e}")),
            }
        }
    }
    let setup_seconds = connect_started.elapsed().as_secs_f64();
    let ok_conns = cameras.iter().chain(viewers.iter()).flatten().count() as u64;
    if ok_conns == 0 {
        let t = shared.tally.lock().await;
        return Err(SignalError::NothingConnected(format!("{:?}", t.errors)));
    }
    let rss_connected = opts.server_pid.and_then(rss_kb);

    // Negotiate: each viewer watches (Iceway) or offers (PeerJS) to its camera.
    let negotiate_started = Instant::now();
    let mut expected = 0;
    for i in 0..run {
        let (Some(cam), Some(viewer)) = (&cameras[i], &viewers[i]) else {
            continue;
        };
        expected += 1;
        if let Ok(mut g) = pairs[i].watch_sent.lock() {
            *g = Some(Instant::now());
        }
        let frame = match opts.protocol {
            SignalProtocol::Iceway => {
                json!({"type": "watch", "camera": format!("cam-{tag}-{i}")})
            }
            SignalProtocol::PeerJs => {
                json!({"type": "OFFER", "dst": cam.id, "payload": {"sdp": "v=0 loadtest offer"}})
            }
        };
        let _ = viewer.tx.send(Message::text(frame.to_string()));
    }
    let negotiate_deadline = negotiate_started + opts.setup_timeout;
    while shared.negotiated.load(Ordering::Relaxed) < expected
        && Instant::now() < negotiate_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut watch_to_answer = new_histogram();
    let mut ready: Vec<(Sink, String)> = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        let n = p.negotiated.lock().ok().and_then(|g| *g);
        let viewer = p.viewer_id.lock().ok().and_then(|g| g.clone());
        if let (Some(d), Some(viewer), Some(cam)) = (n, viewer, &cameras[i]) {
            let _ = watch_to_answer.record((d.as_nanos() as u64).max(1));
            ready.push((cam.tx.clone(), viewer));
        }
    }

    // Relay traffic: stamped candidates, camera → viewer, at a fixed total rate.
    let server_before = opts.server_pid.map(ProcessSample::take);
    let load_before = crate::sysstat::cpu_seconds(std::process::id());
    let start = Instant::now();
    if let Ok(mut t) = shared.traffic_start.lock() {
        *t = Some(start);
    }
    progress.start_traffic();
    let mut sent: u64 = 0;
    let mut last_tick = Instant::now();
    // With --rate 0 this only holds the connections open for the duration.
    let sending = !ready.is_empty() && opts.rate > 0.0;
    while start.elapsed() < opts.duration {
        if sending {
            let due = (start.elapsed().as_secs_f64() * opts.rate) as u64;
            while sent < due {
                let (tx, viewer) = &ready[(sent % ready.len() as u64) as usize];
                let now_ns = shared.epoch.elapsed().as_nanos() as u64;
                let cand = stamp_payload(sent, now_ns, opts.message_size);
                let frame = match opts.protocol {
                    SignalProtocol::Iceway => json!({"type": "candidate", "to": viewer,
                        "candidate": cand, "sdpMid": "0", "sdpMLineIndex": 0}),
                    SignalProtocol::PeerJs => json!({"type": "CANDIDATE", "dst": viewer,
                        "payload": {"candidate": cand, "sdpMid": "0", "sdpMLineIndex": 0}}),
                };
                let _ = tx.send(Message::text(frame.to_string()));
                if let Ok(mut t) = shared.traffic.lock() {
                    t.record_sent(start.elapsed(), 1);
                }
                sent += 1;
            }
        }
        if last_tick.elapsed() >= Duration::from_millis(100) {
            progress.traffic(sent, shared.received.load(Ordering::Relaxed));
            last_tick = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(if sending { 1 } else { 50 })).await;
    }
    let drain_deadline = Instant::now() + opts.drain;
    while shared.received.load(Ordering::Relaxed) < sent && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let window = start.elapsed().as_secs_f64();
    let server_after = opts.server_pid.map(ProcessSample::take);
    let load_after = crate::sysstat::cpu_seconds(std::process::id());
    progress.finish();

    // Connections still open at the end are the ones held.
    let mut held = 0_u64;
    let mut conns: Vec<Conn> = cameras.into_iter().chain(viewers).flatten().collect();
    for c in &conns {
        if !c.reader.is_finished() {
            held += 1;
        }
    }
    for c in &conns {
        let _ = c.tx.send(Message::Close(None));
    }
    let mut latency = new_histogram();
    for c in conns.drain(..) {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), c.reader).await {
            if let Some(h) = r.latency {
                let _ = latency.add(&h);
            }
        }
    }
    let traffic_stats = shared
        .traffic
        .lock()
        .map(|mut t| std::mem::replace(&mut *t, TrafficStats::new(opts.interval)))
        .unwrap_or_else(|_| TrafficStats::new(opts.interval));
    let received = traffic_stats.received.min(sent);
    let errors = shared.tally.lock().await.errors.clone();
    let secs = window.max(1e-9);
    let cpu = match (server_before, server_after) {
        (Some(b), Some(a)) => a.cpu_seconds.zip(b.cpu_seconds).map(|(a, b)| a - b),
        _ => None,
    };
    let server = opts.server_pid.map(|pid| ServerReport {
        pid,
        cpu_seconds: cpu.unwrap_or(0.0),
        cores_busy: cpu.unwrap_or(0.0) / secs,
        relayed_per_cpu_second: cpu.filter(|c| *c > 0.0).map(|c| received as f64 / c),
        responses_per_cpu_second: None,
        rss_kb_before: rss_before,
        rss_kb_after: server_after.and_then(|s| s.rss_kb),
        rss_bytes_per_flow: rss_before
            .zip(rss_connected)
            .map(|(b, a)| (a as f64 - b as f64) * 1024.0 / ok_conns.max(1) as f64),
    });
    let lost = sent - received;
    Ok(Report {
        mode: "signal".into(),
        protocol: match opts.protocol {
            SignalProtocol::Iceway => "iceway-ws".into(),
            SignalProtocol::PeerJs => "peerjs".into(),
        },
        target: opts.url.clone(),
        load: LoadShape {
            flows: run as u64,
            pps_per_flow: Some(opts.rate / run.max(1) as f64),
            window: None,
            payload_bytes: opts.message_size,
            planned_seconds: opts.duration.as_secs_f64(),
            packets_per_flow: None,
            threads: opts.threads,
        },
        setup: Some(SetupReport {
            requested: 2 * run as u64,
            succeeded: ok_conns,
            failed: 2 * run as u64 - ok_conns,
            seconds: setup_seconds,
            per_second: ok_conns as f64 / setup_seconds.max(1e-9),
            latency_us: Percentiles::from_ns(&setup_latency),
            errors: errors.clone(),
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
            sent_per_second: sent as f64 / secs,
            received_per_second: received as f64 / secs,
            relayed_to_peer: None,
            relayed_to_client: None,
            relayed_total: None,
            relayed_per_second: None,
            latency_us: Percentiles::from_ns(&latency),
        },
        server,
        kernel_udp: None,
        load_cpu_seconds: load_before.zip(load_after).map(|(b, a)| a - b),
        series: traffic_stats.series(),
        latency_curve: latency_curve(&latency),
        signal: Some(SignalReport {
            pairs: run as u64,
            negotiated: shared.negotiated.load(Ordering::Relaxed),
            watch_to_answer_us: Percentiles::from_ns(&watch_to_answer),
            connections_held: held,
            errors,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_survives_padding() {
        let s = stamp_payload(5, 123_456, 500);
        assert_eq!(s.len(), 500);
        assert_eq!(parse_stamp(&s), Some(123_456));
        assert_eq!(parse_stamp("candidate:1 1 udp"), None);
    }

    #[test]
    fn url_must_name_an_ip() {
        assert!(target_addr("ws://127.0.0.1:8080/v1/ws").is_ok());
        assert!(target_addr("wss://h/v1/ws").is_err());
        assert!(target_addr("ws://localhost:1/v1/ws").is_err());
    }
}
