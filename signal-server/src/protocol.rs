//! The signaling protocol of DESIGN §3: JSON text frames tagged by `type`. Parsing never panics
//! and every refusal names an [`ErrorCode`], so the connection can answer with an `error` frame
//! and live on.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use iceway_auth::{IceServer, Role};

/// Close codes the server uses (RFC 6455 §7.4.2 private range, plus 1001 for drains).
pub mod close {
    /// From a client: it closes this socket to reconnect (a probe after a network change found
    /// it dead). The session stays resumable, as when a socket drops without a word.
    pub const RECONNECTING: u16 = 4000;
    /// Missing, invalid or expired token.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The token is valid but does not allow what the connection tried.
    pub const FORBIDDEN: u16 = 4003;
    /// Sustained abuse: flooding, too many connections, idle, too slow to read.
    pub const POLICY: u16 = 4008;
    /// A frame over the size limit.
    pub const TOO_LARGE: u16 = 4009;
    /// The camera was published by a newer connection with the same token; do not reconnect.
    pub const REPLACED: u16 = 4010;
    /// The session was resumed on another socket; this one is stale (do not reconnect on it).
    pub const RESUMED_ELSEWHERE: u16 = 4011;
    /// The server is draining; reconnect (to another replica).
    pub const GOING_AWAY: u16 = 1001;
}

/// Longest `ref` echoed back in errors; a client must not make us reflect megabytes.
pub const MAX_REF_LEN: usize = 64;
/// Longest camera or session id accepted in a frame.
pub const MAX_ID_LEN: usize = 256;

/// A frame from a camera or viewer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientFrame {
    /// Browser authentication: the first frame, within the auth timeout. Later on an open
    /// socket: a fresh token (after `token-expiring`) for the same `sub` and `role`.
    Auth {
        token: String,
        /// At connect: take over this detached session instead of starting a new one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
    },
    /// A camera goes online under its own `sub`; `camera`, if given, must equal it.
    Publish {
        #[serde(default)]
        camera: Option<String>,
    },
    /// A viewer asks to watch a camera listed in its token's `cams`.
    Watch {
        camera: String,
    },
    Offer {
        to: String,
        sdp: String,
    },
    Answer {
        to: String,
        sdp: String,
    },
    Candidate {
        to: String,
        #[serde(flatten)]
        candidate: Candidate,
    },
    /// Camera: go offline (viewers are told). Viewer: stop watching `camera`, or every camera.
    Leave {
        #[serde(default)]
        camera: Option<String>,
    },
    Ping,
}

impl ClientFrame {
    /// The `type` of the frame, as a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Auth { .. } => "auth",
            ClientFrame::Publish { .. } => "publish",
            ClientFrame::Watch { .. } => "watch",
            ClientFrame::Offer { .. } => "offer",
            ClientFrame::Answer { .. } => "answer",
            ClientFrame::Candidate { .. } => "candidate",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::Ping => "ping",
        }
    }
}

/// What a client reconnecting within the resume grace presents: the session it had and the
/// `resume` secret its `welcome` carried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub session: String,
    pub token: String,
}

/// An ICE candidate as `RTCIceCandidateInit` carries it; relayed unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Empty string: end of candidates.
    pub candidate: String,
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_m_line_index: Option<u16>,
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// A relayed frame's body: what the sender wrote, without its `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum RelayBody {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        #[serde(flatten)]
        candidate: Candidate,
    },
}

impl RelayBody {
    pub fn kind(&self) -> &'static str {
        match self {
            RelayBody::Offer { .. } => "offer",
            RelayBody::Answer { .. } => "answer",
            RelayBody::Candidate { .. } => "candidate",
        }
    }
}

/// The `ref` a client may put on any frame; errors caused by the frame echo it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ref {
    Number(i64),
    Text(String),
}

