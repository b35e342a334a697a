//! Durations in configuration, written as people write them (`30s`, `500ms`, `1h`) or as whole
//! seconds; use with `#[serde(with = "iceway_service::duration")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "{t:?} is not a duration like 30s, 500ms or 1h: {e}"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Serialize, Deserialize)]
    struct Holder {
        #[serde(with = "super")]
        d: Duration,
    }

    #[test]
    fn reads_text_and_seconds_and_round_trips() {
        let h: Holder = serde_json::from_str(r#"{"d":"1m 30s"}"#).expect("text");
        assert_eq!(h.d, Duration::from_secs(90));
        let h: Holder = serde_json::from_str(r#"{"d":45}"#).expect("seconds");
        assert_eq!(h.d, Duration::from_secs(45));
        let back: Holder =
            serde_json::from_str(&serde_json::to_string(&h).expect("ser")).expect("de");
        assert_eq!(back.d, h.d);
        let err = serde_json::from_str::<Holder>(r#"{"d":"soon"}"#).expect_err("bad");
        assert!(err.to_string().contains("not a duration"), "{err}");
    }
}
