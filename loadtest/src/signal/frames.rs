//! The frames of both protocols and what each incoming frame asks of a camera or viewer, without
//! I/O: the connection tasks feed text in and carry out the returned [`Step`].
//!
//! Iceway (DESIGN §3): viewer `watch` → camera `viewer-joined` → camera `offer` → viewer `answer`
//! → camera gets the relayed `answer` (negotiated). PeerJS has no presence: viewer `OFFER` →
//! camera `ANSWER` → viewer gets the relayed `ANSWER` (negotiated). Traffic is stamped
//! `candidate` frames, camera → viewer, in both.
//!
//! The bare WebSocket relay (`ceiling-ws`, `--protocol ceiling`) has no protocol beyond its
//! first frame, `bind <me> <partner>` (answered `bound <me>`); every later frame goes to the
//! partner unchanged. Over it the load sends Iceway's own offer/answer/candidate JSON, so the
//! frames are the same size: viewer `offer` → camera `answer` → viewer (negotiated).

use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalProtocol {
    Iceway,
    PeerJs,
    /// The bare relay of `ceiling-ws`.
    Ceiling,
}

/// What a connection task does with one incoming frame.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// A frame to send back on the same connection.
    pub reply: Option<String>,
    /// Camera side: the viewer's id, where candidates go from now on.
    pub viewer: Option<String>,
    /// This frame completes the pair's negotiation.
    pub negotiated: bool,
    /// Viewer side: a relayed candidate stamped at this many ns after the run's epoch.
    pub stamp_ns: Option<u64>,
    /// A server error (by code) or an unreadable frame.
    pub error: Option<String>,
}

const OFFER_SDP: &str = "v=0 loadtest offer";
const ANSWER_SDP: &str = "v=0 loadtest answer";

/// Reads one text frame received by a camera (`is_camera`) or a viewer.
pub fn on_frame(protocol: SignalProtocol, is_camera: bool, text: &str) -> Step {
    if let (SignalProtocol::Ceiling, Some(code)) = (protocol, text.strip_prefix("error ")) {
        return Step {
            error: Some(code.to_string()),
            ..Step::default()
        };
    }
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Step {
            error: Some("unparsable frame".into()),
            ..Step::default()
        };
    };
    let ty = v["type"].as_str().unwrap_or_default();
    let s = |key: &str| v[key].as_str().unwrap_or_default().to_string();
    match (protocol, is_camera, ty) {
        (SignalProtocol::Iceway, true, "viewer-joined") => {
            let viewer = s("viewer");
            Step {
                reply: Some(json!({"type": "offer", "to": viewer, "sdp": OFFER_SDP}).to_string()),
                viewer: Some(viewer),
                ..Step::default()
            }
        }
        (SignalProtocol::Iceway, false, "offer") => Step {
            reply: Some(json!({"type": "answer", "to": s("from"), "sdp": ANSWER_SDP}).to_string()),
            ..Step::default()
        },
        (SignalProtocol::Ceiling, true, "offer") => {
            let viewer = s("from");
            Step {
                reply: Some(json!({"type": "answer", "to": viewer, "sdp": ANSWER_SDP}).to_string()),
                viewer: Some(viewer),
                ..Step::default()
            }
        }
        (SignalProtocol::Iceway, true, "answer")
        | (SignalProtocol::PeerJs | SignalProtocol::Ceiling, false, "ANSWER" | "answer") => Step {
            negotiated: true,
            ..Step::default()
        },
        (SignalProtocol::PeerJs, true, "OFFER") => {
            let viewer = s("src");
            Step {
                reply: Some(
                    json!({"type": "ANSWER", "dst": viewer, "payload": {"sdp": ANSWER_SDP}})
                        .to_string(),
                ),
                viewer: Some(viewer),
                ..Step::default()
            }
        }
        (SignalProtocol::Iceway | SignalProtocol::Ceiling, false, "candidate") => Step {
            stamp_ns: v["candidate"].as_str().and_then(parse_stamp),
            ..Step::default()
        },
        (SignalProtocol::PeerJs, false, "CANDIDATE") => Step {
            stamp_ns: v["payload"]["candidate"].as_str().and_then(parse_stamp),
            ..Step::default()
        },
        (SignalProtocol::Iceway, _, "error") => Step {
            error: Some(v["code"].as_str().unwrap_or("error").to_string()),
            ..Step::default()
        },
        (SignalProtocol::PeerJs, _, "ERROR" | "EXPIRE" | "ID-TAKEN" | "LEAVE") => Step {
            error: Some(ty.to_lowercase()),
            ..Step::default()
        },
        _ => Step::default(),
    }
}

