#!/usr/bin/python3
"""A fake IP camera for iceway-bridge's tests and benchmark: GStreamer's RTSP server serving a
live H.264 test pattern (and G.711 audio) the way a real camera does.

- One encoder, always running, for every client, and a GOP that does NOT restart when a client
  connects: a real camera keeps its key-frame interval, so a client joining mid-GOP waits for the
  next IDR. GStreamer's RTSP server seeks its media on each PLAY (Range: npt=0-), which would
  restart an x264enc inside it; so the encoder runs in a pipeline of its own and sends RTP to the
  RTSP media over loopback UDP (which cannot seek).
- --profile baseline|high, --gop N frames, --fps, --size WxH, --audio (PCMU), --auth USER:PASS
  (digest; the password is read from the file named by ICEWAY_FAKE_CAMERA_PASSWORD_FILE if set,
  so it stays out of argv).
- Listens on 127.0.0.1 (or --host), on --port (0: any free port), mount /cam; prints
  "READY <port>" on stdout once listening. Stops on SIGTERM/SIGINT.

Run with /usr/bin/python3 (Debian's, which has the gi module).
"""
import argparse
import os
import signal
import socket
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--profile", choices=["baseline", "high"], default="baseline")
    p.add_argument("--gop", type=int, default=30, help="frames between IDRs")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--size", default="640x480")
    p.add_argument("--bitrate", type=int, default=1000, help="kbit/s")
    p.add_argument("--audio", action="store_true", help="add a PCMU (G.711) stream")
    p.add_argument("--auth", default=None, help="USER or USER:PASS for digest auth")
    return p.parse_args()


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encoder_line(a, video_port, audio_port):
    """The camera's sensor and encoder: always running, whether anyone watches or not."""
    w, h = a.size.split("x")
    caps_profile = "constrained-baseline" if a.profile == "baseline" else "high"
    # key-int-max with scenecut off: IDRs exactly every --gop frames, as cameras do.
    line = (
        f"videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},framerate={a.fps}/1 "
        f"! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast bitrate={a.bitrate} "
        f"key-int-max={a.gop} option-string=scenecut=0 "
        f"! video/x-h264,profile={caps_profile} ! rtph264pay pt=96 config-interval=-1 mtu=1400 "
        f"! udpsink host=127.0.0.1 port={video_port} sync=false"
    )
    if a.audio:
        line += (
            " audiotestsrc is-live=true wave=sine ! audio/x-raw,rate=8000,channels=1 ! mulawenc "
            f"! rtppcmupay pt=0 ! udpsink host=127.0.0.1 port={audio_port} sync=false"
        )
    return line


def launch_line(a, video_port, audio_port):
    """What each RTSP client is served: the encoder's packets, repacketized, not re-encoded.
    GStreamer's RTSP server seeks its media on every PLAY; a udpsrc cannot seek, so the
    encoder's GOP runs on and a client that joins mid-GOP waits for the next IDR."""
    video = (
        f'udpsrc address=127.0.0.1 port={video_port} caps="application/x-rtp,media=video,clock-rate=90000,'
        'encoding-name=H264,payload=96" ! rtph264depay '
        "! rtph264pay name=pay0 pt=96 config-interval=-1"
    )
    audio = (
        f' udpsrc address=127.0.0.1 port={audio_port} caps="application/x-rtp,media=audio,clock-rate=8000,'
        'encoding-name=PCMU,payload=0" ! rtppcmudepay ! rtppcmupay name=pay1 pt=0'
    )
    return f"( {video}{audio if a.audio else ''} )"


def main():
    a = parse_args()
    Gst.init(None)
    video_port, audio_port = free_udp_port(), free_udp_port()
    encoder = Gst.parse_launch(encoder_line(a, video_port, audio_port))
    encoder.set_state(Gst.State.PLAYING)
    server = GstRtspServer.RTSPServer()
    server.set_address(a.host)
    server.set_service(str(a.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(a, video_port, audio_port))
    factory.set_shared(True)
    factory.set_latency(0)
    if a.auth:
        user, _, password = a.auth.partition(":")
        pw_file = os.environ.get("ICEWAY_FAKE_CAMERA_PASSWORD_FILE")
        if pw_file:
            with open(pw_file, encoding="utf-8") as f:
                password = f.read().strip()
        auth = GstRtspServer.RTSPAuth()
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", user)
        auth.add_digest(user, password, token)
        server.set_auth(auth)
        role, _ = Gst.Structure.from_string(
            f"{user}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )
        factory.add_role_from_structure(role)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print("cannot listen", file=sys.stderr)
        sys.exit(1)
    print(f"READY {server.get_bound_port()}", flush=True)
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    loop.run()


if __name__ == "__main__":
    main()
