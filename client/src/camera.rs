//! `iceway-client camera`: publishes under the token's `sub` and streams a looping VP8 clip to
//! every viewer that joins, one peer connection per viewer. Reconnects to signaling after drops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_VP8;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::peer_connection::{RTCPeerConnectionState, RTCSessionDescription};

use crate::ice;
use crate::media::Clip;
use crate::peer::{self, PcEvent, PeerOptions};
use crate::protocol::{ClientFrame, ServerFrame};
use crate::signaling::{self, Incoming, SignalError, SignalSender};

#[derive(Debug, Clone)]
pub struct CameraOptions {
    pub signal_url: String,
    pub token: String,
    /// A file holding the current token, read again at each connect and when the server asks
    /// for a fresh one before `exp` (see `signaling::connect_refreshing`).
    pub token_file: Option<std::path::PathBuf>,
    pub clip: Arc<Clip>,
    pub relay_only: bool,
    pub bind: Option<std::net::IpAddr>,
    /// ICE servers to use instead of the welcome frame's (your own TURN, or tests).
    pub ice_servers: Option<Vec<crate::protocol::IceServer>>,
    /// Stop after this long (tests); `None` runs until cancelled.
    pub duration: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error(transparent)]
    Signal(#[from] SignalError),
}

/// What one session with a viewer is told by the router.
#[derive(Debug)]
enum ToSession {
    Answer(String),
    Candidate(String, Option<String>, Option<u16>),
}