/// The greeting a fresh connection waits for: Ok(id the peer is known by), or Err(error code).
pub fn on_greeting(protocol: SignalProtocol, name: &str, text: &str) -> Result<String, String> {
    if protocol == SignalProtocol::Ceiling {
        return match text.strip_prefix("bound ") {
            Some(me) if me == name => Ok(name.to_string()),
            _ => Err(format!(
                "unexpected greeting {:?}",
                text.chars().take(40).collect::<String>()
            )),
        };
    }
    let v: Value = serde_json::from_str(text).map_err(|_| "greeting not JSON".to_string())?;
    match (protocol, v["type"].as_str()) {
        (SignalProtocol::Iceway, Some("welcome")) => v["session"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "welcome without session".to_string()),
        (SignalProtocol::PeerJs, Some("OPEN")) => Ok(name.to_string()),
        (SignalProtocol::Iceway, Some("error")) => {
            Err(v["code"].as_str().unwrap_or("error").to_string())
        }
        (SignalProtocol::PeerJs, Some("ERROR")) => Err(format!(
            "peerjs error: {}",
            v["payload"]["msg"].as_str().unwrap_or("?")
        )),
        (_, t) => Err(format!("unexpected greeting type {t:?}")),
    }
}

/// The camera's first frame after the greeting (PeerJS has no presence).
pub fn publish(protocol: SignalProtocol) -> Option<String> {
    (protocol == SignalProtocol::Iceway).then(|| json!({"type": "publish"}).to_string())
}

/// The viewer's first move: Iceway watches the camera by name; PeerJS offers to its peer id;
/// over the bare relay the offer says who it is from (nothing adds `from` on the way).
pub fn start(protocol: SignalProtocol, camera_name: &str, camera_id: &str, viewer: &str) -> String {
    match protocol {
        SignalProtocol::Iceway => json!({"type": "watch", "camera": camera_name}).to_string(),
        SignalProtocol::Ceiling => {
            json!({"type": "offer", "to": camera_id, "from": viewer, "sdp": OFFER_SDP}).to_string()
        }
        SignalProtocol::PeerJs => {
            json!({"type": "OFFER", "dst": camera_id, "payload": {"sdp": OFFER_SDP}}).to_string()
        }
    }
}

/// A relayed `candidate`, camera → viewer, carrying its send time, about `size` bytes of
/// candidate string.
pub fn candidate(
    protocol: SignalProtocol,
    to: &str,
    seq: u64,
    sent_ns: u64,
    size: usize,
) -> String {
    let cand = stamp(seq, sent_ns, size);
    match protocol {
        SignalProtocol::Iceway | SignalProtocol::Ceiling => {
            json!({"type": "candidate", "to": to, "candidate": cand,
            "sdpMid": "0", "sdpMLineIndex": 0})
            .to_string()
        }
        SignalProtocol::PeerJs => json!({"type": "CANDIDATE", "dst": to,
            "payload": {"candidate": cand, "sdpMid": "0", "sdpMLineIndex": 0}})
        .to_string(),
    }
}

/// The bare relay's first frame: who this connection is and whose frames it exchanges.
pub fn ceiling_bind(me: &str, partner: &str) -> String {
    format!("bind {me} {partner}")
}

/// `bind <me> <partner>`: two non-empty names without spaces.
pub fn parse_ceiling_bind(text: &str) -> Option<(&str, &str)> {
    let mut words = text.strip_prefix("bind ")?.split(' ');
    let (me, partner) = (words.next()?, words.next()?);
    (words.next().is_none() && !me.is_empty() && !partner.is_empty()).then_some((me, partner))
}

/// The relay's answer to a bind: the greeting the load waits for.
pub fn ceiling_bound(me: &str) -> String {
    format!("bound {me}")
}

fn stamp(seq: u64, sent_ns: u64, size: usize) -> String {
    let mut s = format!("lt:{seq}:{sent_ns}:");
    if s.len() < size {
        s.extend(std::iter::repeat_n('x', size - s.len()));
    }
    s
}