/// Error codes of DESIGN §3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    NotFound,
    PeerGone,
    BadMessage,
    TooLarge,
    RateLimited,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not-found",
            ErrorCode::PeerGone => "peer-gone",
            ErrorCode::BadMessage => "bad-message",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A frame to a camera or viewer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerFrame {
    Welcome {
        session: String,
        role: Role,
        #[serde(rename = "iceServers")]
        ice_servers: Vec<IceServer>,
        /// Seconds between the client's `ping`s.
        heartbeat: u64,
        /// The secret to resume this session with after a reconnect, within `resumeGrace`
        /// seconds; absent when resume is off.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
        #[serde(
            rename = "resumeGrace",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        resume_grace: Option<u64>,
        /// This is the session asked for: peers kept it, and frames sent to it meanwhile follow.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resumed: bool,
    },
    /// `session` is the camera's session, the `to` of a viewer's frames to it.
    CameraOnline {
        camera: String,
        session: String,
    },
    CameraOffline {
        camera: String,
    },
    ViewerJoined {
        viewer: String,
        user: String,
    },
    PeerLeft {
        peer: String,
    },
    Offer {
        from: String,
        sdp: String,
    },
    Answer {
        from: String,
        sdp: String,
    },
    Candidate {
        from: String,
        #[serde(flatten)]
        candidate: Candidate,
    },
    Pong,
    /// The app token expires at `exp` (Unix seconds): send a fresh one as an `auth` frame on
    /// this socket before then, or it is closed 4001.
    TokenExpiring {
        exp: u64,
    },
    /// The fresh token was accepted; it expires at `exp`. New TURN credentials come with it.
    TokenRefreshed {
        exp: u64,
        #[serde(rename = "iceServers")]
        ice_servers: Vec<IceServer>,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(rename = "ref")]
        reference: Option<Ref>,
        /// `peer-gone` only: the session that is gone, so a client with several peers knows
        /// which peer connection to drop.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
    },
}

impl ServerFrame {
    pub fn relayed(from: &str, body: RelayBody) -> Self {
        let from = from.to_owned();
        match body {
            RelayBody::Offer { sdp } => ServerFrame::Offer { from, sdp },
            RelayBody::Answer { sdp } => ServerFrame::Answer { from, sdp },
            RelayBody::Candidate { candidate } => ServerFrame::Candidate { from, candidate },
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>, reference: Option<Ref>) -> Self {
        ServerFrame::Error {
            code,
            message: message.into(),
            reference,
            peer: None,
        }
    }

    /// `peer-gone` for a frame to session `peer`.
    pub fn peer_gone(peer: &str, reference: Option<Ref>) -> Self {
        ServerFrame::Error {
            code: ErrorCode::PeerGone,
            message: format!("{peer} is gone"),
            reference,
            peer: Some(peer.to_owned()),
        }
    }

    /// JSON text. Serializing these types cannot fail (string keys, no maps of non-strings),
    /// but an `internal` error frame is still the answer if it ever did.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"encoding failed","ref":null}"#
                .to_owned()
        })
    }
}

/// A parsed client frame with the `ref` it carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub frame: ClientFrame,
    pub reference: Option<Ref>,
}

/// Why a text frame was refused: the `error` frame to send back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub message: String,
    /// The client's `ref`, or failing that the frame's `type`, when they could be read.
    pub reference: Option<Ref>,
    /// Metrics label: the frame's `type` if known, else `malformed`.
    pub kind: &'static str,
}

impl Rejection {
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::error(
            ErrorCode::BadMessage,
            self.message.clone(),
            self.reference.clone(),
        )
    }
}

#[derive(Deserialize)]
struct WithRef {
    #[serde(flatten)]
    frame: ClientFrame,
    #[serde(rename = "ref", default)]
    reference: Option<Ref>,
}

/// Lenient second look at a refused frame, only to say what it was in the error.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "type", default)]
    kind: Option<serde_json::Value>,
    #[serde(rename = "ref", default)]
    reference: Option<serde_json::Value>,
}

