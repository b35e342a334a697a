// A consumer of the packed package: scripts/test-js.sh type-checks it against `npm pack`'s
// output (tsc --noEmit), so the published types are what docs/sdk.md's example needs.
import { Camera, Viewer, IcewayError, explain, openCamera, keepScreenOn, fetchIceServers } from 'iceway';
import type { CameraViewer, SignalState, StatsSummary } from 'iceway';

export async function runCamera(signalUrl: string, token: string): Promise<Camera> {
  const stream = await openCamera({ facing: 'environment' });
  const camera = new Camera({ signalUrl, token, stream, iceServersUrl: 'https://auth.example' });
  const wake = keepScreenOn();
  camera.on('viewer-joined', (v: CameraViewer) => console.log('watching:', v.user));
  camera.on('viewer-audio', ({ track }) => {
    const audio = new Audio();
    audio.srcObject = new MediaStream([track]);
    void audio.play();
  });
  camera.on('fatal', (e: IcewayError) => {
    wake.release();
    console.error(explain(e));
  });
  camera.start();
  return camera;
}

export function runViewer(signalUrl: string, token: string, video: HTMLVideoElement): Viewer {
  const viewer = new Viewer({ signalUrl, token, camera: 'cam1', relayOnly: true });
  viewer.on('stream', (s: MediaStream) => { video.srcObject = s; });
  viewer.on('state', (s: SignalState) => console.log('signaling', s));
  viewer.on('camera-state', (s) => console.log('camera is', s));
  viewer.on('error', (e) => { if (e.code === 'forbidden' && e.reason === 'camera-full') console.log('full'); });
  const talk = document.querySelector('button')!;
  talk.onpointerdown = () => viewer.talk(true).catch((e: IcewayError) => alert(explain(e)));
  talk.onpointerup = () => void viewer.talk(false);
  viewer.start();
  return viewer;
}

export async function servers(token: string): Promise<number> {
  const r = await fetchIceServers({ baseUrl: 'https://auth.example', token });
  const s: StatsSummary | null = null;
  return r.iceServers.length + (s ? 1 : 0);
}
