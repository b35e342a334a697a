//! TURN over TCP and TLS (RFC 8656 §3.1): STUN messages and padded ChannelData framed back to back
//! on the stream (RFC 4571-style: each frame's own length field delimits it). One task per
//! connection owns a one-connection protocol core and the allocation's relay sockets; the
//! allocation ends with the connection. Connections are admitted and timed out by
//! `crate::limits`.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::MissedTickBehavior;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

use super::socket::{self, RelaySettings};
use crate::limits::{AcceptBackoff, Expiry, Refusal, StreamConnections, StreamDeadlines};
use crate::proto::channel_data::stream_frame_len;
use crate::proto::{
    Family, FiveTuple, Now, Output, PortRequest, Relay, RelayError, RelayId, RelayPorts, Server,
    Shared, Transport,
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

/// Splits a byte stream into STUN messages and ChannelData frames.
#[derive(Debug, Default)]
pub struct TurnFrames;

impl Decoder for TurnFrames {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        let Some(first4) = src.get(..4) else {
            return Ok(None);
        };
        let first4 = [first4[0], first4[1], first4[2], first4[3]];
        let len = stream_frame_len(first4).ok_or(FrameError::NotTurn(first4[0]))?;
        if src.len() < len {
            src.reserve(len.min(MAX_FRAME) - src.len());
            return Ok(None);
        }
        Ok(Some(src.split_to(len)))
    }
}

/// Relay sockets of one connection's allocation (at most one per family).
struct ConnRelays {
    settings: RelaySettings,
    sockets: Vec<(RelayId, UdpSocket)>,
    next: RelayId,
}

impl RelayPorts for ConnRelays {
    fn allocate(&mut self, family: Family, port: PortRequest) -> Result<Relay, RelayError> {
        let std = socket::open_relay(&self.settings, family, port)?;
        let local = std.local_addr().map_err(|_| RelayError::Exhausted)?;
        let socket = UdpSocket::from_std(std).map_err(|_| RelayError::Exhausted)?;
        self.next += 1;
        self.sockets.push((self.next, socket));
        Ok(Relay {
            id: self.next,
            local,
        })
    }

    fn release(&mut self, id: RelayId) {
        self.sockets.retain(|(i, _)| *i != id);
    }
}

impl ConnRelays {
    fn get(&self, id: RelayId) -> Option<&UdpSocket> {
        self.sockets.iter().find(|(i, _)| *i == id).map(|(_, s)| s)
    }
}

/// Waits for a datagram on any relay socket; pending forever when there are none.
async fn recv_any(
    sockets: &[(RelayId, UdpSocket)],
    buf: &mut [u8],
) -> io::Result<(RelayId, usize, SocketAddr)> {
    poll_fn(|cx| {
        for (id, s) in sockets {
            let mut rb = tokio::io::ReadBuf::new(buf);
            if let Poll::Ready(r) = s.poll_recv_from(cx, &mut rb) {
                return Poll::Ready(r.map(|addr| (*id, rb.filled().len(), addr)));
            }
        }
        Poll::Pending
    })
    .await
}

/// A new connection's read buffer: room for a typical STUN request; the framer grows it for
/// larger frames, so an idle connection costs little.
const INITIAL_READ_BUFFER: usize = 512;
/// The largest UDP payload a relay socket can receive.
const RELAY_BUFFER: usize = 65_536;

/// Serves one connection until the client closes it, a deadline of `deadlines` passes, or `stop`.
pub async fn serve_connection<S>(
    stream: S,
    ft: FiveTuple,
    shared: Arc<Shared>,
    settings: RelaySettings,
    mut deadlines: StreamDeadlines,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (reader, mut writer) = tokio::io::split(stream);
    let mut frames = FramedRead::with_capacity(reader, TurnFrames, INITIAL_READ_BUFFER);
    let mut server = Server::new(Arc::clone(&shared));
    let mut relays = ConnRelays {
        settings,
        sockets: Vec::new(),
        next: 0,
    };
    // Allocated with the first relay socket and freed with the last.
    let mut buf: Vec<u8> = Vec::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut deadline = deadlines.next(false);
    let timer = tokio::time::sleep_until(deadlines.handshake_by().into());
    tokio::pin!(timer);
    let expired = loop {
        let has_allocation = server.allocation_count() > 0;
        match (relays.sockets.is_empty(), buf.is_empty()) {
            (false, true) => buf = vec![0u8; RELAY_BUFFER],
            (true, false) => buf = Vec::new(),
            _ => {}
        }
        let next = deadlines.next(has_allocation);
        if next != deadline {
            if let Some((at, _)) = next {
                timer.as_mut().reset(at.into());
            }
            deadline = next;
        }
        tokio::select! {
            frame = frames.next() => match frame {
                Some(Ok(frame)) => {
                    let now = Now::system();
                    deadlines.on_frame(frame.chunk(), now.instant);
                    server.handle_client(frame.chunk(), ft, now, &mut relays);
                }
                Some(Err(e)) => {
                    tracing::debug!(client = %ft.client, error = %e, "closing stream");
                    break None;
                }
                None => break None,
            },
            r = recv_any(&relays.sockets, &mut buf), if !relays.sockets.is_empty() => {
                if let Ok((id, n, peer)) = r {
                    server.handle_peer(id, peer, &buf[..n], Instant::now());
                }
            }
            _ = sweep.tick(), if has_allocation => server.sweep(Now::system(), &mut relays),
            () = &mut timer, if deadline.is_some() => break deadline.map(|(_, why)| why),
            _ = stop.cancelled() => break None,
        }
        let mut failed = false;
        while let Some(out) = server.poll_output() {
            match out {
                Output::ToClient { data, .. } => {
                    if writer.write_all(&data).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                Output::ToPeer { relay, peer, data } => {
                    if let Some(s) = relays.get(relay) {
                        // Straight to the kernel: tokio's try_send_to refuses (WouldBlock) until
                        // its reactor has seen the new socket writable, which would drop the
                        // first datagrams of a fresh allocation.
                        let _ = socket2::SockRef::from(s).send_to(&data, &peer.into());
                    }
                }
            }
        }
        server.flush_stats();
        if failed {
            break None;
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
    server.connection_closed(&ft, Instant::now(), &mut relays);
    server.flush_stats();
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
        let mut codec = TurnFrames;
        let mut src = BytesMut::new();
        src.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]);
        src.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        assert!(
            codec.decode(&mut src).expect("ok").is_none(),
            "header incomplete"
        );
        src.extend_from_slice(&[0u8; 12]);
        src.extend_from_slice(&[0x40, 0x00, 0x00, 0x01, 0xaa, 0, 0, 0, 0x40]);
        assert_eq!(codec.decode(&mut src).expect("ok").expect("stun").len(), 20);
        assert_eq!(
            codec
                .decode(&mut src)
                .expect("ok")
                .expect("channel data")
                .len(),
            8
        );
        assert!(codec.decode(&mut src).expect("ok").is_none());
        let mut bad = BytesMut::from(&[0xff, 0, 0, 0][..]);
        assert!(matches!(
            codec.decode(&mut bad),
            Err(FrameError::NotTurn(0xff))
        ));
    }
}