const KNOWN_TYPES: [&str; 8] = [
    "auth",
    "publish",
    "watch",
    "offer",
    "answer",
    "candidate",
    "leave",
    "ping",
];

/// An `offer`, `answer` or `candidate` read on the relay fast path: only the envelope is
/// decoded, and the peer gets the sender's own JSON text of the known fields, so the relay
/// neither builds owned strings nor re-escapes an SDP of kilobytes.
#[derive(Debug)]
pub struct RelayFrame<'a> {
    pub kind: &'static str,
    pub to: &'a str,
    pub reference: Option<Ref>,
    fields: RelayFields<'a>,
}

/// The raw fields of a relayed frame, as borrowed from the client's text.
#[derive(Debug, Default, Deserialize)]
struct RelayFields<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    to: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow, default)]
    reference: Option<&'a RawValue>,
    #[serde(borrow, default)]
    sdp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    candidate: Option<&'a RawValue>,
    #[serde(rename = "sdpMid", borrow, default)]
    sdp_mid: Option<&'a RawValue>,
    #[serde(rename = "sdpMLineIndex", borrow, default)]
    sdp_m_line_index: Option<&'a RawValue>,
    #[serde(rename = "usernameFragment", borrow, default)]
    username_fragment: Option<&'a RawValue>,
}

/// The content of a JSON string literal without escapes, borrowed; `None` for anything else
/// (which then takes the full parse).
fn plain_str(raw: &RawValue) -> Option<&str> {
    let inner = raw.get().strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

fn is_str(raw: &RawValue) -> bool {
    raw.get().starts_with('"')
}

/// Reads a relayed frame on the fast path. `None` means "not a well-formed relay frame, or
/// not one this path is sure of": the caller then uses [`parse`], which accepts everything
/// this accepts (with the same meaning) and explains every refusal.
pub fn parse_relay(text: &str) -> Option<RelayFrame<'_>> {
    let fields: RelayFields<'_> = serde_json::from_str(text).ok()?;
    let kind = match fields.kind?.get() {
        r#""offer""# => "offer",
        r#""answer""# => "answer",
        r#""candidate""# => "candidate",
        _ => return None,
    };
    let to = plain_str(fields.to?)?;
    if to.len() > MAX_ID_LEN {
        return None;
    }
    let reference = match fields.reference {
        None => None,
        Some(raw) => Some(serde_json::from_str::<Ref>(raw.get()).ok()?),
    }
    .filter(ref_ok);
    let optional_str = |f: Option<&RawValue>| f.is_none_or(is_str);
    let valid = if kind == "candidate" {
        fields.candidate.is_some_and(is_str)
            && optional_str(fields.sdp_mid)
            && optional_str(fields.username_fragment)
            && fields
                .sdp_m_line_index
                .is_none_or(|raw| serde_json::from_str::<u16>(raw.get()).is_ok())
    } else {
        fields.sdp.is_some_and(is_str)
    };
    valid.then_some(RelayFrame {
        kind,
        to,
        reference,
        fields,
    })
}

impl RelayFrame<'_> {
    /// The frame the peer gets: the sender's fields, `from` instead of `to`, no `ref`. The
    /// same JSON value as [`ServerFrame::relayed`] of the fully parsed frame.
    pub fn render(&self, from: &str) -> String {
        let f = &self.fields;
        let raw = |r: Option<&RawValue>| r.map_or(0, |r| r.get().len());
        let mut out = String::with_capacity(
            64 + from.len()
                + raw(f.sdp)
                + raw(f.candidate)
                + raw(f.sdp_mid)
                + raw(f.sdp_m_line_index)
                + raw(f.username_fragment),
        );
        out.push_str(r#"{"type":""#);
        out.push_str(self.kind);
        out.push_str(r#"","from":"#);
        push_json_str(&mut out, from);
        let mut field = |name: &str, value: Option<&RawValue>| {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            out.push_str(value.map_or("null", RawValue::get));
        };
        if self.kind == "candidate" {
            field("candidate", f.candidate);
            field("sdpMid", f.sdp_mid);
            field("sdpMLineIndex", f.sdp_m_line_index);
            if f.username_fragment.is_some() {
                field("usernameFragment", f.username_fragment);
            }
        } else {
            field("sdp", f.sdp);
        }
        out.push('}');
        out
    }
}

fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::from(s).to_string());
    }
}

