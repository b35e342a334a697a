//! TURN over TCP and TLS (RFC 8656 §3.1): STUN messages and padded ChannelData framed back to back
//! on the stream (RFC 4571-style: each frame's own length field delimits it). One task per
//! connection owns a one-connection protocol core and the allocation's relay sockets; the
//! allocation ends with the connection. Connections are admitted and timed out by
//! `crate::limits`.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use bytes::{Buf, BytesMut};
use iceway_service::net::send_mmsg;
use quinn_udp::{BATCH_SIZE, UdpSocketState};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::MissedTickBehavior;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::socket::{self, RecvBatch, RelaySettings, SLOT};
use crate::limits::{AcceptBackoff, Expiry, Refusal, StreamConnections, StreamDeadlines};
use crate::proto::channel_data::{self, is_channel_data, stream_frame_len};
use crate::proto::server::data_indication_parts;
use crate::proto::{
    Family, FiveTuple, Now, Output, PeerRoute, PortRequest, Relay, RelayError, RelayId, RelayPorts,
    Server, Shared, Transport,
};

/// Longest frame: a STUN message of 65535 bytes after its 20-byte header.
const MAX_FRAME: usize = 20 + 65_535;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream is not STUN/TURN (first byte {0:#04x})")]
    NotTurn(u8),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The length of the frame at the start of `buf` (a STUN message or a padded ChannelData),
/// `None` until it is complete.
pub fn complete_frame(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(first4) = buf.get(..4) else {
        return Ok(None);
    };
    let first4 = [first4[0], first4[1], first4[2], first4[3]];
    let len = stream_frame_len(first4).ok_or(FrameError::NotTurn(first4[0]))?;
    Ok((buf.len() >= len).then_some(len))
}

/// A relay socket of a stream connection: readiness from tokio's reactor, batched receives
/// with quinn-udp (which tells when the queue is empty, so readiness is cleared without a
/// last `recvfrom` that fails).
struct RelaySocket {
    id: RelayId,
    fd: AsyncFd<std::net::UdpSocket>,
    state: UdpSocketState,
}

/// Relay sockets of one connection's allocation (at most one per family).
struct ConnRelays {
    settings: RelaySettings,
    sockets: Vec<RelaySocket>,
}

impl RelayPorts for ConnRelays {
    fn allocate(&mut self, family: Family, port: PortRequest) -> Result<Relay, RelayError> {
        let std = socket::open_relay(&self.settings, family, port)?;
        let local = std.local_addr().map_err(|_| RelayError::Exhausted)?;
        let state = UdpSocketState::new((&std).into()).map_err(|_| RelayError::Exhausted)?;
        socket::trim_control_messages(&std, local);
        // SAFETY: the AsyncFd owns the std socket, whose descriptor stays open and the same
        // until the AsyncFd is dropped (it is never taken out or replaced).
        let fd = unsafe { AsyncFd::register_with_interest(std, Interest::READABLE) }
            .map_err(|_| RelayError::Exhausted)?;
        // The smallest free id: ids index the core's relay table, and a connection that
        // allocates again and again must not grow it.
        let id = (0..)
            .find(|id| self.sockets.iter().all(|s| s.id != *id))
            .unwrap_or_default();
        self.sockets.push(RelaySocket { id, fd, state });
        Ok(Relay { id, local })
    }

    fn release(&mut self, id: RelayId) {
        self.sockets.retain(|s| s.id != id);
    }
}

/// Waits until a relay socket is readable; pending forever when there are none. The caller
/// then drains them without waiting ([`Connection::drain_relays`]).
async fn relay_readable(sockets: &[RelaySocket]) {
    poll_fn(|cx| {
        for s in sockets {
            // The guard is dropped without clearing: the readiness stays for the drain.
            if s.fd.poll_read_ready(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await
}

thread_local! {
    /// The receive batch of this runtime thread's connections: none holds one of its own.
    static RECV: RefCell<Option<RecvBatch>> = const { RefCell::new(None) };
}

/// A new connection's read buffer: room for a typical STUN request; it grows for larger frames
/// and for the bursts of a connection that relays, so an idle connection costs little.
const INITIAL_READ_BUFFER: usize = 512;
/// What one read asks for once the connection holds an allocation.
const ACTIVE_READ_BUFFER: usize = 16 * 1024;
/// Datagrams taken from the relay sockets per wake-up before the client's writes go out: the
/// write buffer stays bounded (about this many payloads) and the client keeps its turn.
const RELAY_BUDGET: usize = 64;
/// Datagrams per sendmmsg towards peers.
const PEER_CHUNK: usize = 32;

/// The frames one wake-up has for the client, back to back, and where each ends.
#[derive(Default)]
struct ClientFrames {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl ClientFrames {
    /// Appends one frame made of `parts`.
    fn push(&mut self, parts: &[&[u8]]) {
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
        self.ends.push(self.bytes.len());
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        // A burst of large datagrams does not pin its buffer for the connection's life.
        if self.bytes.capacity() > 4 * ACTIVE_READ_BUFFER + RELAY_BUDGET * SLOT {
            self.bytes = Vec::new();
        }
    }
}

/// A client's stream and how a wake-up's frames are written to it: together, not a write (a
/// syscall) per frame.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Writes `bytes`, frames ending at `ends`, and flushes.
    fn send_frames<'a>(
        &'a mut self,
        bytes: &'a [u8],
        ends: &'a [usize],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a;
}

impl ClientStream for tokio::net::TcpStream {
    fn send_frames<'a>(
        &'a mut self,
        bytes: &'a [u8],
        _ends: &'a [usize],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        self.write_all(bytes)
    }
}

/// Over TLS every frame gets a record of its own (a frame over 16 KiB, several), and the
/// records leave together in one write. Coalescing frames into one record would save a record
/// header and tag per frame, but clients that take each record as one message lose every frame
/// after the first: coturn's `turnutils_uclient` reads one message per `SSL_read`, which stops
/// at a record boundary (it lost a tenth of its packets to coalesced records under load).
impl<IO> ClientStream for tokio_rustls::server::TlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn send_frames(&mut self, bytes: &[u8], ends: &[usize]) -> io::Result<()> {
        let tls = self.get_mut().1;
        // No cap on what rustls holds, so that no frame is cut short at the cap and split
        // across records; what it holds is one wake-up's frames (bounded by the relay
        // budget), and the flush below waits until they are written.
        tls.set_buffer_limit(None);
        let mut start = 0;
        for &end in ends {
            io::Write::write_all(&mut tls.writer(), &bytes[start..end])?;
            start = end;
        }
        self.flush().await
    }
}

/// One connection's buffers and relay sockets, reused for its whole life: nothing is allocated
/// per frame or per datagram on the relay paths.
struct Connection {
    ft: FiveTuple,
    server: Server,
    relays: ConnRelays,
    /// Frames from the client not yet complete.
    read: BytesMut,
    /// Frames for the client, written once per wake-up.
    write: ClientFrames,
    /// Payloads for peers, sent once per wake-up: (relay, peer, start, len) into `to_peer_buf`.
    to_peer: Vec<(RelayId, SocketAddr, usize, usize)>,
    to_peer_buf: Vec<u8>,
}

impl Connection {
    /// Handles every complete frame in the read buffer. `Err` when the stream is not TURN.
    fn take_frames(&mut self, deadlines: &mut StreamDeadlines) -> Result<(), FrameError> {
        let now = Now::system();
        while let Some(len) = complete_frame(&self.read)? {
            let frame = &self.read[..len];
            deadlines.on_frame(frame, now.instant);
            if let Some(cd) = is_channel_data(frame)
                .then(|| channel_data::parse(frame).ok())
                .flatten()
            {
                // The fast path: straight into the peer batch.
                if let Some((relay, peer)) = self.server.route_channel_data(
                    &self.ft,
                    cd.number,
                    cd.payload.len(),
                    now.instant,
                ) {
                    let start = self.to_peer_buf.len();
                    self.to_peer_buf.extend_from_slice(cd.payload);
                    self.to_peer.push((relay, peer, start, cd.payload.len()));
                }
            } else {
                self.server
                    .handle_client(frame, self.ft, now, &mut self.relays);
                self.take_outputs();
            }
            self.read.advance(len);
        }
        // Room for the rest of a frame that has started (a STUN message may be 64 KiB).
        if let Some(first4) = self.read.get(..4) {
            let len = stream_frame_len([first4[0], first4[1], first4[2], first4[3]]).unwrap_or(0);
            self.read
                .reserve(len.min(MAX_FRAME).saturating_sub(self.read.len()));
        }
        Ok(())
    }

    /// Moves what the core queued into the write buffer and the peer batch.
    fn take_outputs(&mut self) {
        while let Some(out) = self.server.poll_output() {
            match out {
                Output::ToClient { data, .. } => self.write.push(&[&data]),
                Output::ToPeer { relay, peer, data } => {
                    let start = self.to_peer_buf.len();
                    self.to_peer_buf.extend_from_slice(&data);
                    self.to_peer.push((relay, peer, start, data.len()));
                }
            }
        }
    }

    /// Takes what the relay sockets hold, up to the budget, without waiting.
    fn drain_relays(&mut self) {
        if self.relays.sockets.is_empty() {
            return;
        }
        let Connection {
            server,
            relays,
            write,
            ..
        } = self;
        // Readiness is already known here (or not): asking costs no syscall, and a Pending
        // answer leaves a no-op waker that the next wait replaces.
        let mut cx = Context::from_waker(Waker::noop());
        let now = Instant::now();
        RECV.with_borrow_mut(|batch| {
            let batch = batch.get_or_insert_with(RecvBatch::default);
            let mut taken = 0;
            for s in &relays.sockets {
                while taken < RELAY_BUDGET {
                    let Poll::Ready(Ok(mut ready)) = s.fd.poll_read_ready(&mut cx) else {
                        break;
                    };
                    let n = match batch.recv(s.fd.get_ref().into(), &s.state) {
                        Ok(n) => n,
                        Err(e) => {
                            if e.kind() == io::ErrorKind::WouldBlock {
                                ready.clear_ready();
                            }
                            break;
                        }
                    };
                    for (meta, payload) in batch.datagrams(n) {
                        taken += 1;
                        relay_to_client(server, write, s.id, meta.addr, payload, now);
                    }
                    if n < BATCH_SIZE {
                        // A short batch emptied the queue: wait for the next edge.
                        ready.clear_ready();
                        break;
                    }
                }
            }
        });
    }

    /// Sends the peer batch: one sendmmsg per relay socket.
    fn flush_peers(&mut self) {
        for s in &self.relays.sockets {
            let buf = &self.to_peer_buf;
            let msgs = self
                .to_peer
                .iter()
                .filter(|(relay, ..)| *relay == s.id)
                .map(|&(_, peer, start, len)| (&buf[start..start + len], Some(peer)));
            // Straight to the kernel: tokio's try_send_to refuses (WouldBlock) until its reactor
            // has seen a new socket writable, which would drop a fresh allocation's first
            // datagrams. A full socket buffer drops the rest, as the network would.
            let _ = send_mmsg::<PEER_CHUNK>(s.fd.as_raw_fd(), msgs, libc::MSG_DONTWAIT);
        }
        self.to_peer.clear();
        self.to_peer_buf.clear();
    }
}

/// Appends what `peer` sent to relay `id` to the client's write buffer: a padded ChannelData
/// (RFC 8656 §12.5) on a bound channel, else a Data indication.
fn relay_to_client(
    server: &mut Server,
    write: &mut ClientFrames,
    id: RelayId,
    peer: SocketAddr,
    payload: &[u8],
    now: Instant,
) {
    let n = payload.len();
    match server.route_from_peer(id, peer, n, now) {
        PeerRoute::Drop => {}
        PeerRoute::Channel { number, .. } => {
            let len = u16::try_from(n).unwrap_or(u16::MAX);
            write.push(&[
                &channel_data::header(number, len),
                payload,
                &[0u8; 3][..channel_data::padded(n) - n],
            ]);
        }
        PeerRoute::Indication { .. } => {
            let (head, len, pad) = data_indication_parts(peer, n, rand::random());
            write.push(&[&head[..len], payload, &[0u8; 3][..pad]]);
        }
    }
}

/// Serves one connection until the client closes it, a deadline of `deadlines` passes, or `stop`.
pub async fn serve_connection<S: ClientStream>(
    mut stream: S,
    ft: FiveTuple,
    shared: Arc<Shared>,
    settings: RelaySettings,
    mut deadlines: StreamDeadlines,
    stop: CancellationToken,
) {
    let mut conn = Connection {
        ft,
        server: Server::new(Arc::clone(&shared)),
        relays: ConnRelays {
            settings,
            sockets: Vec::new(),
        },
        read: BytesMut::with_capacity(INITIAL_READ_BUFFER),
        write: ClientFrames::default(),
        to_peer: Vec::new(),
        to_peer_buf: Vec::new(),
    };
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut deadline = deadlines.next(false);
    let timer = tokio::time::sleep_until(deadlines.handshake_by().into());
    tokio::pin!(timer);
    let expired = loop {
        let has_allocation = conn.server.allocation_count() > 0;
        if has_allocation && conn.read.capacity() < ACTIVE_READ_BUFFER {
            conn.read.reserve(ACTIVE_READ_BUFFER - conn.read.len());
        }
        let next = deadlines.next(has_allocation);
        if next != deadline {
            if let Some((at, _)) = next {
                timer.as_mut().reset(at.into());
            }
            deadline = next;
        }
        tokio::select! {
            // Cancel-safe: nothing is read unless the future completes.
            r = stream.read_buf(&mut conn.read) => match r {
                Ok(0) => break None,
                Ok(_) => {
                    if let Err(e) = conn.take_frames(&mut deadlines) {
                        tracing::debug!(client = %ft.client, error = %e, "closing stream");
                        break None;
                    }
                }
                Err(e) => {
                    tracing::debug!(client = %ft.client, error = %e, "closing stream");
                    break None;
                }
            },
            () = relay_readable(&conn.relays.sockets), if !conn.relays.sockets.is_empty() => {}
            _ = sweep.tick(), if has_allocation => {
                conn.server.sweep(Now::system(), &mut conn.relays);
                conn.take_outputs();
            }
            () = &mut timer, if deadline.is_some() => break deadline.map(|(_, why)| why),
            _ = stop.cancelled() => break None,
        }
        // Whatever else is ready goes out with this wake-up's writes.
        conn.drain_relays();
        conn.flush_peers();
        conn.server.flush_stats();
        if !conn.write.is_empty() {
            let by = deadlines.write_by(Instant::now()).into();
            // Biased: a write the socket takes at once never polls (registers with) the stop
            // token or the timer.
            let sent = tokio::select! {
                biased;
                r = tokio::time::timeout_at(by, stream.send_frames(&conn.write.bytes, &conn.write.ends)) => r,
                _ = stop.cancelled() => break None,
            };
            match sent {
                Ok(Ok(())) => conn.write.clear(),
                Ok(Err(_)) => break None,
                Err(_) => break Some(Expiry::Write),
            }
        }
    };
    if let Some(why) = expired {
        tracing::debug!(client = %ft.client, reason = why.reason(), "closing stream");
        shared
            .metrics
            .stream_rejected
            .with_label_values(&[why.reason()])
            .inc();
    }
    conn.server
        .connection_closed(&ft, Instant::now(), &mut conn.relays);
    conn.server.flush_stats();
}

/// Accepts TCP (and, with `tls`, TLS) connections until `stop`, within the caps and deadlines
/// of `connections`.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    settings: RelaySettings,
    connections: Arc<StreamConnections>,
    stop: CancellationToken,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let Ok(local) = listener.local_addr() else {
        return;
    };
    let rejected = |reason: &str| shared.metrics.stream_rejected.with_label_values(&[reason]);
    let (over_global, over_per_ip, accept_errors) = (
        rejected(Refusal::GlobalCap.reason()),
        rejected(Refusal::PerIpCap.reason()),
        rejected("accept_error"),
    );
    let mut backoff = AcceptBackoff::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let (tcp, client) = match accepted {
            Ok(a) => {
                backoff.succeeded();
                a
            }
            Err(e) => {
                accept_errors.inc();
                let pause = backoff.failed(Instant::now());
                if let Some(unlogged) = pause.log {
                    tracing::warn!(%local, error = %e, unlogged, retry_in = ?pause.sleep, "accept failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(pause.sleep) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        let slot = match connections.admit(client.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                match refusal {
                    Refusal::GlobalCap => over_global.inc(),
                    Refusal::PerIpCap => over_per_ip.inc(),
                }
                // A reset rather than a FIN: the refused socket leaves no TIME_WAIT behind,
                // which matters when refusals come in floods.
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                tracing::trace!(%client, reason = refusal.reason(), "connection refused");
                continue;
            }
        };
        let deadlines = StreamDeadlines::new(connections.limits(), Instant::now());
        let _ = tcp.set_nodelay(true);
        let server_addr = tcp.local_addr().unwrap_or(local);
        let ft = FiveTuple {
            client,
            server: server_addr,
            transport,
        };
        let (shared, settings, stop, tls) = (
            Arc::clone(&shared),
            settings.clone(),
            stop.clone(),
            tls.clone(),
        );
        tokio::spawn(async move {
            // Counted until the task ends, whichever way it ends.
            let _slot = slot;
            match tls {
                None => serve_connection(tcp, ft, shared, settings, deadlines, stop).await,
                Some(acceptor) => {
                    let by = deadlines.handshake_by().into();
                    // Pinned here so that a timed-out handshake's socket is closed only after
                    // it has been counted: whoever sees the close also sees the count.
                    let accept = acceptor.accept(tcp);
                    tokio::pin!(accept);
                    match tokio::time::timeout_at(by, &mut accept).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, ft, shared, settings, deadlines, stop).await
                        }
                        Ok(Err(e)) => tracing::debug!(%client, error = %e, "TLS handshake failed"),
                        Err(_) => {
                            tracing::debug!(%client, "TLS handshake timed out");
                            shared
                                .metrics
                                .stream_rejected
                                .with_label_values(&[Expiry::FirstMessage.reason()])
                                .inc();
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_stun_and_padded_channel_data() {
        let mut src = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        assert_eq!(complete_frame(&src).expect("ok"), None, "header incomplete");
        src.extend_from_slice(&[0u8; 12]);
        src.extend_from_slice(&[0x40, 0x00, 0x00, 0x01, 0xaa, 0, 0, 0, 0x40]);
        assert_eq!(complete_frame(&src).expect("ok"), Some(20), "stun");
        assert_eq!(
            complete_frame(&src[20..]).expect("ok"),
            Some(8),
            "channel data"
        );
        assert_eq!(complete_frame(&src[28..]).expect("ok"), None);
        assert!(matches!(
            complete_frame(&[0xff, 0, 0, 0]),
            Err(FrameError::NotTurn(0xff))
        ));
    }
}
