//! The progress bar on stderr while a run goes (hidden with --no-progress or --json).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    total_flows: u64,
    duration: Duration,
    traffic_started: Mutex<Option<Instant>>,
    last: Mutex<(Instant, u64)>,
}

impl Progress {
    pub fn new(enabled: bool, total_flows: u64, duration: Duration) -> Self {
        let bar = if enabled {
            ProgressBar::new(total_flows)
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix("setup");
        Self {
            bar,
            total_flows,
            duration,
            traffic_started: Mutex::new(None),
            last: Mutex::new((Instant::now(), 0)),
        }
    }

    pub fn setup(&self, done: u64) {
        self.bar.set_position(done.min(self.total_flows));
    }

    pub fn start_traffic(&self) {
        if let Ok(mut t) = self.traffic_started.lock() {
            *t = Some(Instant::now());
        }
        self.bar.set_prefix("traffic");
        self.bar.set_length(self.duration.as_millis() as u64);
        self.bar.set_position(0);
    }

    pub fn traffic(&self, sent: u64, received: u64) {
        let elapsed = self
            .traffic_started
            .lock()
            .ok()
            .and_then(|t| *t)
            .map(|t| t.elapsed())
            .unwrap_or_default();
        self.bar
            .set_position((elapsed.as_millis() as u64).min(self.duration.as_millis() as u64));
        let rate = match self.last.lock() {
            Ok(mut last) => {
                let dt = last.0.elapsed().as_secs_f64();
                let r = (received.saturating_sub(last.1)) as f64 / dt.max(1e-3);
                *last = (Instant::now(), received);
                r
            }
            Err(_) => 0.0,
        };
        self.bar
            .set_message(format!("sent {sent} received {received} ({rate:.0}/s)"));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