/// Parses one text frame. Ids are length-checked here so every later layer can trust them.
pub fn parse(text: &str) -> Result<Parsed, Rejection> {
    match serde_json::from_str::<WithRef>(text) {
        Ok(WithRef { frame, reference }) => {
            let reference = reference.filter(ref_ok);
            if let Some(field) = oversized_id(&frame) {
                return Err(Rejection {
                    message: format!("`{field}` is longer than {MAX_ID_LEN} bytes"),
                    reference: reference.or_else(|| Some(Ref::Text(frame.kind().to_owned()))),
                    kind: frame.kind(),
                });
            }
            Ok(Parsed { frame, reference })
        }
        Err(err) => Err(explain(text, &err)),
    }
}

fn ref_ok(r: &Ref) -> bool {
    match r {
        Ref::Number(_) => true,
        Ref::Text(s) => s.len() <= MAX_REF_LEN,
    }
}

fn oversized_id(frame: &ClientFrame) -> Option<&'static str> {
    let too_long = |s: &str| s.len() > MAX_ID_LEN;
    match frame {
        ClientFrame::Publish { camera: Some(c) } | ClientFrame::Leave { camera: Some(c) }
            if too_long(c) =>
        {
            Some("camera")
        }
        ClientFrame::Watch { camera } if too_long(camera) => Some("camera"),
        ClientFrame::Offer { to, .. }
        | ClientFrame::Answer { to, .. }
        | ClientFrame::Candidate { to, .. }
            if too_long(to) =>
        {
            Some("to")
        }
        _ => None,
    }
}

fn explain(text: &str, err: &serde_json::Error) -> Rejection {
    let probe = serde_json::from_str::<Probe>(text).ok();
    let kind_text = probe
        .as_ref()
        .and_then(|p| p.kind.as_ref())
        .and_then(|k| k.as_str())
        .map(str::to_owned);
    let known = kind_text
        .as_deref()
        .and_then(|k| KNOWN_TYPES.iter().copied().find(|t| *t == k));
    let client_ref = probe
        .as_ref()
        .and_then(|p| p.reference.clone())
        .and_then(|v| serde_json::from_value::<Ref>(v).ok())
        .filter(ref_ok);
    let message = match (&probe, &kind_text, known) {
        (None, _, _) => format!("not a JSON object: {}", short(err)),
        (Some(_), None, _) => "frame has no string `type`".to_owned(),
        (Some(_), Some(k), None) => format!("unknown type {:?}", truncate(k, MAX_REF_LEN)),
        (Some(_), Some(_), Some(k)) => format!("invalid `{k}` frame: {}", short(err)),
    };
    Rejection {
        message,
        reference: client_ref.or_else(|| known.map(|k| Ref::Text(k.to_owned()))),
        kind: known.unwrap_or(if kind_text.is_some() {
            "unknown"
        } else {
            "malformed"
        }),
    }
}

