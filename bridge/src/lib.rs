//! iceway-bridge: RTSP IP cameras published as Iceway WebRTC cameras. Per camera, an RTSP
//! session ([`rtsp`]) feeds the access units into a GOP cache and live broadcast ([`feed`]); a
//! camera session on signaling ([`publisher`]) is published while the stream is up and gives
//! each viewer its own peer connection ([`viewer`]). H.264 and G.711 pass through untouched.

pub mod config;
pub mod feed;
pub mod metrics;
pub mod publisher;
pub mod rtsp;
pub mod viewer;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use iceway_service::Shutdown;
use prometheus::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::{BridgeConfig, CameraConfig, Cli, Config};

use crate::feed::Feed;
use crate::metrics::Metrics;
use crate::publisher::{CameraToken, Publisher};
use crate::rtsp::Source;

/// A configured bridge: every camera's source and token ready, nothing connected yet.
pub struct Bridge {
    cfg: Arc<BridgeConfig>,
    cameras: Vec<(Source, CameraToken)>,
    metrics: Metrics,
    drain: Duration,
}

impl Bridge {
    /// Reads the credentials and key files and registers the metrics; fails on any that is
    /// unusable, naming it.
    pub async fn bind(config: &Config, registry: &Registry) -> anyhow::Result<Self> {
        let metrics = Metrics::new(registry).context("registering the bridge metrics")?;
        let secret = match &config.jwt.secret_file {
            Some(path) => Some(Arc::new(
                iceway_service::read_secret(path)
                    .with_context(|| format!("jwt.secret_file {}", path.display()))?
                    .into_bytes(),
            )),
            None => None,
        };
        let mut cameras = Vec::new();
        for cam in &config.bridge.cameras {
            let source = Source::from_config(cam)?;
            let token = match (&cam.token_file, &secret) {
                (Some(path), _) => CameraToken::File(path.clone()),
                (None, Some(secret)) => CameraToken::Mint {
                    secret: Arc::clone(secret),
                    audience: config.jwt.audience.clone(),
                    ttl: config.bridge.token_ttl,
                },
                (None, None) => anyhow::bail!(
                    "camera {}: no token_file and no jwt.secret_file to mint one",
                    cam.id
                ),
            };
            metrics.camera_added();
            cameras.push((source, token));
        }
        Ok(Self {
            cfg: Arc::new(config.bridge.clone()),
            cameras,
            metrics,
            drain: config.drain.timeout,
        })
    }

    /// Runs every camera until `shutdown` drains: then each camera leaves signaling (its
    /// viewers see `camera-offline`) and its RTSP session is torn down.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for (source, token) in self.cameras {
            let feed = Arc::new(Feed::new(self.cfg.gop_max_bytes));
            let (up_tx, up_rx) = watch::channel(false);
            let metrics = self.metrics.clone();
            let mut up_seen = up_rx.clone();
            let gauge = metrics.clone();
            tasks.spawn(async move {
                let mut was = false;
                while up_seen.changed().await.is_ok() {
                    let now = *up_seen.borrow_and_update();
                    if now != was {
                        gauge.camera_up(now);
                        was = now;
                    }
                }
            });
            let publisher = Publisher {
                id: source.id.clone(),
                cfg: Arc::clone(&self.cfg),
                token,
                feed: Arc::clone(&feed),
                up: up_rx,
                metrics: metrics.clone(),
            };
            tasks.spawn(publisher.run(stop.child_token()));
            tasks.spawn(rtsp::run(
                source,
                Arc::clone(&self.cfg),
                feed,
                up_tx,
                metrics,
                stop.child_token(),
            ));
        }
        shutdown.set_ready();
        tracing::info!(cameras = tasks.len() / 3, "bridge running");
        shutdown.draining().await;
        tracing::info!("draining: cameras leave signaling");
        stop.cancel();
        let _ = tokio::time::timeout(self.drain, async {
            // Each publisher sends `leave` and closes its socket before it ends (viewers hear
            // `camera-offline` now, not when a resume grace runs out).
            while tasks.join_next().await.is_some() {}
        })
        .await;
        Ok(())
    }
}
