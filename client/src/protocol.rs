//! Signaling frames of DESIGN §3 as the reference clients speak them: JSON text frames tagged by
//! `type`. Pure data, no I/O, so every rule is a unit test.

use serde::{Deserialize, Serialize};

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientFrame {
    Auth {
        token: String,
    },
    Publish,
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
        candidate: String,
        #[serde(rename = "sdpMid", skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
        #[serde(rename = "sdpMLineIndex", skip_serializing_if = "Option::is_none")]
        sdp_mline_index: Option<u16>,
    },
    Leave,
    Ping,
}

/// Server → client. Frames of a type this client does not know parse as `Unknown`, so a newer
/// server does not break an older client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerFrame {
    Welcome {
        session: String,
        #[serde(default)]
        role: Option<String>,
        /// `RTCConfiguration.iceServers`, or the whole `/v1/ice-servers` body.
        #[serde(rename = "iceServers", default)]
        ice_servers: serde_json::Value,
        /// Seconds between pings the server expects.
        #[serde(default)]
        heartbeat: Option<f64>,
        /// The secret to resume this session with after a dropped socket.
        #[serde(default)]
        resume: Option<String>,
        /// This is the session the client asked to resume: its peers and calls go on.
        #[serde(default)]
        resumed: bool,
    },
    CameraOnline {
        camera: String,
    },
    CameraOffline {
        camera: String,
    },
    ViewerJoined {
        viewer: String,
        #[serde(default)]
        user: Option<String>,
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
        candidate: String,
        #[serde(rename = "sdpMid", default)]
        sdp_mid: Option<String>,
        #[serde(rename = "sdpMLineIndex", default)]
        sdp_mline_index: Option<u16>,
    },
    Pong,
    /// The token expires at `exp`: send a fresh one as `auth` on this socket.
    TokenExpiring {
        exp: u64,
    },
    /// A fresh token was accepted.
    TokenRefreshed {
        exp: u64,
    },
    Error {
        code: String,
        #[serde(default)]
        message: Option<String>,
        #[serde(rename = "ref", default)]
        reference: Option<serde_json::Value>,
    },
    #[serde(other)]
    Unknown,
}

/// One ICE server as in `RTCConfiguration.iceServers` (`urls` may be a string or a list).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct IceServer {
    #[serde(deserialize_with = "one_or_many")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// ICE servers from a welcome frame's `iceServers`: a list, or an object holding one under
/// `iceServers` (the `/v1/ice-servers` body).
pub fn ice_servers_of(value: &serde_json::Value) -> Result<Vec<IceServer>, serde_json::Error> {
    let list = match value {
        serde_json::Value::Null => return Ok(Vec::new()),
        serde_json::Value::Object(map) => map
            .get("iceServers")
            .cloned()
            .unwrap_or(serde_json::Value::Array(Vec::new())),
        other => other.clone(),
    };
    serde_json::from_value(list)
}

impl ServerFrame {
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

impl ClientFrame {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client frames always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_frames_use_design_names() {
        let f = ClientFrame::Candidate {
            to: "s1".into(),
            candidate: "candidate:1 1 udp 1 1.2.3.4 5 typ relay".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        };
        let v: serde_json::Value = serde_json::from_str(&f.to_json()).expect("json");
        assert_eq!(
            v,
            json!({"type":"candidate","to":"s1","candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ relay","sdpMid":"0","sdpMLineIndex":0})
        );
        assert_eq!(
            ClientFrame::Watch {
                camera: "cam1".into()
            }
            .to_json(),
            r#"{"type":"watch","camera":"cam1"}"#
        );
        assert_eq!(ClientFrame::Publish.to_json(), r#"{"type":"publish"}"#);
    }

    #[test]
    fn server_frames_parse_including_kebab_case_types() {
        let f = ServerFrame::parse(r#"{"type":"viewer-joined","viewer":"v1","user":"alice"}"#)
            .expect("parse");
        assert_eq!(
            f,
            ServerFrame::ViewerJoined {
                viewer: "v1".into(),
                user: Some("alice".into())
            }
        );
        let f = ServerFrame::parse(r#"{"type":"camera-offline","camera":"cam1"}"#).expect("parse");
        assert_eq!(
            f,
            ServerFrame::CameraOffline {
                camera: "cam1".into()
            }
        );
        let f = ServerFrame::parse(
            r#"{"type":"error","code":"forbidden","message":"not in cams","ref":"watch"}"#,
        )
        .expect("parse");
        assert!(matches!(f, ServerFrame::Error { ref code, .. } if code == "forbidden"));
    }

    #[test]
    fn unknown_types_do_not_fail() {
        let f = ServerFrame::parse(r#"{"type":"something-new","x":1}"#).expect("parse");
        assert_eq!(f, ServerFrame::Unknown);
    }

    #[test]
    fn welcome_ice_servers_accept_both_shapes() {
        let list = json!([{"urls":"stun:h:3478"},{"urls":["turn:h:3478?transport=udp"],"username":"u","credential":"p"}]);
        let servers = ice_servers_of(&list).expect("list");
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].urls, vec!["stun:h:3478"]);
        assert_eq!(servers[1].username.as_deref(), Some("u"));
        let wrapped = json!({"iceServers": list, "ttl": 3600, "expiresAt": "2030-01-01T00:00:00Z"});
        assert_eq!(ice_servers_of(&wrapped).expect("wrapped"), servers);
        assert!(
            ice_servers_of(&serde_json::Value::Null)
                .expect("null")
                .is_empty()
        );
    }
}