pub async fn run(opts: CameraOptions, stop: CancellationToken) -> Result<(), CameraError> {
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let until_deadline = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);
    let mut attempt = 0u32;
    // Outlive a signaling connection: after a resume the viewers' peer connections go on, and
    // what their tasks sent meanwhile follows.
    let sender = SignalSender::default();
    let mut resume: Option<signaling::Resume> = None;
    let mut session_stop = stop.child_token();
    let mut sessions: HashMap<String, mpsc::UnboundedSender<ToSession>> = HashMap::new();
    loop {
        let token = signaling::current_token(opts.token_file.as_deref(), &opts.token);
        let connected = tokio::select! {
            r = signaling::connect_resuming(&opts.signal_url, &token, opts.token_file.clone(), resume.as_ref()) => r,
            _ = stop.cancelled() => return Ok(()),
            _ = &mut until_deadline => return Ok(()),
        };
        let (mut welcome, connection, mut incoming) = match connected {
            Ok(ok) => ok,
            Err(e) if e.is_fatal() => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "signaling unavailable; retrying");
                attempt += 1;
                tokio::select! {
                    _ = tokio::time::sleep(signaling::backoff(attempt)) => continue,
                    _ = stop.cancelled() => return Ok(()),
                    _ = &mut until_deadline => return Ok(()),
                }
            }
        };
        attempt = 0;
        if let Some(servers) = &opts.ice_servers {
            welcome.ice_servers = servers.clone();
        }
        for why in ice::expired_turn_credentials(&welcome.ice_servers, SystemTime::now()) {
            tracing::error!("{why}: viewers will not be able to connect through the relay");
        }
        sender.attach(&connection, welcome.resumed);
        resume = welcome.resume.clone();
        if welcome.resumed {
            tracing::info!(session = %welcome.session, viewers = sessions.len(), "signaling resumed; calls go on");
        } else {
            // A new session: the viewers re-watch and get fresh offers from it.
            session_stop.cancel();
            session_stop = stop.child_token();
            sessions.clear();
            tracing::info!(session = %welcome.session, "camera online");
            sender.send(ClientFrame::Publish);
        }
        let peer_opts = PeerOptions {
            ice_servers: welcome.ice_servers.clone(),
            relay_only: opts.relay_only,
            bind: opts.bind,
            signal_url: opts.signal_url.clone(),
            codecs: None,
            keyframe_requests: false,
        };
        let closed = loop {
            let msg = tokio::select! {
                m = incoming.recv() => m,
                _ = stop.cancelled() => { session_stop.cancel(); sender.send(ClientFrame::Leave); return Ok(()); }
                _ = &mut until_deadline => { session_stop.cancel(); sender.send(ClientFrame::Leave); return Ok(()); }
            };
            let frame = match msg {
                Some(Incoming::Frame(f)) => f,
                Some(Incoming::Closed(c)) => break Some(c),
                None => break None,
            };
            match frame {
                ServerFrame::ViewerJoined { viewer, user } => {
                    tracing::info!(%viewer, user = user.as_deref().unwrap_or("?"), "viewer joined");
                    let (tx, rx) = mpsc::unbounded_channel();
                    sessions.insert(viewer.clone(), tx);
                    tokio::spawn(serve_viewer(
                        viewer,
                        peer_opts.clone(),
                        opts.clip.clone(),
                        sender.clone(),
                        rx,
                        session_stop.child_token(),
                    ));
                }
                ServerFrame::Answer { from, sdp } => {
                    if let Some(s) = sessions.get(&from) {
                        let _ = s.send(ToSession::Answer(sdp));
                    }
                }
                ServerFrame::Candidate {
                    from,
                    candidate,
                    sdp_mid,
                    sdp_mline_index,
                } => {
                    if let Some(s) = sessions.get(&from) {
                        let _ = s.send(ToSession::Candidate(candidate, sdp_mid, sdp_mline_index));
                    }
                }
                // Dropping the sender ends that session.
                ServerFrame::PeerLeft { peer } if sessions.remove(&peer).is_some() => {
                    tracing::info!(viewer = %peer, "viewer left");
                }
                ServerFrame::Error {
                    code,
                    message,
                    reference,
                } => {
                    if code == "peer-gone"
                        && let Some(id) = reference.as_ref().and_then(|r| r.as_str())
                    {
                        sessions.remove(id);
                    }
                    tracing::warn!(%code, message = message.as_deref().unwrap_or(""), "server error");
                }
                _ => {}
            }
            sessions.retain(|_, s| !s.is_closed());
        };
        match closed {
            Some(c) if c.is_fatal() => {
                session_stop.cancel();
                return Err(match c.code {
                    Some(4003) => SignalError::Forbidden(c.reason),
                    _ => SignalError::Unauthorized(c.reason),
                }
                .into());
            }
            Some(c) => {
                tracing::warn!(code = ?c.code, reason = %c.reason, "signaling closed; reconnecting")
            }
            None => tracing::warn!("signaling ended; reconnecting"),
        }
    }
}

fn video_track() -> Result<Arc<TrackLocalStaticSample>, webrtc::error::Error> {
    let ssrc = rand::random::<u32>();
    let track = TrackLocalStaticSample::new(
        Instant::now(),
        MediaStreamTrack::new(
            "iceway-camera".to_owned(),
            "video".to_owned(),
            "camera".to_owned(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_VP8.to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: String::new(),
                    rtcp_feedback: vec![],
                },
                ..Default::default()
            }],
        ),
    )?;
    Ok(Arc::new(track))
}

/// One viewer: offer, trickle, stream the clip once connected, close when told or on failure.
async fn serve_viewer(
    viewer: String,
    opts: PeerOptions,
    clip: Arc<Clip>,
    signal: SignalSender,
    mut inbox: mpsc::UnboundedReceiver<ToSession>,
    stop: CancellationToken,
) {
    if let Err(e) = serve_viewer_inner(&viewer, &opts, clip, &signal, &mut inbox, &stop).await {
        tracing::warn!(%viewer, error = %e, "viewer session ended with an error");
    }
}

