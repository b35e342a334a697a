//! One viewer of a bridged camera: a webrtc-rs peer connection that offers only the codecs the
//! bridge passes through (H.264, G.711), then, once connected, the cached GOP and the live
//! units, repacketized per RFC 6184 by webrtc-rs and never decoded. Viewers' NACKs are answered
//! from the retransmission buffer of webrtc-rs's default interceptors; their PLIs cannot reach
//! the camera, and the GOP cache answers for them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use iceway_client::peer::{self, PcEvent, PeerOptions};
use iceway_client::protocol::ClientFrame;
use iceway_client::signaling::SignalSender;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_PCMA, MIME_TYPE_PCMU,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::Track;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::peer_connection::{RTCIceCandidateInit, RTCPeerConnectionState, RTCSessionDescription};

use crate::feed::{Audio, Feed, Media, Unit};
use crate::metrics::Metrics;

/// What the bridge offers for video: constrained baseline, level 3.1, packetization mode 1 —
/// the H.264 every WebRTC browser decodes (Chromium offers 42e01f, 42001f and 4d001f, and no
/// High). The camera's own bitstream goes out as it is, whatever its profile: browsers' H.264
/// decoders read the profile from the SPS in the stream, not from this line, so a High-profile
/// camera plays; a receiver that really cannot decode High would fail (docs/bridge.md).
pub const H264_FMTP: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
const H264_PT: u8 = 102;

/// Longest wait for ICE gathering before the offer goes out without every candidate.
const GATHER_WAIT: Duration = Duration::from_secs(2);

/// Cached GOP units are written this far apart: the decoder gets the reference frames at once
/// and shows the newest picture within a few frame times, instead of replaying the GOP at its
/// original pace behind live.
const CATCH_UP_STEP: Duration = Duration::from_millis(1);

/// The codecs a bridge peer connection registers (and so offers): nothing a viewer could pick
/// that the bridge cannot send.
pub fn codecs() -> Vec<(RTCRtpCodecParameters, RtpCodecKind)> {
    let feedback = ["nack", "nack pli", "ccm fir"]
        .iter()
        .map(|f| {
            let (typ, parameter) = f.split_once(' ').unwrap_or((f, ""));
            RTCPFeedback {
                typ: typ.to_owned(),
                parameter: parameter.to_owned(),
            }
        })
        .collect::<Vec<_>>();
    vec![
        (
            RTCRtpCodecParameters {
                rtp_codec: h264_codec(feedback),
                payload_type: H264_PT,
            },
            RtpCodecKind::Video,
        ),
        (
            RTCRtpCodecParameters {
                rtp_codec: audio_codec(MIME_TYPE_PCMU),
                payload_type: 0,
            },
            RtpCodecKind::Audio,
        ),
        (
            RTCRtpCodecParameters {
                rtp_codec: audio_codec(MIME_TYPE_PCMA),
                payload_type: 8,
            },
            RtpCodecKind::Audio,
        ),
    ]
}

fn h264_codec(rtcp_feedback: Vec<RTCPFeedback>) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: H264_FMTP.to_owned(),
        rtcp_feedback,
    }
}

fn audio_codec(mime: &str) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: mime.to_owned(),
        clock_rate: 8000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

