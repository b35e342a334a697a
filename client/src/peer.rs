//! One webrtc-rs peer connection as the reference clients use it: built from the welcome's ICE
//! servers, its events turned into a channel, candidates turned into DESIGN §3 frames, and the
//! selected candidate pair read from getStats.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodecParameters, RtpCodecKind};
use rtc::sansio::Protocol;
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidate, RTCIceCandidateInit, RTCIceGatheringState,
    RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCStatsReportEntry,
    Registry, SettingEngineBuilder, StatsSelector, register_default_interceptors,
};

use crate::ice;
use crate::protocol::{ClientFrame, IceServer};

/// What a peer connection tells its session.
pub enum PcEvent {
    Candidate(RTCIceCandidate),
    GatheringComplete,
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
}

impl std::fmt::Debug for PcEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PcEvent::Candidate(c) => write!(f, "Candidate({c:?})"),
            PcEvent::GatheringComplete => write!(f, "GatheringComplete"),
            PcEvent::State(s) => write!(f, "State({s})"),
            PcEvent::Track(_) => write!(f, "Track"),
        }
    }
}

struct Events {
    tx: mpsc::UnboundedSender<PcEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let _ = self.tx.send(PcEvent::Candidate(event.candidate));
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.tx.send(PcEvent::GatheringComplete);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.tx.send(PcEvent::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tx.send(PcEvent::Track(track));
    }
}

#[derive(Debug, Clone)]
pub struct PeerOptions {
    pub ice_servers: Vec<IceServer>,
    pub relay_only: bool,
    /// Local address to gather on; chosen from the route to the ICE servers when absent.
    pub bind: Option<IpAddr>,
    pub signal_url: String,
    /// Codecs to offer and accept instead of webrtc-rs's defaults (the bridge offers only the
    /// H.264 it passes through, so a browser cannot pick VP8).
    pub codecs: Option<Vec<(RTCRtpCodecParameters, RtpCodecKind)>>,
    /// Hand the remote's keyframe requests (PLI, FIR) to the local tracks
    /// (`TrackLocalEvent::OnRtcpPacket`), for a sender that can answer them from a cache.
    pub keyframe_requests: bool,
}

/// Marks inbound PLI and FIR for the application; every other RTCP packet stays with the
/// interceptors that act on it (receiver reports, NACKs).
#[derive(Default)]
struct KeyframeRequests {
    read: std::collections::VecDeque<TaggedPacket>,
    write: std::collections::VecDeque<TaggedPacket>,
}

fn is_keyframe_request(p: &dyn rtc::rtcp::Packet) -> bool {
    use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    let any = p.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| is_keyframe_request(p.as_ref()))
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Where rtc's rtcp-processing example puts its marker: after every default interceptor.
const KEYFRAME_REQUESTS_SLOT: usize = 14_000;

pub type Pc = Arc<dyn PeerConnection>;

pub async fn new_peer(
    opts: &PeerOptions,
) -> Result<(Pc, mpsc::UnboundedReceiver<PcEvent>), webrtc::error::Error> {
    let mut media = MediaEngine::default();
    match &opts.codecs {
        Some(codecs) => {
            for (codec, kind) in codecs {
                media.register_codec(codec.clone(), *kind)?;
            }
        }
        None => media.register_default_codecs()?,
    }
    let base = if opts.keyframe_requests {
        Registry::new().with(
            Slot::from(KEYFRAME_REQUESTS_SLOT),
            KeyframeRequests::default(),
        )
    } else {
        Registry::new()
    };
    let registry = register_default_interceptors(base, &mut media)?;
    let policy = if opts.relay_only {
        RTCIceTransportPolicy::Relay
    } else {
        RTCIceTransportPolicy::All
    };
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(ice::to_rtc(&opts.ice_servers))
        .with_ice_transport_policy(policy)
        .build();
    let bind = opts
        .bind
        .or_else(|| ice::pick_local_ip(&opts.ice_servers, &opts.signal_url))
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    // No mDNS: it would send multicast queries on every interface (and fails where there is no
    // multicast route, e.g. a namespace with only loopback); Iceway candidates are plain IPs.
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_include_loopback_candidate(bind.is_loopback())
        // webrtc-rs holds a relay pair back for 2 s hoping for a better one; with --relay-only
        // there is no better one.
        .with_relay_acceptance_min_wait(opts.relay_only.then_some(Duration::ZERO))
        .build();
    let (tx, rx) = mpsc::unbounded_channel();
    let pc = PeerConnectionBuilder::new()
        .with_setting_engine(settings)
        .with_configuration(config)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Events { tx }))
        .with_udp_addrs(vec![std::net::SocketAddr::new(bind, 0)])
        .build()
        .await?;
    Ok((Arc::new(pc), rx))
}