fn parse_stamp(s: &str) -> Option<u64> {
    let mut parts = s.strip_prefix("lt:")?.split(':');
    let _seq = parts.next()?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_survives_padding_and_relay() {
        let c = candidate(SignalProtocol::Iceway, "V", 5, 123_456, 500);
        let relayed = c.replace("\"to\"", "\"from\"");
        let step = on_frame(SignalProtocol::Iceway, false, &relayed);
        assert_eq!(step.stamp_ns, Some(123_456));
        assert!(c.len() > 500);
        let p = candidate(SignalProtocol::PeerJs, "V", 1, 77, 300);
        assert_eq!(
            on_frame(SignalProtocol::PeerJs, false, &p).stamp_ns,
            Some(77)
        );
        assert_eq!(parse_stamp("candidate:1 1 udp"), None);
    }

    #[test]
    fn iceway_negotiation_runs_watch_offer_answer() {
        let joined = r#"{"type":"viewer-joined","viewer":"VS","user":"v1"}"#;
        let step = on_frame(SignalProtocol::Iceway, true, joined);
        assert_eq!(step.viewer.as_deref(), Some("VS"));
        let offer = step.reply.expect("camera offers");
        assert!(offer.contains(r#""to":"VS""#) && offer.contains(r#""type":"offer""#));
        let relayed = r#"{"type":"offer","from":"CS","sdp":"x"}"#;
        let answer = on_frame(SignalProtocol::Iceway, false, relayed).reply;
        assert!(answer.is_some_and(|a| a.contains(r#""to":"CS""#)));
        let done = on_frame(
            SignalProtocol::Iceway,
            true,
            r#"{"type":"answer","from":"VS"}"#,
        );
        assert!(done.negotiated);
        // The viewer seeing the answer is not the camera's negotiation.
        assert!(!on_frame(SignalProtocol::Iceway, false, r#"{"type":"answer"}"#).negotiated);
    }

    #[test]
    fn peerjs_negotiates_on_the_relayed_answer_at_the_viewer() {
        let offer = r#"{"type":"OFFER","src":"view-1","dst":"cam-1","payload":{}}"#;
        let step = on_frame(SignalProtocol::PeerJs, true, offer);
        assert!(!step.negotiated);
        assert_eq!(step.viewer.as_deref(), Some("view-1"));
        assert!(step.reply.is_some_and(|r| r.contains("ANSWER")));
        let answer = r#"{"type":"ANSWER","src":"cam-1","dst":"view-1","payload":{}}"#;
        assert!(on_frame(SignalProtocol::PeerJs, false, answer).negotiated);
    }

    #[test]
    fn ceiling_binds_then_negotiates_offer_answer_at_the_viewer() {
        let bind = ceiling_bind("cam-1", "view-1");
        assert_eq!(parse_ceiling_bind(&bind), Some(("cam-1", "view-1")));
        for bad in [
            "bind cam-1",
            "bind  view-1",
            "bind a b c",
            "bound a b",
            "bind a ",
        ] {
            assert_eq!(parse_ceiling_bind(bad), None, "{bad:?}");
        }
        let greeting = ceiling_bound("cam-1");
        assert_eq!(
            on_greeting(SignalProtocol::Ceiling, "cam-1", &greeting),
            Ok("cam-1".into())
        );
        assert!(on_greeting(SignalProtocol::Ceiling, "cam-2", &greeting).is_err());
        // Frames cross the relay unchanged: what the viewer sends is what the camera reads.
        let offer = start(SignalProtocol::Ceiling, "cam-1", "cam-1", "view-1");
        let step = on_frame(SignalProtocol::Ceiling, true, &offer);
        assert_eq!(step.viewer.as_deref(), Some("view-1"));
        let answer = step.reply.expect("camera answers");
        assert!(on_frame(SignalProtocol::Ceiling, false, &answer).negotiated);
        assert!(!on_frame(SignalProtocol::Ceiling, true, &answer).negotiated);
        let c = candidate(SignalProtocol::Ceiling, "view-1", 3, 99, 500);
        assert_eq!(
            on_frame(SignalProtocol::Ceiling, false, &c).stamp_ns,
            Some(99)
        );
        // The same bytes as Iceway's candidate: the relays are compared on equal frames.
        assert_eq!(c, candidate(SignalProtocol::Iceway, "view-1", 3, 99, 500));
        assert_eq!(
            on_frame(SignalProtocol::Ceiling, false, "error no-partner")
                .error
                .as_deref(),
            Some("no-partner")
        );
    }

    #[test]
    fn errors_are_counted_by_code() {
        let e = r#"{"type":"error","code":"rate-limited","message":"slow down"}"#;
        assert_eq!(
            on_frame(SignalProtocol::Iceway, true, e).error.as_deref(),
            Some("rate-limited")
        );
        assert_eq!(
            on_frame(SignalProtocol::Iceway, true, "not json")
                .error
                .as_deref(),
            Some("unparsable frame")
        );
        assert_eq!(
            on_greeting(
                SignalProtocol::Iceway,
                "x",
                r#"{"type":"error","code":"unauthorized"}"#
            ),
            Err("unauthorized".into())
        );
        assert_eq!(
            on_greeting(SignalProtocol::PeerJs, "cam-1", r#"{"type":"OPEN"}"#),
            Ok("cam-1".into())
        );
    }
}
