//! RTSP in: one camera's session with retina (DESCRIBE, SETUP, PLAY, interleaved TCP or UDP,
//! digest auth), its H.264 access units (Annex B, SPS/PPS before each IDR: retina's
//! `FrameFormat::SIMPLE`) and G.711 audio pushed into the camera's [`Feed`]. Reconnects with
//! backoff; every request and the frame stream have a deadline. Nothing is decoded.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use retina::client::{
    Credentials, PlayOptions, SessionOptions, SetupOptions, TcpTransportOptions, Transport,
    UdpTransportOptions,
};
use retina::codec::{CodecItem, FrameFormat};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{self, BridgeConfig, CameraConfig};
use crate::feed::{Audio, Feed, Media, Unit};
use crate::metrics::Metrics;

/// One camera as the RTSP side needs it: the URL without credentials (what logs show).
#[derive(Clone)]
pub struct Source {
    pub id: String,
    url: url::Url,
    creds: Option<Credentials>,
    transport: config::Transport,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("id", &self.id)
            .field("url", &self.url.as_str())
            .field("creds", &self.creds.as_ref().map(|c| &c.username))
            .finish()
    }
}

impl Source {
    /// Credentials come from `credentials_file` (`USER:PASSWORD`), else from the URL, which is
    /// then kept without them.
    pub fn from_config(cam: &CameraConfig) -> anyhow::Result<Self> {
        let mut url =
            url::Url::parse(&cam.url).with_context(|| format!("camera {}: bad URL", cam.id))?;
        let from_url = (!url.username().is_empty()).then(|| Credentials {
            username: percent_decode(url.username()),
            password: percent_decode(url.password().unwrap_or("")),
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let creds = match &cam.credentials_file {
            Some(path) => {
                let line = iceway_service::read_secret(path).with_context(|| {
                    format!("camera {}: credentials_file {}", cam.id, path.display())
                })?;
                let (user, pass) = line.split_once(':').with_context(|| {
                    format!(
                        "camera {}: {} must hold USER:PASSWORD",
                        cam.id,
                        path.display()
                    )
                })?;
                Some(Credentials {
                    username: user.to_owned(),
                    password: pass.to_owned(),
                })
            }
            None => from_url,
        };
        Ok(Self {
            id: cam.id.clone(),
            url,
            creds,
            transport: cam.transport,
        })
    }

    pub fn url(&self) -> &str {
        self.url.as_str()
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// How one RTSP session ended (the `reason` of `iceway_bridge_rtsp_reconnects_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The camera closed the stream or the connection.
    Ended,
    /// A request failed or the stream broke.
    Error,
    /// No answer or no frame within the deadline.
    Timeout,
    /// The camera refused the credentials.
    Auth,
}

impl Ended {
    pub const ALL: [Ended; 4] = [Ended::Ended, Ended::Error, Ended::Timeout, Ended::Auth];

    pub fn label(self) -> &'static str {
        match self {
            Ended::Ended => "ended",
            Ended::Error => "error",
            Ended::Timeout => "timeout",
            Ended::Auth => "auth",
        }
    }
}

/// The delay before the next attempt: `auth_retry` after refused credentials, else doubling
/// from `reconnect_min` to `reconnect_max` with failures in a row; with up to a quarter of
/// jitter, so cameras behind one recorder do not reconnect in step.
pub fn backoff(cfg: &BridgeConfig, ended: Ended, failures: u32, jitter: f64) -> Duration {
    let base = match ended {
        Ended::Auth => cfg.auth_retry,
        _ => cfg
            .reconnect_min
            .saturating_mul(1u32 << failures.min(16))
            .min(cfg.reconnect_max),
    };
    base.mul_f64(1.0 + 0.25 * jitter.clamp(0.0, 1.0))
}

/// Runs the camera until `stop`: each session pushes its media into `feed` and holds `up` true
/// while frames flow.
pub async fn run(
    source: Source,
    cfg: Arc<BridgeConfig>,
    feed: Arc<Feed>,
    up: watch::Sender<bool>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            r = session(&source, &cfg, &feed, &up, &metrics) => r,
            () = stop.cancelled() => return,
        };
        let was_up = *up.borrow();
        up.send_replace(false);
        feed.reset();
        let (ended, why) = result;
        metrics.reconnect(ended);
        if was_up {
            failures = 0;
        } else {
            failures = failures.saturating_add(1);
        }
        let delay = backoff(&cfg, ended, failures, rand::random::<f64>());
        match ended {
            Ended::Auth => tracing::error!(
                camera = %source.id, url = %source.url(), error = %why, retry_in = ?delay,
                "the camera refused the credentials; check its credentials_file"
            ),
            _ => tracing::warn!(
                camera = %source.id, url = %source.url(), reason = ended.label(), error = %why,
                retry_in = ?delay, "RTSP stream down; reconnecting"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One RTSP session from DESCRIBE until it ends, and why it did.
async fn session(
    source: &Source,
    cfg: &BridgeConfig,
    feed: &Feed,
    up: &watch::Sender<bool>,
    metrics: &Metrics,
) -> (Ended, String) {
    let deadline = cfg.rtsp_timeout;
    let options = SessionOptions::default()
        .creds(source.creds.clone())
        .user_agent(format!("iceway-bridge/{}", env!("CARGO_PKG_VERSION")));
    let mut described = match timed(
        deadline,
        "DESCRIBE",
        retina::client::Session::describe(source.url.clone(), options),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return classify("DESCRIBE", &e),
        Err(e) => return e,
    };
    let Some(video) = described
        .streams()
        .iter()
        .position(|s| s.media() == "video" && s.encoding_name().eq_ignore_ascii_case("h264"))
    else {
        let found: Vec<String> = described
            .streams()
            .iter()
            .map(|s| format!("{}/{}", s.media(), s.encoding_name()))
            .collect();
        return (
            Ended::Error,
            format!("no H.264 video stream (the camera offers {found:?}; set it to H.264)"),
        );
    };
    // G.711 passes through to WebRTC as it is; AAC would need transcoding, so it is skipped.
    let audio = described
        .streams()
        .iter()
        .position(|s| s.media() == "audio" && matches!(s.encoding_name(), "pcmu" | "pcma"));
    feed.set_audio(audio.map(|i| {
        if described.streams()[i].encoding_name() == "pcma" {
            Audio::Pcma
        } else {
            Audio::Pcmu
        }
    }));
    let transport = match source.transport {
        config::Transport::Tcp => Transport::Tcp(TcpTransportOptions::default()),
        config::Transport::Udp => Transport::Udp(UdpTransportOptions::default()),
    };
    for i in std::iter::once(video).chain(audio) {
        let setup = SetupOptions::default()
            .transport(transport.clone())
            .frame_format(FrameFormat::SIMPLE);
        match timed(deadline, "SETUP", described.setup(i, setup)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return classify("SETUP", &e),
            Err(e) => return e,
        }
    }
    let playing = match timed(deadline, "PLAY", described.play(PlayOptions::default())).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return classify("PLAY", &e),
        Err(e) => return e,
    };
    let mut demuxed = match playing.demuxed() {
        Ok(d) => d,
        Err(e) => return classify("PLAY", &e),
    };
    let mut last_video: Option<i64> = None;
    let mut last_video_duration = Duration::from_millis(33);
    loop {
        let item = match tokio::time::timeout(cfg.frame_timeout, demuxed.next()).await {
            Err(_) => {
                return (
                    Ended::Timeout,
                    format!("no frame for {:?}", cfg.frame_timeout),
                );
            }
            Ok(None) => return (Ended::Ended, "the camera ended the stream".into()),
            Ok(Some(Err(e))) => return classify("stream", &e),
            Ok(Some(Ok(item))) => item,
        };
        match item {
            CodecItem::VideoFrame(frame) => {
                let ts = frame.timestamp();
                // The gap since the previous frame stands for this one's duration: the next
                // frame's time is not known yet, and cameras send at a steady rate.
                if let Some(prev) = last_video {
                    let ticks = ts.elapsed() - prev;
                    if ticks > 0 && ticks < 90_000 * 5 {
                        last_video_duration =
                            Duration::from_secs_f64(ticks as f64 / f64::from(clock(&ts)));
                    }
                }
                last_video = Some(ts.elapsed());
                let keyframe = frame.is_random_access_point();
                if !*up.borrow() {
                    if !keyframe {
                        continue;
                    }
                    tracing::info!(camera = %source.id, url = %source.url(), "RTSP stream up");
                    up.send_replace(true);
                }
                let unit = Unit {
                    data: Bytes::from(frame.into_data()),
                    keyframe,
                    duration: last_video_duration,
                };
                metrics.received("video", unit.data.len());
                feed.push(Media::Video(Arc::new(unit)));
            }
            CodecItem::AudioFrame(frame) => {
                let samples = frame.frame_length().get();
                let rate = clock(&frame.timestamp());
                let unit = Unit {
                    data: Bytes::copy_from_slice(frame.data()),
                    keyframe: false,
                    duration: Duration::from_secs_f64(f64::from(samples) / f64::from(rate)),
                };
                metrics.received("audio", unit.data.len());
                feed.push(Media::Audio(Arc::new(unit)));
            }
            _ => {}
        }
    }
}

fn clock(ts: &retina::Timestamp) -> u32 {
    NonZeroU32::get(ts.clock_rate())
}

async fn timed<T>(
    deadline: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, (Ended, String)> {
    tokio::time::timeout(deadline, fut).await.map_err(|_| {
        (
            Ended::Timeout,
            format!("{what}: no answer within {deadline:?}"),
        )
    })
}

/// retina's errors are not typed by cause; a 401 is recognised by its status line.
fn classify(what: &str, e: &retina::Error) -> (Ended, String) {
    let text = e.to_string();
    let ended = if text.contains("401") || text.contains("Unauthorized") {
        Ended::Auth
    } else {
        Ended::Error
    };
    (ended, format!("{what}: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BridgeConfig {
        BridgeConfig::default()
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_waits_long_after_refused_credentials() {
        let c = cfg();
        assert_eq!(backoff(&c, Ended::Error, 0, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(&c, Ended::Timeout, 3, 0.0), Duration::from_secs(8));
        assert_eq!(backoff(&c, Ended::Ended, 30, 0.0), Duration::from_secs(30));
        assert_eq!(backoff(&c, Ended::Auth, 0, 0.0), Duration::from_secs(60));
        let jittered = backoff(&c, Ended::Error, 0, 1.0);
        assert_eq!(jittered, Duration::from_millis(1250));
    }

    #[test]
    fn credentials_leave_the_url_and_the_file_wins() {
        let cam = CameraConfig {
            id: "porch".into(),
            url: "rtsp://admin:p%40ss@10.0.0.5:554/stream1".into(),
            credentials_file: None,
            transport: config::Transport::Tcp,
            token_file: None,
        };
        let s = Source::from_config(&cam).expect("source");
        assert_eq!(s.url(), "rtsp://10.0.0.5:554/stream1");
        let creds = s.creds.as_ref().expect("creds");
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("admin", "p@ss")
        );
        assert!(!format!("{s:?}").contains("p@ss"));

        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("creds");
        std::fs::write(&file, "viewer:s3cret:with:colons\n").expect("write");
        let s = Source::from_config(&CameraConfig {
            credentials_file: Some(file),
            ..cam
        })
        .expect("source");
        let creds = s.creds.as_ref().expect("creds");
        assert_eq!(creds.username, "viewer");
        assert_eq!(creds.password, "s3cret:with:colons");
    }
}
