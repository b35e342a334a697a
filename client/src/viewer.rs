//! `iceway-client viewer`: watches one camera, waits while it is offline, answers its offer,
//! reassembles video frames and reports time to first frame, frame rate, bitrate and the
//! selected candidate pair.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    RTCIceCandidateInit, RTCIceCandidateType, RTCPeerConnectionState, RTCSessionDescription,
};

use crate::ice;
use crate::media::FrameAssembler;
use crate::peer::{self, Pc, PcEvent, PeerOptions, SelectedPair};
use crate::protocol::{ClientFrame, IceServer, ServerFrame};
use crate::signaling::{self, Incoming, SignalError, SignalSender};

#[derive(Debug, Clone)]
pub struct ViewerOptions {
    pub signal_url: String,
    pub token: String,
    /// A file holding the current token, read again at each connect and when the server asks
    /// for a fresh one before `exp` (see `signaling::connect_refreshing`).
    pub token_file: Option<std::path::PathBuf>,
    pub camera: String,
    pub relay_only: bool,
    pub bind: Option<std::net::IpAddr>,
    /// ICE servers to use instead of the welcome frame's (your own TURN, or tests).
    pub ice_servers: Option<Vec<IceServer>>,
    /// Success once this many video frames were reassembled.
    pub frames: u64,
    pub timeout: Duration,
    /// Mirrors the count of frames reassembled so far, for a caller watching the call live
    /// (tests: does media keep flowing through a fault?).
    pub progress: Option<Arc<std::sync::atomic::AtomicU64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
}

/// The outcome, printed as JSON by the CLI and read by the end-to-end tests.
#[derive(Debug, Clone, Serialize)]
pub struct ViewerReport {
    pub camera: String,
    pub ok: bool,
    pub frames: u64,
    pub frames_wanted: u64,
    pub keyframes: u64,
    pub bytes: u64,
    pub packets: u64,
    /// From the start of the command to the first complete frame.
    pub time_to_first_frame_ms: Option<u64>,
    /// From the start of the command to the peer connection being connected.
    pub time_to_connected_ms: Option<u64>,
    pub fps: f64,
    pub bitrate_kbps: f64,
    pub selected_pair: Option<SelectedPair>,
    pub relay_only: bool,
    pub camera_was_offline: bool,
    /// Peer connections made with the camera: 1 means the call was never restarted.
    pub peer_connections: u32,
    /// Signaling reconnects that resumed the session (the call went on).
    pub signaling_resumes: u32,
    /// Why no (or too few) frames arrived, in plain words.
    pub reason: Option<String>,
    pub elapsed_ms: u64,
}

struct Call {
    pc: Pc,
    camera_session: String,
    have_remote: bool,
}