async fn serve_viewer_inner(
    viewer: &str,
    opts: &PeerOptions,
    clip: Arc<Clip>,
    signal: &SignalSender,
    inbox: &mut mpsc::UnboundedReceiver<ToSession>,
    stop: &CancellationToken,
) -> Result<(), webrtc::error::Error> {
    let (pc, mut events) = peer::new_peer(opts).await?;
    let track = video_track()?;
    let sender = pc
        .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
        .await?;
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    let sdp = pc
        .local_description()
        .await
        .map(|d| d.sdp)
        .unwrap_or_default();
    signal.send(ClientFrame::Offer {
        to: viewer.to_owned(),
        sdp,
    });
    let streaming = stop.child_token();
    let mut pending = Vec::new();
    let mut have_answer = false;
    let mut relay_candidates = 0u32;
    let started = Instant::now();
    let result = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            msg = inbox.recv() => match msg {
                None => break Ok(()),
                Some(ToSession::Answer(sdp)) => {
                    pc.set_remote_description(RTCSessionDescription::answer(sdp)?).await?;
                    have_answer = true;
                    for c in pending.drain(..) {
                        if let Err(e) = pc.add_ice_candidate(c).await {
                            tracing::debug!(error = %e, "remote candidate refused");
                        }
                    }
                }
                Some(ToSession::Candidate(c, mid, idx)) => {
                    let init = peer::candidate_init(c, mid, idx);
                    if have_answer {
                        if let Err(e) = pc.add_ice_candidate(init).await {
                            tracing::debug!(error = %e, "remote candidate refused");
                        }
                    } else {
                        pending.push(init);
                    }
                }
            },
            ev = events.recv() => match ev {
                None => break Ok(()),
                Some(PcEvent::Candidate(c)) => {
                    if c.typ == webrtc::peer_connection::RTCIceCandidateType::Relay {
                        relay_candidates += 1;
                    }
                    if let Some(f) = peer::candidate_frame(viewer, &c) {
                        signal.send(f);
                    }
                }
                Some(PcEvent::GatheringComplete) => {
                    if opts.relay_only && relay_candidates == 0 {
                        tracing::error!(%viewer, "no relay candidate: TURN allocation failed (credentials expired or refused, or the TURN server is unreachable)");
                    }
                }
                Some(PcEvent::State(state)) => {
                    tracing::info!(%viewer, %state, "peer connection");
                    match state {
                        RTCPeerConnectionState::Connected => {
                            if let Some(pair) = peer::selected_pair(&pc).await {
                                tracing::info!(%viewer, local = %pair.local, remote = %pair.remote, elapsed_ms = started.elapsed().as_millis() as u64, "connected");
                            }
                            let payload_type = sender
                                .get_parameters()
                                .await?
                                .rtp_parameters
                                .codecs
                                .first()
                                .map(|c| c.payload_type)
                                .unwrap_or(96);
                            tokio::spawn(stream_clip(track.clone(), payload_type, clip.clone(), streaming.clone()));
                        }
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => break Ok(()),
                        _ => {}
                    }
                }
                Some(PcEvent::Track(_)) => {}
            },
        }
    };
    streaming.cancel();
    let _ = pc.close().await;
    result
}

/// Writes the clip frame by frame at its frame rate, looping, as a live source would. Each viewer
/// starts at the first frame, a key frame, so its decoder can start at once.
async fn stream_clip(
    track: Arc<TrackLocalStaticSample>,
    payload_type: u8,
    clip: Arc<Clip>,
    stop: CancellationToken,
) {
    use webrtc::media_stream::Track;
    let Some(ssrc) = track.ssrcs().await.first().copied() else {
        return;
    };
    let mut ticker = tokio::time::interval(clip.frame_duration);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for frame in clip.frames.iter().cycle() {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let sample = Sample {
            data: frame.clone(),
            duration: clip.frame_duration,
            ..Sample::new(Instant::now())
        };
        if let Err(e) = track
            .sample_writer(ssrc, payload_type)
            .write_sample(&sample)
            .await
        {
            tracing::debug!(error = %e, "write_sample failed; stopping the stream");
            return;
        }
    }
}
