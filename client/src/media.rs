//! Media for the reference clients: the camera's looping VP8 clip (an IVF file held in memory)
//! and the viewer's frame assembly from RTP (depacketize, count frames and bytes).

use std::io::Cursor;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::media::io::ivf_reader::IVFReader;
use rtc::media::io::sample_builder::SampleBuilder;
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::codec::vp8::Vp8Packet;
use rtc::rtp::codec::vp9::Vp9Packet;

/// The built-in sample: 4 s of ffmpeg's `testsrc` pattern, 640x360 at 30 fps, VP8, a key frame
/// every second (see client/testdata/README.md for how it was made).
pub const DEFAULT_CLIP: &[u8] = include_bytes!("../testdata/camera_vp8.ivf");

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a VP8 IVF file: {0}")]
    NotVp8Ivf(String),
    #[error("the clip has no frames")]
    Empty,
}

/// A VP8 clip in memory; the camera loops it as a live source.
#[derive(Debug, Clone)]
pub struct Clip {
    pub frames: Vec<Bytes>,
    pub frame_duration: Duration,
    pub width: u16,
    pub height: u16,
}

impl Clip {
    pub fn from_file(path: &Path) -> Result<Self, MediaError> {
        let data = std::fs::read(path).map_err(|source| MediaError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_ivf(&data)
    }

    pub fn from_ivf(data: &[u8]) -> Result<Self, MediaError> {
        let (mut reader, header) =
            IVFReader::new(Cursor::new(data)).map_err(|e| MediaError::NotVp8Ivf(e.to_string()))?;
        if &header.four_cc != b"VP80" {
            return Err(MediaError::NotVp8Ivf(format!(
                "codec {:?}",
                String::from_utf8_lossy(&header.four_cc)
            )));
        }
        let mut frames = Vec::new();
        // Bounded by the file: each frame consumes at least its 12-byte header.
        while let Ok((frame, _)) = reader.parse_next_frame() {
            frames.push(frame.freeze());
        }
        if frames.is_empty() {
            return Err(MediaError::Empty);
        }
        // IVF's "denominator" field is the frame rate's numerator (see the IVF header docs).
        let fps_num = u64::from(header.timebase_denominator.max(1));
        let fps_den = u64::from(header.timebase_numerator.max(1));
        let frame_duration =
            Duration::from_micros((1_000_000 * fps_den / fps_num).clamp(1_000, 1_000_000));
        Ok(Self {
            frames,
            frame_duration,
            width: header.width,
            height: header.height,
        })
    }

    pub fn builtin() -> Self {
        Self::from_ivf(DEFAULT_CLIP).expect("the built-in clip is a valid VP8 IVF file")
    }
}

/// VP8 key frames have the P bit (bit 0 of the first payload byte) clear (RFC 6386 §9.1).
pub fn is_vp8_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x01 == 0)
}

/// An H.264 access unit (Annex B, as webrtc-rs depacketizes it) a decoder can start from: an
/// IDR slice (NAL type 5) with the SPS (7) and PPS (8) in front of it.
pub fn is_h264_keyframe(frame: &[u8]) -> bool {
    let (mut sps, mut pps) = (false, false);
    for nal in annex_b_nal_types(frame) {
        match nal {
            7 => sps = true,
            8 => pps = true,
            5 => return sps && pps,
            _ => {}
        }
    }
    false
}

/// The `nal_unit_type` of each NAL unit after a 3- or 4-byte start code.
fn annex_b_nal_types(data: &[u8]) -> impl Iterator<Item = u8> + '_ {
    data.windows(4)
        .filter_map(|w| (w[0] == 0 && w[1] == 0 && w[2] == 1).then_some(w[3] & 0x1f))
}

/// Counts what a viewer receives on one video track.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct FrameStats {
    pub frames: u64,
    pub keyframes: u64,
    pub bytes: u64,
    pub packets: u64,
    pub first_frame_at: Option<Instant>,
    pub last_frame_at: Option<Instant>,
}

enum Builder {
    Vp8(Box<SampleBuilder<Vp8Packet>>),
    Vp9(Box<SampleBuilder<Vp9Packet>>),
    H264(Box<SampleBuilder<H264Packet>>),
    /// Unknown codec: a frame ends at the RTP marker bit.
    Marker,
}

/// Reassembles frames from RTP packets of one video track.
pub struct FrameAssembler {
    builder: Builder,
    vp8: bool,
    pub stats: FrameStats,
}

impl std::fmt::Debug for FrameAssembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameAssembler")
            .field("stats", &self.stats)
            .finish()
    }
}

/// Packets a frame may wait for a late packet before it is given up.
const MAX_LATE: u16 = 128;