fn track(
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    id: &str,
) -> Result<Arc<TrackLocalStaticSample>, webrtc::error::Error> {
    let track = TrackLocalStaticSample::new(
        Instant::now(),
        MediaStreamTrack::new(
            "iceway-bridge".to_owned(),
            id.to_owned(),
            id.to_owned(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(rand::random::<u32>()),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        ),
    )?;
    Ok(Arc::new(track))
}

/// What the publisher routes to a viewer session.
#[derive(Debug)]
pub enum ToViewer {
    Answer(String),
    Candidate(RTCIceCandidateInit),
}

pub struct Session {
    pub camera: String,
    pub viewer: String,
    pub opts: PeerOptions,
    pub feed: Arc<Feed>,
    pub signal: SignalSender,
    pub metrics: Metrics,
    pub joined: Instant,
}

impl Session {
    pub async fn run(self, mut inbox: mpsc::UnboundedReceiver<ToViewer>, stop: CancellationToken) {
        self.metrics.viewer(1);
        if let Err(e) = self.serve(&mut inbox, &stop).await {
            tracing::warn!(camera = %self.camera, viewer = %self.viewer, error = %e, "viewer session failed");
        }
        self.metrics.viewer(-1);
    }

    async fn serve(
        &self,
        inbox: &mut mpsc::UnboundedReceiver<ToViewer>,
        stop: &CancellationToken,
    ) -> Result<(), webrtc::error::Error> {
        let (pc, mut events) = peer::new_peer(&self.opts).await?;
        let video = track(RtpCodecKind::Video, h264_codec(vec![]), "video")?;
        let video_sender = pc
            .add_track(Arc::clone(&video) as Arc<dyn TrackLocal>)
            .await?;
        // An audio m-line only when the camera sends G.711, with its law; AAC is not sent.
        let audio = match self.feed.audio() {
            Some(law) => {
                let mime = match law {
                    Audio::Pcmu => MIME_TYPE_PCMU,
                    Audio::Pcma => MIME_TYPE_PCMA,
                };
                let t = track(RtpCodecKind::Audio, audio_codec(mime), "audio")?;
                let s = pc.add_track(Arc::clone(&t) as Arc<dyn TrackLocal>).await?;
                Some((t, s))
            }
            None => None,
        };
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        // The candidates go in the offer, not one frame each: when a camera comes back, all its
        // viewers join at once, and trickling would send each of them several frames in the
        // same second, past signaling's per-connection rate (20/s, bursts of 60). Gathering
        // (host and a TURN allocation) takes tens of milliseconds; past GATHER_WAIT the offer
        // goes out and the rest trickle.
        let mut relay_candidates = 0u32;
        let mut gathered = Vec::new();
        let gather_deadline = tokio::time::sleep(GATHER_WAIT);
        tokio::pin!(gather_deadline);
        let complete = loop {
            tokio::select! {
                () = &mut gather_deadline => break false,
                () = stop.cancelled() => { let _ = pc.close().await; return Ok(()); }
                ev = events.recv() => match ev {
                    None => { let _ = pc.close().await; return Ok(()); }
                    Some(PcEvent::Candidate(c)) => gathered.push(c),
                    Some(PcEvent::GatheringComplete) => break true,
                    Some(_) => {}
                },
            }
        };
        let sdp = pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .unwrap_or_default();
        self.signal.send(ClientFrame::Offer {
            to: self.viewer.clone(),
            sdp,
        });
        for c in &gathered {
            if c.typ == webrtc::peer_connection::RTCIceCandidateType::Relay {
                relay_candidates += 1;
            }
            // The description carries what was gathered when it was read; only a slow gathering
            // leaves candidates to trickle.
            if !complete && let Some(f) = peer::candidate_frame(&self.viewer, c) {
                self.signal.send(f);
            }
        }
        if complete && self.opts.relay_only && relay_candidates == 0 {
            tracing::error!(camera = %self.camera, viewer = %self.viewer, "no relay candidate: the TURN allocation failed");
        }
        let streaming = stop.child_token();
        let mut pending = Vec::new();
        let mut have_answer = false;
        let result = loop {
            tokio::select! {
                () = stop.cancelled() => break Ok(()),
                msg = inbox.recv() => match msg {
                    None => break Ok(()),
                    Some(ToViewer::Answer(sdp)) => {
                        pc.set_remote_description(RTCSessionDescription::answer(sdp)?).await?;
                        have_answer = true;
                        for c in pending.drain(..) {
                            if let Err(e) = pc.add_ice_candidate(c).await {
                                tracing::debug!(error = %e, "remote candidate refused");
                            }
                        }
                    }
                    Some(ToViewer::Candidate(init)) => {
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
                        if let Some(f) = peer::candidate_frame(&self.viewer, &c) {
                            self.signal.send(f);
                        }
                    }
                    Some(PcEvent::GatheringComplete) => {
                        if self.opts.relay_only && relay_candidates == 0 {
                            tracing::error!(camera = %self.camera, viewer = %self.viewer, "no relay candidate: the TURN allocation failed");
                        }
                    }
                    Some(PcEvent::State(state)) => {
                        tracing::debug!(camera = %self.camera, viewer = %self.viewer, %state, "peer connection");
                        match state {
                            RTCPeerConnectionState::Connected => {
                                let video_pt = payload_type(&video_sender).await?.unwrap_or(H264_PT);
                                let audio = match &audio {
                                    Some((t, s)) => payload_type(s).await?.map(|pt| (Arc::clone(t), pt)),
                                    None => None,
                                };
                                let out = Outputs {
                                    video: Arc::clone(&video),
                                    video_pt,
                                    audio,
                                };
                                tokio::spawn(stream(
                                    Arc::clone(&self.feed),
                                    out,
                                    self.metrics.clone(),
                                    self.joined,
                                    streaming.clone(),
                                ));
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
}

async fn payload_type(
    sender: &Arc<dyn webrtc::rtp_transceiver::RtpSender>,
) -> Result<Option<u8>, webrtc::error::Error> {
    Ok(sender
        .get_parameters()
        .await?
        .rtp_parameters
        .codecs
        .first()
        .map(|c| c.payload_type))
}

struct Outputs {
    video: Arc<TrackLocalStaticSample>,
    video_pt: u8,
    audio: Option<(Arc<TrackLocalStaticSample>, u8)>,
}

/// The video side of one viewer: nothing goes out before the first IDR.
struct VideoOut {
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    pt: u8,
    /// Sending (from an IDR on); false again when a lag broke the chain of references.
    started: bool,
    /// The first IDR went out (observed in `iceway_bridge_first_frame_seconds`).
    first_sent: bool,
    metrics: Metrics,
    joined: Instant,
}

impl VideoOut {
    /// False once the track no longer takes samples (the connection closed).
    async fn write(&mut self, unit: &Unit, duration: Duration) -> bool {
        if !self.started {
            if !unit.keyframe {
                return true;
            }
            self.started = true;
            if !self.first_sent {
                self.first_sent = true;
                self.metrics
                    .first_frame(self.joined.elapsed().as_secs_f64());
            }
        }
        let sample = Sample {
            data: unit.data.clone(),
            duration,
            ..Sample::new(Instant::now())
        };
        self.metrics.forwarded("video", unit.data.len());
        self.track
            .sample_writer(self.ssrc, self.pt)
            .write_sample(&sample)
            .await
            .is_ok()
    }
}

/// The shortest time between two answers to a viewer's keyframe requests: a decoder that is
/// still catching up asks again, and each answer replays a GOP.
const KEYFRAME_ANSWER_INTERVAL: Duration = Duration::from_millis(500);

/// Resolves with each PLI or FIR the viewer sends about `track`.
async fn keyframe_requests(track: Arc<TrackLocalStaticSample>, tx: mpsc::UnboundedSender<()>) {
    use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use webrtc::media_stream::track_local::TrackLocalEvent;
    while let Some(event) = track.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = event else {
            continue;
        };
        let wants = packets.iter().any(|p| {
            let any = p.as_any();
            any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
        });
        if wants && tx.send(()).is_err() {
            return;
        }
    }
}

/// The cached GOP (fast, see [`CATCH_UP_STEP`]) and then the live units until `stop`. A
/// keyframe request from the viewer (its first packets were lost, or it lost a reference)
/// cannot reach the camera: it is answered by starting over at the cached IDR.
async fn stream(
    feed: Arc<Feed>,
    out: Outputs,
    metrics: Metrics,
    joined: Instant,
    stop: CancellationToken,
) {
    let Some(video_ssrc) = out.video.ssrcs().await.first().copied() else {
        return;
    };
    let audio_ssrc = match &out.audio {
        Some((t, _)) => t.ssrcs().await.first().copied(),
        None => None,
    };
    let mut video = VideoOut {
        track: Arc::clone(&out.video),
        ssrc: video_ssrc,
        pt: out.video_pt,
        started: false,
        first_sent: false,
        metrics: metrics.clone(),
        joined,
    };
    let (pli_tx, mut pli_rx) = mpsc::unbounded_channel();
    let requests = tokio::spawn(keyframe_requests(Arc::clone(&out.video), pli_tx));
    let _stop_requests = AbortOnDrop(requests);
    let mut live = match catch_up(&feed, &mut video).await {
        Some(live) => live,
        None => return,
    };
    let mut answered: Option<Instant> = None;
    loop {
        let media = tokio::select! {
            m = live.recv() => m,
            Some(()) = pli_rx.recv() => {
                if answered.is_some_and(|t| t.elapsed() < KEYFRAME_ANSWER_INTERVAL) {
                    continue;
                }
                answered = Some(Instant::now());
                tracing::debug!("keyframe request: replaying the GOP from its IDR");
                live = match catch_up(&feed, &mut video).await {
                    Some(live) => live,
                    None => return,
                };
                continue;
            }
            () = stop.cancelled() => return,
        };
        match media {
            Ok(Media::Video(unit)) => {
                if !video.write(&unit, unit.duration).await {
                    return;
                }
            }
            Ok(Media::Audio(unit)) => {
                if let (Some((track, pt)), Some(ssrc)) = (&out.audio, audio_ssrc) {
                    let sample = Sample {
                        data: unit.data.clone(),
                        duration: unit.duration,
                        ..Sample::new(Instant::now())
                    };
                    metrics.forwarded("audio", unit.data.len());
                    if track
                        .sample_writer(ssrc, *pt)
                        .write_sample(&sample)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                // Too slow for the camera's rate: the frames skipped break decoding until the
                // next IDR, which the viewer waits for.
                tracing::warn!(skipped, "viewer fell behind; waiting for the next IDR");
                video.started = false;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Writes the cached GOP from its IDR and returns the live receiver that continues it; `None`
/// once the connection no longer takes samples.
async fn catch_up(feed: &Feed, video: &mut VideoOut) -> Option<broadcast::Receiver<Media>> {
    let sub = feed.subscribe();
    if sub.gop.first().is_some_and(|u| u.keyframe) {
        video.started = false;
    }
    let n = sub.gop.len();
    for (i, unit) in sub.gop.iter().enumerate() {
        let step = if i + 1 == n {
            unit.duration
        } else {
            CATCH_UP_STEP
        };
        if !video.write(unit, step).await {
            return None;
        }
    }
    Some(sub.live)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
