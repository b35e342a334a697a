//! One camera's media as viewers take it: the access units since the last IDR (the group of
//! pictures, GOP) and a live broadcast of what follows. A viewer that joins mid-GOP is handed
//! the cached GOP and then the live units, with nothing missed or sent twice between them, so
//! its decoder starts at once: an RTSP camera cannot be asked for a key frame (PLI has nowhere
//! to go), the cache answers for it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;

/// One H.264 access unit in Annex B form (SPS and PPS in front of every IDR), or one audio frame.
#[derive(Debug, Clone)]
pub struct Unit {
    pub data: Bytes,
    /// Video: an IDR, where a decoder can start.
    pub keyframe: bool,
    /// Time until the next unit of the same stream (the RTP timestamp step).
    pub duration: Duration,
}

#[derive(Debug, Clone)]
pub enum Media {
    Video(Arc<Unit>),
    Audio(Arc<Unit>),
}

/// Live units a slow viewer may lag behind before it is cut off (it then starts over).
const LIVE_BACKLOG: usize = 512;

/// The GOP cache: units since the last IDR, none before the first one.
#[derive(Debug, Default)]
pub struct Gop {
    units: Vec<Arc<Unit>>,
    bytes: usize,
}

impl Gop {
    /// Adds a video unit; `max_bytes` caps the cache (an over-long GOP is dropped whole and the
    /// next IDR starts a new one: a viewer then waits for it rather than the bridge growing).
    pub fn push(&mut self, unit: &Arc<Unit>, max_bytes: usize) {
        if unit.keyframe {
            self.units.clear();
            self.bytes = 0;
        } else if self.units.is_empty() {
            return;
        }
        if self.bytes + unit.data.len() > max_bytes {
            self.units.clear();
            self.bytes = 0;
            return;
        }
        self.bytes += unit.data.len();
        self.units.push(Arc::clone(unit));
    }

    pub fn units(&self) -> &[Arc<Unit>] {
        &self.units
    }

    pub fn clear(&mut self) {
        self.units.clear();
        self.bytes = 0;
    }
}

/// What a viewer starts from: the cached GOP, then the live receiver.
pub struct Subscription {
    pub gop: Vec<Arc<Unit>>,
    pub live: broadcast::Receiver<Media>,
}

/// The camera's audio, when it sends one a browser can play as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audio {
    Pcmu,
    Pcma,
}

#[derive(Debug)]
pub struct Feed {
    gop: Mutex<Gop>,
    tx: broadcast::Sender<Media>,
    max_gop_bytes: usize,
    audio: Mutex<Option<Audio>>,
}

impl Feed {
    pub fn new(max_gop_bytes: usize) -> Self {
        Self {
            gop: Mutex::new(Gop::default()),
            tx: broadcast::channel(LIVE_BACKLOG).0,
            max_gop_bytes,
            audio: Mutex::new(None),
        }
    }

    pub fn push(&self, media: Media) {
        // Under the GOP lock, so that a subscriber sees each unit exactly once: either in its
        // snapshot or on its receiver.
        let mut gop = self.gop.lock().unwrap_or_else(|e| e.into_inner());
        if let Media::Video(unit) = &media {
            gop.push(unit, self.max_gop_bytes);
        }
        let _ = self.tx.send(media);
    }

    pub fn subscribe(&self) -> Subscription {
        let gop = self.gop.lock().unwrap_or_else(|e| e.into_inner());
        Subscription {
            gop: gop.units().to_vec(),
            live: self.tx.subscribe(),
        }
    }

    /// The stream ended: what is cached belongs to it, not to the next one.
    pub fn reset(&self) {
        self.gop.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.set_audio(None);
    }

    /// What the current RTSP session's audio is (set at SETUP), so a viewer's audio track is
    /// offered with that codec.
    pub fn set_audio(&self, audio: Option<Audio>) {
        *self.audio.lock().unwrap_or_else(|e| e.into_inner()) = audio;
    }

    pub fn audio(&self) -> Option<Audio> {
        *self.audio.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(keyframe: bool, len: usize) -> Arc<Unit> {
        Arc::new(Unit {
            data: Bytes::from(vec![0u8; len]),
            keyframe,
            duration: Duration::from_millis(33),
        })
    }

    #[test]
    fn the_gop_starts_at_an_idr_and_restarts_at_the_next() {
        let mut gop = Gop::default();
        gop.push(&unit(false, 10), 1000);
        assert!(gop.units().is_empty(), "nothing before the first IDR");
        gop.push(&unit(true, 10), 1000);
        gop.push(&unit(false, 10), 1000);
        gop.push(&unit(false, 10), 1000);
        assert_eq!(gop.units().len(), 3);
        gop.push(&unit(true, 10), 1000);
        assert_eq!(gop.units().len(), 1);
        assert!(gop.units()[0].keyframe);
    }

    #[test]
    fn an_over_long_gop_is_dropped_until_the_next_idr() {
        let mut gop = Gop::default();
        gop.push(&unit(true, 60), 100);
        gop.push(&unit(false, 60), 100);
        assert!(gop.units().is_empty());
        gop.push(&unit(false, 10), 100);
        assert!(gop.units().is_empty(), "no IDR to start from");
        gop.push(&unit(true, 10), 100);
        assert_eq!(gop.units().len(), 1);
    }

    #[tokio::test]
    async fn a_subscriber_gets_each_unit_once_across_snapshot_and_live() {
        let feed = Feed::new(1 << 20);
        feed.push(Media::Video(unit(true, 1)));
        feed.push(Media::Video(unit(false, 2)));
        let mut sub = feed.subscribe();
        feed.push(Media::Video(unit(false, 3)));
        assert_eq!(
            sub.gop.iter().map(|u| u.data.len()).collect::<Vec<_>>(),
            [1, 2]
        );
        match sub.live.recv().await.expect("live") {
            Media::Video(u) => assert_eq!(u.data.len(), 3),
            Media::Audio(_) => panic!("audio"),
        }
        feed.reset();
        assert!(feed.subscribe().gop.is_empty());
    }
}
