//! Iceway's reference clients on real WebRTC (webrtc-rs): a camera that streams a looping VP8
//! clip to every viewer, and a viewer that measures what arrives. Used by people trying Iceway
//! and by the end-to-end tests.

pub mod camera;
pub mod ice;
pub mod media;
pub mod peer;
pub mod protocol;
pub mod signaling;
pub mod viewer;
