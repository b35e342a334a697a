//! The bridge's Prometheus series (DESIGN §4). No camera id in any label: an installation with
//! hundreds of cameras must not have hundreds of series per metric.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::rtsp::Ended;

#[derive(Clone)]
pub struct Metrics {
    cameras: IntGaugeVec,
    viewers: IntGauge,
    reconnects: IntCounterVec,
    forwarded: IntCounterVec,
    received: IntCounterVec,
    first_frame: Histogram,
}

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let cameras = IntGaugeVec::new(
            Opts::new(
                "iceway_bridge_cameras",
                "Configured cameras by whether their RTSP stream is up.",
            ),
            &["state"],
        )?;
        let viewers = IntGauge::new(
            "iceway_bridge_viewers",
            "Viewer peer connections the bridge holds, all cameras together.",
        )?;
        let reconnects = IntCounterVec::new(
            Opts::new(
                "iceway_bridge_rtsp_reconnects_total",
                "RTSP sessions that ended and were retried, by why they ended.",
            ),
            &["reason"],
        )?;
        let forwarded = IntCounterVec::new(
            Opts::new(
                "iceway_bridge_forwarded_bytes_total",
                "Media bytes handed to viewers' peer connections (before RTP and SRTP).",
            ),
            &["kind"],
        )?;
        let received = IntCounterVec::new(
            Opts::new(
                "iceway_bridge_received_bytes_total",
                "Media bytes received from the cameras.",
            ),
            &["kind"],
        )?;
        let first_frame = Histogram::with_opts(
            HistogramOpts::new(
                "iceway_bridge_first_frame_seconds",
                "From a viewer joining to the first video frame (an IDR) sent to it.",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0]),
        )?;
        registry.register(Box::new(cameras.clone()))?;
        registry.register(Box::new(viewers.clone()))?;
        registry.register(Box::new(reconnects.clone()))?;
        registry.register(Box::new(forwarded.clone()))?;
        registry.register(Box::new(received.clone()))?;
        registry.register(Box::new(first_frame.clone()))?;
        for state in ["up", "down"] {
            cameras.with_label_values(&[state]);
        }
        for e in Ended::ALL {
            reconnects.with_label_values(&[e.label()]);
        }
        for kind in ["video", "audio"] {
            forwarded.with_label_values(&[kind]);
            received.with_label_values(&[kind]);
        }
        Ok(Self {
            cameras,
            viewers,
            reconnects,
            forwarded,
            received,
            first_frame,
        })
    }

    /// A camera configured (down until its stream is up).
    pub fn camera_added(&self) {
        self.cameras.with_label_values(&["down"]).inc();
    }

    pub fn camera_up(&self, up: bool) {
        let (from, to) = if up { ("down", "up") } else { ("up", "down") };
        self.cameras.with_label_values(&[from]).dec();
        self.cameras.with_label_values(&[to]).inc();
    }

    pub fn reconnect(&self, why: Ended) {
        self.reconnects.with_label_values(&[why.label()]).inc();
    }

    pub fn received(&self, kind: &str, bytes: usize) {
        self.received
            .with_label_values(&[kind])
            .inc_by(bytes as u64);
    }

    pub fn forwarded(&self, kind: &str, bytes: usize) {
        self.forwarded
            .with_label_values(&[kind])
            .inc_by(bytes as u64);
    }

    pub fn viewer(&self, delta: i64) {
        self.viewers.add(delta);
    }

    pub fn first_frame(&self, seconds: f64) {
        self.first_frame.observe(seconds);
    }
}