pub async fn run(
    opts: ViewerOptions,
    stop: CancellationToken,
) -> Result<ViewerReport, ViewerError> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let assembler: Arc<Mutex<Option<FrameAssembler>>> = Arc::new(Mutex::new(None));
    let (frames_tx, mut frames_rx) = watch::channel(0u64);
    let mut state = RunState::default();
    let mut attempt = 0u32;
    if let Some(p) = opts.progress.clone() {
        // Counted as frames arrive, also while signaling reconnects (the call goes on).
        let mut rx = frames_tx.subscribe();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                p.store(*rx.borrow(), std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    // The call outlives a signaling connection that is resumed.
    let sender = SignalSender::default();
    let mut resume: Option<signaling::Resume> = None;
    let mut call: Option<Call> = None;
    let mut pc_events: Option<mpsc::UnboundedReceiver<PcEvent>> = None;
    let mut pending: Vec<(String, RTCIceCandidateInit)> = Vec::new();
    let mut relay_candidates = 0u32;

    'reconnect: loop {
        let token = signaling::current_token(opts.token_file.as_deref(), &opts.token);
        let connected = tokio::select! {
            r = signaling::connect_resuming(&opts.signal_url, &token, opts.token_file.clone(), resume.as_ref()) => r,
            _ = stop.cancelled() => break 'reconnect,
            _ = tokio::time::sleep_until(deadline) => break 'reconnect,
        };
        let (mut welcome, connection, mut incoming) = match connected {
            Ok(ok) => ok,
            Err(e) if e.is_fatal() => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "signaling unavailable; retrying");
                state.reason = Some(e.to_string());
                attempt += 1;
                tokio::select! {
                    _ = tokio::time::sleep(signaling::backoff(attempt)) => continue 'reconnect,
                    _ = stop.cancelled() => break 'reconnect,
                    _ = tokio::time::sleep_until(deadline) => break 'reconnect,
                }
            }
        };
        attempt = 0;
        if let Some(servers) = &opts.ice_servers {
            welcome.ice_servers = servers.clone();
        }
        let expired = ice::expired_turn_credentials(&welcome.ice_servers, SystemTime::now());
        for why in &expired {
            tracing::error!("{why}");
        }
        if let Some(first) = expired.first() {
            state.turn_problem = Some(first.clone());
        }
        let peer_opts = PeerOptions {
            ice_servers: welcome.ice_servers.clone(),
            relay_only: opts.relay_only,
            bind: opts.bind,
            signal_url: opts.signal_url.clone(),
            codecs: None,
            keyframe_requests: false,
        };
        sender.attach(&connection, welcome.resumed);
        resume = welcome.resume.clone();
        if welcome.resumed {
            state.signaling_resumes += 1;
            tracing::info!(camera = %opts.camera, session = %welcome.session, "signaling resumed; the call goes on");
        } else {
            // A new session: the camera makes a new call with it.
            close(call.take()).await;
            pc_events = None;
            pending.clear();
            sender.send(ClientFrame::Watch {
                camera: opts.camera.clone(),
            });
            tracing::info!(camera = %opts.camera, session = %welcome.session, "watching");
        }

        loop {
            let ev = async {
                match pc_events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => { close(call.take()).await; break 'reconnect; }
                _ = tokio::time::sleep_until(deadline) => { close(call.take()).await; break 'reconnect; }
                changed = frames_rx.changed() => {
                    if changed.is_ok() && *frames_rx.borrow() >= opts.frames {
                        state.selected_pair = match call.as_ref() {
                            Some(c) => peer::selected_pair(&c.pc).await,
                            None => None,
                        };
                        close(call.take()).await;
                        sender.send(ClientFrame::Leave);
                        break 'reconnect;
                    }
                }
                msg = incoming.recv() => {
                    let frame = match msg {
                        Some(Incoming::Frame(f)) => f,
                        Some(Incoming::Closed(c)) if c.is_fatal() => {
                            close(call.take()).await;
                            return Err(match c.code {
                                Some(4003) => SignalError::Forbidden(c.reason),
                                _ => SignalError::Unauthorized(c.reason),
                            }.into());
                        }
                        Some(Incoming::Closed(c)) => {
                            tracing::warn!(code = ?c.code, reason = %c.reason, "signaling closed; reconnecting");
                            break;
                        }
                        None => break,
                    };
                    match frame {
                        ServerFrame::CameraOffline { camera } => {
                            state.camera_was_offline = true;
                            tracing::info!(%camera, "camera offline; waiting for it to come online");
                            close(call.take()).await;
                            pc_events = None;
                        }
                        ServerFrame::CameraOnline { camera } => {
                            tracing::info!(%camera, "camera online; waiting for its offer");
                        }
                        ServerFrame::Offer { from, sdp } => {
                            let same = call.as_ref().is_some_and(|c| c.camera_session == from);
                            if !same {
                                close(call.take()).await;
                                let (pc, events) = peer::new_peer(&peer_opts).await?;
                                state.peer_connections += 1;
                                pc_events = Some(events);
                                relay_candidates = 0;
                                call = Some(Call { pc, camera_session: from.clone(), have_remote: false });
                            }
                            if let Some(c) = call.as_mut() {
                                answer(c, sdp, &sender).await?;
                                let mut keep = Vec::new();
                                for (f, init) in pending.drain(..) {
                                    if f == c.camera_session {
                                        if let Err(e) = c.pc.add_ice_candidate(init).await {
                                            tracing::debug!(error = %e, "remote candidate refused");
                                        }
                                    } else {
                                        keep.push((f, init));
                                    }
                                }
                                pending = keep;
                            }
                        }
                        ServerFrame::Candidate { from, candidate, sdp_mid, sdp_mline_index } => {
                            let init = peer::candidate_init(candidate, sdp_mid, sdp_mline_index);
                            match call.as_ref() {
                                Some(c) if c.camera_session == from && c.have_remote => {
                                    if let Err(e) = c.pc.add_ice_candidate(init).await {
                                        tracing::debug!(error = %e, "remote candidate refused");
                                    }
                                }
                                // Trickled ahead of its offer: keep for when the offer arrives.
                                _ => pending.push((from, init)),
                            }
                        }
                        ServerFrame::PeerLeft { peer }
                            if call.as_ref().is_some_and(|c| c.camera_session == peer) =>
                        {
                            tracing::info!("camera left; waiting for it to come back");
                            close(call.take()).await;
                            pc_events = None;
                        }
                        ServerFrame::Error { code, message, .. } => {
                            let text = message.unwrap_or_else(|| code.clone());
                            match code.as_str() {
                                "forbidden" => {
                                    close(call.take()).await;
                                    // The server's words say which refusal it is (not in the
                                    // token's cams, the camera full, the wrong role).
                                    return Err(SignalError::Forbidden(format!("watching {}: {text}", opts.camera)).into());
                                }
                                "unauthorized" => {
                                    close(call.take()).await;
                                    return Err(SignalError::Unauthorized(text).into());
                                }
                                _ => tracing::warn!(%code, %text, "server error"),
                            }
                        }
                        _ => {}
                    }
                }
                ev = ev => match ev {
                    None => pc_events = None,
                    Some(PcEvent::Candidate(c)) => {
                        if c.typ == RTCIceCandidateType::Relay {
                            relay_candidates += 1;
                        }
                        if let Some(call) = call.as_ref()
                            && let Some(f) = peer::candidate_frame(&call.camera_session, &c)
                        {
                            sender.send(f);
                        }
                    }
                    Some(PcEvent::GatheringComplete) => {
                        if opts.relay_only && relay_candidates == 0 {
                            let why = state.turn_problem.clone().unwrap_or_else(|| {
                                "TURN allocation failed: no relay candidate (credentials expired or refused, or the TURN server is unreachable)".to_owned()
                            });
                            tracing::error!("{why}");
                            state.turn_problem = Some(why);
                            // Relay-only without a relay candidate can never connect: say so now.
                            close(call.take()).await;
                            sender.send(ClientFrame::Leave);
                            break 'reconnect;
                        }
                    }
                    Some(PcEvent::State(s)) => {
                        tracing::info!(state = %s, "peer connection");
                        match s {
                            RTCPeerConnectionState::Connected => {
                                state.connected_at.get_or_insert(start.elapsed());
                                if let Some(c) = call.as_ref()
                                    && let Some(pair) = peer::selected_pair(&c.pc).await
                                {
                                    tracing::info!(local = %pair.local, remote = %pair.remote, "selected candidate pair");
                                    state.selected_pair = Some(pair);
                                }
                            }
                            RTCPeerConnectionState::Failed => {
                                tracing::warn!("connection failed; asking the camera for a new offer");
                                close(call.take()).await;
                                pc_events = None;
                                sender.send(ClientFrame::Watch { camera: opts.camera.clone() });
                            }
                            _ => {}
                        }
                    }
                    Some(PcEvent::Track(track)) => {
                        tokio::spawn(read_track(track, assembler.clone(), frames_tx.clone()));
                    }
                },
            }
        }
        // The call is kept for a resume; the next welcome says whether it goes on.
        attempt += 1;
        tokio::select! {
            _ = tokio::time::sleep(signaling::backoff(attempt)) => {}
            _ = stop.cancelled() => break 'reconnect,
            _ = tokio::time::sleep_until(deadline) => break 'reconnect,
        }
    }

    close(call.take()).await;
    // A close frame ends the session now (the camera hears `peer-left` and frees the call);
    // a process that just exits would leave it held for the resume grace.
    sender.close(Duration::from_secs(2)).await;
    Ok(report(&opts, start, &assembler, state))
}