/// The DESIGN §3 candidate frame for a local candidate.
pub fn candidate_frame(to: &str, c: &RTCIceCandidate) -> Option<ClientFrame> {
    let init = c.to_json().ok()?;
    Some(ClientFrame::Candidate {
        to: to.to_owned(),
        candidate: init.candidate,
        // webrtc-rs fills sdpMid with "", which browsers reject; the m-line index (everything is
        // bundled on the first one) is what they then use.
        sdp_mid: init.sdp_mid.filter(|m| !m.is_empty()),
        sdp_mline_index: init.sdp_mline_index.or(Some(0)),
    })
}

pub fn candidate_init(
    candidate: String,
    sdp_mid: Option<String>,
    sdp_mline_index: Option<u16>,
) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate,
        sdp_mid,
        sdp_mline_index,
        ..Default::default()
    }
}

/// The candidate types of the selected pair, e.g. ("relay", "relay").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SelectedPair {
    pub local: String,
    pub remote: String,
    pub local_address: Option<String>,
    pub remote_address: Option<String>,
}

pub async fn selected_pair(pc: &Pc) -> Option<SelectedPair> {
    let report = pc.get_stats(Instant::now(), StatsSelector::None).await;
    tracing::debug!(
        ids = ?report.iter().map(|e| format!("{:?}:{}", e.stats_type(), e.id())).collect::<Vec<_>>(),
        selected = ?report.transport().map(|t| t.selected_candidate_pair_id.clone()),
        "stats"
    );
    let selected_id = report
        .transport()
        .map(|t| t.selected_candidate_pair_id.clone())
        .filter(|id| !id.is_empty());
    let pair = report
        .candidate_pairs()
        .find(|p| Some(&p.stats.id) == selected_id.as_ref())
        .or_else(|| report.candidate_pairs().find(|p| p.nominated))?;
    // The pair names candidates by their own id, which the report may prefix with the entry
    // kind ("RTCLocalIceCandidate_<id>"), so match on the suffix as well.
    let lookup = |id: &str, local: bool| {
        report.iter().find_map(|e| match e {
            RTCStatsReportEntry::LocalCandidate(c) | RTCStatsReportEntry::RemoteCandidate(c)
                if matches!(e, RTCStatsReportEntry::LocalCandidate(_)) == local
                    && (e.id() == id || e.id().ends_with(id)) =>
            {
                Some((
                    c.candidate_type.to_string(),
                    c.address.clone().map(|a| format!("{a}:{}", c.port)),
                ))
            }
            _ => None,
        })
    };
    let (local, local_address) = lookup(&pair.local_candidate_id, true)?;
    // webrtc-rs has no stats entry for a remote candidate that came in the SDP (not trickled):
    // the pair is still the selected one, its far end just unnamed.
    let (remote, remote_address) =
        lookup(&pair.remote_candidate_id, false).unwrap_or_else(|| ("unknown".to_owned(), None));
    Some(SelectedPair {
        local,
        remote,
        local_address,
        remote_address,
    })
}