impl FrameAssembler {
    pub fn new(mime_type: &str, clock_rate: u32) -> Self {
        let rate = clock_rate.max(1);
        let builder = match mime_type.to_ascii_lowercase().as_str() {
            "video/vp8" => Builder::Vp8(Box::new(SampleBuilder::new(
                MAX_LATE,
                Vp8Packet::default(),
                rate,
            ))),
            "video/vp9" => Builder::Vp9(Box::new(SampleBuilder::new(
                MAX_LATE,
                Vp9Packet::default(),
                rate,
            ))),
            "video/h264" => Builder::H264(Box::new(SampleBuilder::new(
                MAX_LATE,
                H264Packet::default(),
                rate,
            ))),
            _ => Builder::Marker,
        };
        Self {
            vp8: matches!(builder, Builder::Vp8(_)),
            builder,
            stats: FrameStats::default(),
        }
    }

    /// Whether this codec's key frames are recognised (VP8, H.264), so that a missing one means
    /// the decoder could not start.
    pub fn knows_keyframes(&self) -> bool {
        matches!(self.builder, Builder::Vp8(_) | Builder::H264(_))
    }

    /// Takes one RTP packet; returns how many frames it completed.
    pub fn push(&mut self, now: Instant, packet: rtc::rtp::Packet) -> u64 {
        self.stats.packets += 1;
        let mut completed = Vec::new();
        match &mut self.builder {
            Builder::Vp8(b) => {
                b.push(now, packet);
                while let Some(s) = b.pop(now) {
                    completed.push(s.data);
                }
            }
            Builder::Vp9(b) => {
                b.push(now, packet);
                while let Some(s) = b.pop(now) {
                    completed.push(s.data);
                }
            }
            Builder::H264(b) => {
                b.push(now, packet);
                while let Some(s) = b.pop(now) {
                    completed.push(s.data);
                }
            }
            Builder::Marker => {
                self.stats.bytes += packet.payload.len() as u64;
                if packet.header.marker {
                    self.count_frame(now, false);
                    return 1;
                }
                return 0;
            }
        }
        let n = completed.len() as u64;
        for data in completed {
            self.stats.bytes += data.len() as u64;
            let key = match &self.builder {
                Builder::H264(_) => is_h264_keyframe(&data),
                _ => self.vp8 && is_vp8_keyframe(&data),
            };
            self.count_frame(now, key);
        }
        n
    }

    fn count_frame(&mut self, now: Instant, key: bool) {
        self.stats.frames += 1;
        if key {
            self.stats.keyframes += 1;
        }
        self.stats.first_frame_at.get_or_insert(now);
        self.stats.last_frame_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp::packetizer::Payloader;

    #[test]
    fn h264_keyframes_need_the_idr_and_its_parameter_sets() {
        let sps_pps_idr = [0, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x68, 2, 0, 0, 1, 0x65, 3];
        assert!(is_h264_keyframe(&sps_pps_idr));
        assert!(
            !is_h264_keyframe(&[0, 0, 0, 1, 0x65, 3]),
            "an IDR alone cannot start a decoder"
        );
        assert!(!is_h264_keyframe(&[
            0, 0, 0, 1, 0x67, 1, 0, 0, 1, 0x68, 2, 0, 0, 1, 0x41, 9
        ]));
    }

    #[test]
    fn builtin_clip_is_30fps_vp8_with_keyframes() {
        let clip = Clip::builtin();
        assert_eq!(clip.frame_duration, Duration::from_micros(33_333));
        assert!(clip.frames.len() >= 60, "{}", clip.frames.len());
        assert!(is_vp8_keyframe(&clip.frames[0]));
        assert!(clip.frames.iter().filter(|f| is_vp8_keyframe(f)).count() >= 2);
        assert_eq!((clip.width, clip.height), (640, 360));
    }

    #[test]
    fn not_ivf_is_refused() {
        assert!(matches!(
            Clip::from_ivf(b"nope"),
            Err(MediaError::NotVp8Ivf(_))
        ));
    }

    #[test]
    fn assembler_rebuilds_frames_from_vp8_packets() {
        let clip = Clip::builtin();
        let mut payloader = rtc::rtp::codec::vp8::Vp8Payloader::default();
        let mut asm = FrameAssembler::new("video/VP8", 90_000);
        let now = Instant::now();
        let mut seq: u16 = 1000;
        let frames = 20usize;
        for (i, frame) in clip.frames.iter().take(frames + 1).enumerate() {
            let payloads = payloader.payload(1200, frame).expect("payload");
            let count = payloads.len();
            for (j, payload) in payloads.into_iter().enumerate() {
                let packet = rtc::rtp::Packet {
                    header: rtc::rtp::Header {
                        version: 2,
                        payload_type: 96,
                        sequence_number: seq,
                        timestamp: (i as u32) * 3000,
                        ssrc: 1,
                        marker: j + 1 == count,
                        ..Default::default()
                    },
                    payload,
                };
                seq = seq.wrapping_add(1);
                asm.push(now, packet);
            }
        }
        // A frame is complete once the next one starts, so the last pushed one is pending.
        assert_eq!(asm.stats.frames, frames as u64);
        assert!(asm.stats.keyframes >= 1);
        assert!(asm.stats.first_frame_at.is_some());
    }
}