#[derive(Default)]
struct RunState {
    turn_problem: Option<String>,
    reason: Option<String>,
    connected_at: Option<Duration>,
    selected_pair: Option<SelectedPair>,
    camera_was_offline: bool,
    peer_connections: u32,
    signaling_resumes: u32,
}

async fn answer(call: &mut Call, sdp: String, sender: &SignalSender) -> Result<(), ViewerError> {
    call.pc
        .set_remote_description(RTCSessionDescription::offer(sdp)?)
        .await?;
    call.have_remote = true;
    let answer = call.pc.create_answer(None).await?;
    call.pc.set_local_description(answer).await?;
    let sdp = call
        .pc
        .local_description()
        .await
        .map(|d| d.sdp)
        .unwrap_or_default();
    sender.send(ClientFrame::Answer {
        to: call.camera_session.clone(),
        sdp,
    });
    Ok(())
}

async fn close(call: Option<Call>) {
    if let Some(c) = call {
        let _ = c.pc.close().await;
    }
}

async fn read_track(
    track: Arc<dyn TrackRemote>,
    assembler: Arc<Mutex<Option<FrameAssembler>>>,
    frames: watch::Sender<u64>,
) {
    let mut seen_ssrc = HashSet::new();
    // Frames that cannot be decoded yet (no key frame since the start): ask the sender for one,
    // as browsers do, at most once a second.
    let mut last_pli: Option<Instant> = None;
    while let Some(event) = track.poll().await {
        let packet = match event {
            TrackRemoteEvent::OnRtpPacket(p) => p,
            TrackRemoteEvent::OnEnded => break,
            _ => continue,
        };
        let ssrc = packet.header.ssrc;
        if seen_ssrc.insert(ssrc) {
            let codec = track.codec(ssrc).await;
            let kind = track.kind().await;
            tracing::info!(?kind, codec = ?codec.as_ref().map(|c| c.mime_type.clone()), ssrc, "track");
            if kind != rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video {
                return;
            }
            let (mime, rate) = codec
                .map(|c| (c.mime_type, c.clock_rate))
                .unwrap_or_else(|| ("video/VP8".to_owned(), 90_000));
            let Ok(mut guard) = assembler.lock() else {
                return;
            };
            // A new connection to the camera starts a new count only if nothing arrived yet.
            if guard.is_none() {
                *guard = Some(FrameAssembler::new(&mime, rate));
            }
        }
        let (count, want_keyframe) = {
            let Ok(mut guard) = assembler.lock() else {
                return;
            };
            let Some(asm) = guard.as_mut() else { continue };
            asm.push(Instant::now(), packet);
            let s = asm.stats;
            (
                s.frames,
                asm.knows_keyframes() && s.frames > 0 && s.keyframes == 0,
            )
        };
        if want_keyframe && last_pli.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_pli = Some(Instant::now());
            let pli =
                rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc: ssrc,
                };
            if let Err(e) = track.write_rtcp(vec![Box::new(pli)]).await {
                tracing::debug!(error = %e, "PLI not sent");
            }
        }
        frames.send_if_modified(|v| {
            let changed = *v != count;
            *v = count;
            changed
        });
    }
}

