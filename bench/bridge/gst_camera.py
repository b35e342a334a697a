#!/usr/bin/python3
"""The independent passthrough the bridge is measured against: an Iceway camera made of
GStreamer, publishing an RTSP camera through Iceway signaling (docs/signaling.md) and giving
each viewer its own `rtspsrc ! rtph264depay ! rtph264pay ! webrtcbin` pipeline (no decode,
as the bridge). Same signaling, same viewers, same RTSP source; only the publisher differs.

  gst_camera.py --signal ws://127.0.0.1:8080/v1/ws --token CAMERA_JWT --rtsp rtsp://127.0.0.1:8554/cam

Prints "READY" once published. Debian packages: python3-gst-1.0 gir1.2-gst-plugins-bad-1.0
gstreamer1.0-nice gir1.2-nice-0.1 gstreamer1.0-plugins-{good,bad} python3-websockets.
Run with /usr/bin/python3.
"""
import argparse
import asyncio
import json
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402
import websockets  # noqa: E402

# rtph264pay sets profile-level-id from the SPS: the camera's own profile is offered (so a
# High-profile camera is refused by Chromium, which offers no High; the comparison runs on a
# baseline camera).
H264_CAPS = "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000"


class Viewer:
    """One viewer's pipeline; every GStreamer callback hands its result to the asyncio loop."""

    def __init__(self, cam, viewer_id):
        self.cam = cam
        self.id = viewer_id
        launch = (
            f"rtspsrc location={cam.rtsp} protocols=tcp latency=0 ! rtph264depay ! "
            # Annex B out of the depayloader: SPS/PPS travel in-band, as the bridge sends them.
            "video/x-h264,stream-format=byte-stream,alignment=au ! "
            f"rtph264pay config-interval=-1 pt=102 aggregate-mode=zero-latency ! {H264_CAPS} ! "
            "webrtcbin name=w bundle-policy=max-bundle"
        )
        self.pipe = Gst.parse_launch(launch)
        self.w = self.pipe.get_by_name("w")
        # Loopback candidates are left out by libnice unless added by hand.
        # (Kept: PyGObject would otherwise drop the reference webrtcbin holds.)
        self.agent = self.w.get_property("ice-agent")
        if self.agent is not None and hasattr(self.agent, "add_local_ip_address"):
            self.agent.add_local_ip_address("127.0.0.1")
        self.w.connect("on-negotiation-needed", self.on_negotiation_needed)
        # Candidates go in the offer once gathering completes, one frame per viewer, as the
        # bridge does: trickling each of 50 viewers' candidates at once would pass signaling's
        # per-connection rate.
        self.w.connect("notify::ice-gathering-state", self.on_gathering)
        self.offer_sent = False

    def start(self):
        self.pipe.set_state(Gst.State.PLAYING)

    def on_negotiation_needed(self, _w):
        promise = Gst.Promise.new_with_change_func(self.on_offer_created, None)
        self.w.emit("create-offer", None, promise)

    def on_offer_created(self, promise, _data):
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        self.w.emit("set-local-description", offer, Gst.Promise.new())
        self.on_gathering(self.w, None)

    def on_gathering(self, w, _pspec):
        if self.offer_sent or w.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            return
        desc = w.get_property("local-description")
        if desc is None:
            return
        self.offer_sent = True
        self.cam.send({"type": "offer", "to": self.id, "sdp": desc.sdp.as_text()})

    def on_answer(self, sdp_text):
        _, sdp = GstSdp.SDPMessage.new_from_text(sdp_text)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        self.w.emit("set-remote-description", answer, Gst.Promise.new())

    def on_candidate(self, frame):
        if frame.get("candidate"):
            self.w.emit("add-ice-candidate", int(frame.get("sdpMLineIndex") or 0), frame["candidate"])

    def close(self):
        self.pipe.set_state(Gst.State.NULL)


class Camera:
    def __init__(self, args, loop):
        self.rtsp = args.rtsp
        self.loop = loop
        self.out = asyncio.Queue()
        self.viewers = {}

    def send(self, frame):
        # Called from GStreamer threads.
        self.loop.call_soon_threadsafe(self.out.put_nowait, frame)

    def in_glib(self, fn, *args):
        GLib.idle_add(lambda: (fn(*args), False)[1])


def add_viewer(cam, vid):
    # In the dict before it plays: its offer (and so the answer) may come at once.
    v = Viewer(cam, vid)
    cam.viewers[vid] = v
    v.start()


async def run(args):
    loop = asyncio.get_running_loop()
    cam = Camera(args, loop)
    async with websockets.connect(args.signal, max_size=1 << 20) as ws:
        await ws.send(json.dumps({"type": "auth", "token": args.token}))
        welcome = json.loads(await ws.recv())
        if welcome.get("type") != "welcome":
            print(f"no welcome: {welcome}", file=sys.stderr)
            sys.exit(1)
        await ws.send(json.dumps({"type": "publish"}))
        print("READY", flush=True)

        async def writer():
            while True:
                await ws.send(json.dumps(await cam.out.get()))

        async def pinger():
            while True:
                await asyncio.sleep(max(5, float(welcome.get("heartbeat") or 20)))
                cam.send({"type": "ping"})

        tasks = [asyncio.create_task(writer()), asyncio.create_task(pinger())]
        try:
            async for text in ws:
                f = json.loads(text)
                t = f.get("type")
                if t == "viewer-joined":
                    vid = f["viewer"]
                    cam.in_glib(add_viewer, cam, vid)
                elif t == "answer" and f.get("from") in cam.viewers:
                    cam.in_glib(cam.viewers[f["from"]].on_answer, f["sdp"])
                elif t == "candidate" and f.get("from") in cam.viewers:
                    cam.in_glib(cam.viewers[f["from"]].on_candidate, f)
                elif t == "peer-left" and f.get("peer") in cam.viewers:
                    v = cam.viewers.pop(f["peer"])
                    cam.in_glib(v.close)
        finally:
            for t in tasks:
                t.cancel()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--signal", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--rtsp", required=True)
    args = p.parse_args()
    Gst.init(None)
    glib_loop = GLib.MainLoop()
    threading.Thread(target=glib_loop.run, daemon=True).start()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
