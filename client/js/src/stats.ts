// What getStats says about a connection: the selected candidate pair and its path, and the RTP
// counters. `prev` (an earlier result) turns byte counters into bitrates.

export interface StatsSummary {
  at: number;
  localCandidateType: string | null;
  remoteCandidateType: string | null;
  /** 'relay' when either end of the selected pair is a TURN relay. */
  path: 'relay' | 'direct' | null;
  video: { framesDecoded: number; framesPerSecond: number; bytesReceived: number; framesSent: number; bytesSent: number };
  audioIn: { packetsReceived: number; bytesReceived: number };
  audioOut: { packetsSent: number; bytesSent: number };
  bitrateInKbps: number;
  bitrateOutKbps: number;
}

type Stat = Record<string, unknown> & { id: string; type: string };

export async function summarize(pc: RTCPeerConnection, prev?: StatsSummary | null): Promise<StatsSummary> {
  const report = await pc.getStats();
  const byId = new Map<string, Stat>();
  report.forEach((s: Stat) => byId.set(s.id, s));
  let pair: Stat | null = null;
  byId.forEach((s) => {
    if (s.type === 'transport' && typeof s.selectedCandidatePairId === 'string') pair = byId.get(s.selectedCandidatePairId) ?? pair;
  });
  if (!pair) {
    byId.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
    });
  }
  const p = pair as Stat | null;
  const local = p ? byId.get(String(p.localCandidateId)) : undefined;
  const remote = p ? byId.get(String(p.remoteCandidateId)) : undefined;
  const num = (v: unknown) => (typeof v === 'number' ? v : 0);
  const out: StatsSummary = {
    at: Date.now(),
    localCandidateType: local ? String(local.candidateType) : null,
    remoteCandidateType: remote ? String(remote.candidateType) : null,
    path: null,
    video: { framesDecoded: 0, framesPerSecond: 0, bytesReceived: 0, framesSent: 0, bytesSent: 0 },
    audioIn: { packetsReceived: 0, bytesReceived: 0 },
    audioOut: { packetsSent: 0, bytesSent: 0 },
    bitrateInKbps: 0,
    bitrateOutKbps: 0,
  };
  if (local) out.path = local.candidateType === 'relay' || remote?.candidateType === 'relay' ? 'relay' : 'direct';
  byId.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out.video.framesDecoded += num(s.framesDecoded);
      out.video.framesPerSecond = num(s.framesPerSecond) || out.video.framesPerSecond;
      out.video.bytesReceived += num(s.bytesReceived);
    } else if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.audioIn.packetsReceived += num(s.packetsReceived);
      out.audioIn.bytesReceived += num(s.bytesReceived);
    } else if (s.type === 'outbound-rtp' && s.kind === 'video') {
      out.video.framesSent += num(s.framesSent);
      out.video.bytesSent += num(s.bytesSent);
    } else if (s.type === 'outbound-rtp' && s.kind === 'audio') {
      out.audioOut.packetsSent += num(s.packetsSent);
      out.audioOut.bytesSent += num(s.bytesSent);
    }
  });
  if (prev && out.at > prev.at) {
    const secs = (out.at - prev.at) / 1000;
    const inBytes = out.video.bytesReceived + out.audioIn.bytesReceived - prev.video.bytesReceived - prev.audioIn.bytesReceived;
    const outBytes = out.video.bytesSent + out.audioOut.bytesSent - prev.video.bytesSent - prev.audioOut.bytesSent;
    out.bitrateInKbps = Math.max(0, Math.round((inBytes * 8) / secs / 1000));
    out.bitrateOutKbps = Math.max(0, Math.round((outBytes * 8) / secs / 1000));
  }
  return out;
}