fn report(
    opts: &ViewerOptions,
    start: Instant,
    assembler: &Arc<Mutex<Option<FrameAssembler>>>,
    state: RunState,
) -> ViewerReport {
    let stats = assembler
        .lock()
        .ok()
        .and_then(|g| g.as_ref().map(|a| a.stats))
        .unwrap_or_default();
    let span = match (stats.first_frame_at, stats.last_frame_at) {
        (Some(a), Some(b)) if b > a => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let fps = if span > 0.0 {
        (stats.frames.saturating_sub(1)) as f64 / span
    } else {
        0.0
    };
    let bitrate_kbps = if span > 0.0 {
        stats.bytes as f64 * 8.0 / span / 1000.0
    } else {
        0.0
    };
    let ok = stats.frames >= opts.frames;
    let reason = if ok {
        None
    } else if stats.frames > 0 {
        Some(format!(
            "only {} of {} frames arrived within {:?}",
            stats.frames, opts.frames, opts.timeout
        ))
    } else if let Some(t) = state.turn_problem.clone() {
        Some(format!("no video: {t}"))
    } else if state.connected_at.is_none() && state.camera_was_offline {
        Some(format!("camera {} stayed offline", opts.camera))
    } else if state.connected_at.is_none() {
        Some(
            state
                .reason
                .clone()
                .unwrap_or_else(|| "no connection to the camera was established".to_owned()),
        )
    } else {
        Some("connected, but no video frame arrived".to_owned())
    };
    ViewerReport {
        camera: opts.camera.clone(),
        ok,
        frames: stats.frames,
        frames_wanted: opts.frames,
        keyframes: stats.keyframes,
        bytes: stats.bytes,
        packets: stats.packets,
        time_to_first_frame_ms: stats
            .first_frame_at
            .map(|t| t.duration_since(start).as_millis() as u64),
        time_to_connected_ms: state.connected_at.map(|d| d.as_millis() as u64),
        fps: (fps * 10.0).round() / 10.0,
        bitrate_kbps: bitrate_kbps.round(),
        selected_pair: state.selected_pair,
        relay_only: opts.relay_only,
        camera_was_offline: state.camera_was_offline,
        peer_connections: state.peer_connections,
        signaling_resumes: state.signaling_resumes,
        reason,
        elapsed_ms: start.elapsed().as_millis() as u64,
    }
}
