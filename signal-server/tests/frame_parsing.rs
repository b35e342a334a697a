//! Property tests: no input makes frame parsing panic, and every frame a client can write
//! parses back to itself.
#![allow(clippy::unwrap_used)]

use iceway_signal::protocol::{
    Candidate, ClientFrame, MAX_ID_LEN, RelayBody, ServerFrame, parse, parse_relay,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn id() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[A-Za-z0-9_:.-]{1,64}").unwrap()
}

fn text() -> impl Strategy<Value = String> {
    any::<String>()
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        text().prop_map(|token| ClientFrame::Auth {
            token,
            resume: None
        }),
        proptest::option::of(id()).prop_map(|camera| ClientFrame::Publish { camera }),
        id().prop_map(|camera| ClientFrame::Watch { camera }),
        (id(), text()).prop_map(|(to, sdp)| ClientFrame::Offer { to, sdp }),
        (id(), text()).prop_map(|(to, sdp)| ClientFrame::Answer { to, sdp }),
        (
            id(),
            text(),
            proptest::option::of(text()),
            proptest::option::of(any::<u16>()),
            proptest::option::of(text())
        )
            .prop_map(
                |(to, candidate, sdp_mid, idx, ufrag)| ClientFrame::Candidate {
                    to,
                    candidate: Candidate {
                        candidate,
                        sdp_mid,
                        sdp_m_line_index: idx,
                        username_fragment: ufrag,
                    },
                }
            ),
        proptest::option::of(id()).prop_map(|camera| ClientFrame::Leave { camera }),
        Just(ClientFrame::Ping),
    ]
}

/// JSON values shaped like frames: a known or random `type` and random fields.
fn frame_like() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let kind = prop_oneof![
        Just("auth"),
        Just("publish"),
        Just("watch"),
        Just("offer"),
        Just("answer"),
        Just("candidate"),
        Just("leave"),
        Just("ping"),
        Just("welcome"),
        Just(""),
    ];
    let field = prop_oneof![
        Just("to"),
        Just("sdp"),
        Just("camera"),
        Just("token"),
        Just("candidate"),
        Just("sdpMid"),
        Just("sdpMLineIndex"),
        Just("ref"),
        Just("type"),
    ];
    (kind, prop::collection::vec((field, value), 0..6)).prop_map(|(kind, fields)| {
        let mut obj = serde_json::Map::new();
        obj.insert("type".into(), kind.into());
        for (k, v) in fields {
            obj.insert(k.into(), v);
        }
        Value::Object(obj)
    })
}

/// The relay fast path may only accept what the full parse accepts, with the same `to` and
/// `ref`, and must render the same JSON value the full parse would relay.
fn fast_path_agrees(text: &str) -> Result<(), TestCaseError> {
    let Some(fast) = parse_relay(text) else {
        return Ok(());
    };
    let full = parse(text);
    prop_assert!(
        full.is_ok(),
        "fast path accepted what parse refuses: {text}"
    );
    let full = full.unwrap();
    prop_assert_eq!(&full.reference, &fast.reference);
    let (to, body) = match full.frame {
        ClientFrame::Offer { to, sdp } => (to, RelayBody::Offer { sdp }),
        ClientFrame::Answer { to, sdp } => (to, RelayBody::Answer { sdp }),
        ClientFrame::Candidate { to, candidate } => (to, RelayBody::Candidate { candidate }),
        other => return Err(TestCaseError::fail(format!("not a relay frame: {other:?}"))),
    };
    prop_assert_eq!(to.as_str(), fast.to);
    prop_assert_eq!(body.kind(), fast.kind);
    let want: Value = serde_json::from_str(&ServerFrame::relayed("S1", body).to_json()).unwrap();
    let got: Value = serde_json::from_str(&fast.render("S1")).unwrap();
    prop_assert_eq!(got, want);
    Ok(())
}

#[test]
fn relay_fast_path_handles_the_usual_and_leaves_the_odd_to_parse() {
    let cases = [
        (
            r#"{"type":"offer","to":"s1","sdp":"v=0\r\n","ref":3}"#,
            true,
        ),
        (
            r#"{"to":"s1","candidate":"c","type":"candidate","x":[1,{"a":2}]}"#,
            true,
        ),
        (
            r#"{"type":"candidate","to":"s1","candidate":"","sdpMid":null,"sdpMLineIndex":null}"#,
            true,
        ),
        (
            r#"{"type":"candidate","to":"s1","candidate":"c","usernameFragment":"u"}"#,
            true,
        ),
        (r#"{"type":"offer","to":"s\u0031","sdp":"v"}"#, false),
        (r#"{"type":"offer","to":"s1","sdp":null}"#, false),
        (r#"{"type":"offer","to":"s1","sdp":"a","sdp":"b"}"#, false),
        (
            r#"{"type":"candidate","to":"s1","candidate":"c","sdpMLineIndex":70000}"#,
            false,
        ),
        (r#"{"type":"answer","to":"s1","sdp":"v","ref":1.5}"#, false),
        (r#"{"type":"watch","camera":"c"}"#, false),
    ];
    for (text, fast) in cases {
        assert_eq!(parse_relay(text).is_some(), fast, "{text}");
        fast_path_agrees(text).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn relay_fast_path_agrees_with_parse_on_frame_like_json(v in frame_like()) {
        fast_path_agrees(&v.to_string())?;
    }

    #[test]
    fn relay_fast_path_agrees_with_parse_on_client_frames(frame in client_frame()) {
        let text = serde_json::to_string(&frame).unwrap();
        fast_path_agrees(&text)?;
        if matches!(frame, ClientFrame::Offer { .. } | ClientFrame::Answer { .. } | ClientFrame::Candidate { .. }) {
            prop_assert!(parse_relay(&text).is_some() || text.contains('\\'), "{text}");
        }
    }

    #[test]
    fn arbitrary_text_never_panics(s in any::<String>()) {
        if let Err(rejection) = parse(&s) {
            prop_assert!(!rejection.message.is_empty());
        }
    }

    #[test]
    fn arbitrary_bytes_as_lossy_text_never_panic(b in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn frame_like_json_never_panics_and_rejections_name_a_kind(v in frame_like()) {
        match parse(&v.to_string()) {
            Ok(parsed) => prop_assert_eq!(parsed.frame.kind(), v["type"].as_str().unwrap()),
            Err(rejection) => {
                prop_assert!(!rejection.kind.is_empty());
                let frame = rejection.to_frame();
                let encoded = serde_json::to_value(&frame).unwrap();
                prop_assert_eq!(encoded["code"].as_str(), Some("bad-message"));
            }
        }
    }

    #[test]
    fn every_client_frame_parses_back_to_itself(frame in client_frame()) {
        let text = serde_json::to_string(&frame).unwrap();
        let parsed = parse(&text).unwrap();
        prop_assert_eq!(parsed.frame, frame);
    }

    #[test]
    fn ids_over_the_limit_are_refused(extra in 1usize..64) {
        let camera = "c".repeat(MAX_ID_LEN + extra);
        let text = json!({"type":"watch","camera":camera}).to_string();
        prop_assert!(parse(&text).is_err());
    }
}