/// serde_json's message without the echo of arbitrary client input beyond a short prefix.
fn short(err: &serde_json::Error) -> String {
    truncate(&err.to_string(), 160).to_owned()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_client_frame() {
        let cases = [
            (
                json!({"type":"auth","token":"t"}),
                ClientFrame::Auth {
                    token: "t".into(),
                    resume: None,
                },
            ),
            (
                json!({"type":"publish"}),
                ClientFrame::Publish { camera: None },
            ),
            (
                json!({"type":"watch","camera":"cam1"}),
                ClientFrame::Watch {
                    camera: "cam1".into(),
                },
            ),
            (
                json!({"type":"offer","to":"s1","sdp":"v=0"}),
                ClientFrame::Offer {
                    to: "s1".into(),
                    sdp: "v=0".into(),
                },
            ),
            (
                json!({"type":"candidate","to":"s1","candidate":"candidate:1","sdpMid":"0","sdpMLineIndex":0}),
                ClientFrame::Candidate {
                    to: "s1".into(),
                    candidate: Candidate {
                        candidate: "candidate:1".into(),
                        sdp_mid: Some("0".into()),
                        sdp_m_line_index: Some(0),
                        username_fragment: None,
                    },
                },
            ),
            (json!({"type":"leave"}), ClientFrame::Leave { camera: None }),
            (json!({"type":"ping"}), ClientFrame::Ping),
        ];
        for (text, want) in cases {
            let parsed = parse(&text.to_string()).expect("valid frame");
            assert_eq!(parsed.frame, want, "{text}");
        }
    }

    #[test]
    fn ref_is_kept_and_echoed_on_errors() {
        let ok = parse(r#"{"type":"ping","ref":7}"#).expect("valid");
        assert_eq!(ok.reference, Some(Ref::Number(7)));
        let bad = parse(r#"{"type":"watch","ref":"w1"}"#).expect_err("no camera");
        assert_eq!(bad.reference, Some(Ref::Text("w1".into())));
        assert_eq!(bad.kind, "watch");
        let bad = parse(r#"{"type":"watch"}"#).expect_err("no camera");
        assert_eq!(bad.reference, Some(Ref::Text("watch".into())));
    }

    #[test]
    fn malformed_unknown_and_untyped_frames_are_rejected_with_reasons() {
        let e = parse("{not json").expect_err("malformed");
        assert_eq!(e.kind, "malformed");
        assert!(e.message.starts_with("not a JSON object"), "{}", e.message);
        let e = parse(r#"{"type":"dance"}"#).expect_err("unknown");
        assert_eq!(e.kind, "unknown");
        assert!(e.message.contains("dance"));
        let e = parse(r#"{"camera":"x"}"#).expect_err("untyped");
        assert_eq!(e.kind, "malformed");
        let e = parse(r#"[1,2]"#).expect_err("array");
        assert_eq!(e.kind, "malformed");
        let e = parse(r#"{"type":5}"#).expect_err("numeric type");
        assert_eq!(e.kind, "malformed");
    }

    #[test]
    fn long_ids_and_refs_are_refused() {
        let long = "x".repeat(MAX_ID_LEN + 1);
        let e = parse(&json!({"type":"watch","camera":long}).to_string()).expect_err("long id");
        assert!(e.message.contains("camera"));
        let ok = parse(&json!({"type":"ping","ref":"r".repeat(MAX_REF_LEN + 1)}).to_string())
            .expect("long ref is dropped, not fatal");
        assert_eq!(ok.reference, None);
    }

    #[test]
    fn server_frames_have_the_documented_shape() {
        let f = ServerFrame::relayed(
            "s9",
            RelayBody::Candidate {
                candidate: Candidate {
                    candidate: "c".into(),
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                    username_fragment: None,
                },
            },
        );
        let v: serde_json::Value = serde_json::from_str(&f.to_json()).expect("json");
        assert_eq!(
            v,
            json!({"type":"candidate","from":"s9","candidate":"c","sdpMid":"0","sdpMLineIndex":0})
        );
        let e = ServerFrame::error(ErrorCode::PeerGone, "gone", None);
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).expect("json");
        assert_eq!(
            v,
            json!({"type":"error","code":"peer-gone","message":"gone","ref":null})
        );
        let w = ServerFrame::Welcome {
            session: "s".into(),
            role: Role::Viewer,
            ice_servers: vec![],
            heartbeat: 25,
            resume: None,
            resume_grace: None,
            resumed: false,
        };
        let v: serde_json::Value = serde_json::from_str(&w.to_json()).expect("json");
        assert_eq!(
            v,
            json!({"type":"welcome","session":"s","role":"viewer","iceServers":[],"heartbeat":25})
        );
    }
}
