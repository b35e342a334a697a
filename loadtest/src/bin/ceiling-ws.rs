//! The signaling benchmark's ceiling: a bare WebSocket relay on iceway-signal's own stack
//! (tokio's default multi-thread runtime, tungstenite with the same buffer sizes, TCP_NODELAY,
//! one task per connection fed by a bounded queue, frames flushed once per wake-up) with
//! everything of signaling taken away: no HTTP router, no JSON, no token, no session rules.
//!
//! A connection's first text frame is `bind <me> <partner>` (answered `bound <me>`); every
//! later text or binary frame goes to the connection bound as `<partner>` unchanged. A frame
//! for a partner not bound is answered `error no-partner`; one for a partner whose queue is
//! full is dropped and counted (printed on exit).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use iceway_loadtest::signal::frames::{ceiling_bound, parse_ceiling_bind};

#[derive(Parser)]
#[command(
    name = "ceiling-ws",
    about = "Bare WebSocket relay: the signaling benchmark's ceiling"
)]
struct Cli {
    /// Where clients connect (port 0 picks one; the address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Frames queued per connection before frames to it are dropped (iceway-signal's mailbox
    /// holds 64).
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// tungstenite's read buffer per connection (iceway-signal's is 512 bytes).
    #[arg(long, default_value_t = 512)]
    read_buffer: usize,
}

/// As iceway-signal: frames are written once this much is queued, or at the flush after each
/// wake-up; at most this many deliveries between two flushes.
const WRITE_BUFFER: usize = 16 * 1024;
const MAX_BATCH: usize = 32;
/// iceway-signal's defaults for the largest frame, the first frame's wait and a stuck write.
const MAX_FRAME: usize = 64 * 1024;
/// As iceway-signal's listener (std's and tokio's `bind` listen with 128).
const LISTEN_BACKLOG: u32 = 4096;
const BIND_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<TcpStream>;

/// Who is bound under which name, and what the relay counted.
#[derive(Default)]
struct Relay {
    bound: Mutex<HashMap<String, mpsc::Sender<Message>>>,
    relayed: AtomicU64,
    dropped_full: AtomicU64,
    no_partner: AtomicU64,
}

impl Relay {
    fn bind(&self, me: &str, tx: mpsc::Sender<Message>) {
        if let Ok(mut b) = self.bound.lock() {
            b.insert(me.to_string(), tx);
        }
    }

    /// Forgets `me` unless a newer connection has bound the name since.
    fn unbind(&self, me: &str, tx: &mpsc::Sender<Message>) {
        if let Ok(mut b) = self.bound.lock()
            && b.get(me).is_some_and(|t| t.same_channel(tx))
        {
            b.remove(me);
        }
    }

    fn lookup(&self, name: &str) -> Option<mpsc::Sender<Message>> {
        self.bound.lock().ok()?.get(name).cloned()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = listen(cli.listen).with_context(|| format!("binding {}", cli.listen))?;
    println!("listening on {}", listener.local_addr()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(cli.read_buffer.max(64))
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(4 * MAX_FRAME)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let relay = Arc::new(Relay::default());
    let queue = cli.queue.max(1);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    tokio::spawn(serve(tcp, relay.clone(), config, queue));
                }
                // Out of descriptors and the like: the listener is fine, the socket is not.
                Err(e) => {
                    eprintln!("ceiling-ws: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    eprintln!(
        "ceiling-ws: relayed {}, dropped (queue full) {}, no partner {}",
        relay.relayed.load(Ordering::Relaxed),
        relay.dropped_full.load(Ordering::Relaxed),
        relay.no_partner.load(Ordering::Relaxed)
    );
    Ok(())
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// One connection: the bind, then frames in (forwarded to the partner) and deliveries out.
async fn serve(tcp: TcpStream, relay: Arc<Relay>, config: WebSocketConfig, queue: usize) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else {
        return;
    };
    let (me, partner) = match tokio::time::timeout(BIND_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => match parse_ceiling_bind(t.as_str()) {
            Some((me, partner)) => (me.to_string(), partner.to_string()),
            None => return,
        },
        _ => return,
    };
    let (tx, mut rx) = mpsc::channel::<Message>(queue);
    relay.bind(&me, tx.clone());
    if ws.send(Message::text(ceiling_bound(&me))).await.is_ok() {
        relay_frames(&mut ws, &mut rx, &relay, &partner).await;
    }
    relay.unbind(&me, &tx);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.close(None)).await;
}

async fn relay_frames(ws: &mut Ws, rx: &mut mpsc::Receiver<Message>, relay: &Relay, partner: &str) {
    // The partner's queue, looked up once it is bound and again if it goes away.
    let mut to: Option<mpsc::Sender<Message>> = None;
    loop {
        tokio::select! {
            delivery = rx.recv() => {
                let Some(first) = delivery else { return };
                let mut batch = Some(first);
                let mut n = 0;
                while let Some(m) = batch.take() {
                    if ws.feed(m).await.is_err() {
                        return;
                    }
                    n += 1;
                    if n < MAX_BATCH {
                        batch = rx.try_recv().ok();
                    }
                }
                match tokio::time::timeout(WRITE_TIMEOUT, ws.flush()).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
            msg = ws.next() => {
                let m = match msg {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => m,
                    // tungstenite answers pings itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                };
                if !forward(m, &mut to, relay, partner)
                    && ws.send(Message::text("error no-partner")).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Queues `m` for the partner; false when no partner is bound.
fn forward(
    m: Message,
    to: &mut Option<mpsc::Sender<Message>>,
    relay: &Relay,
    partner: &str,
) -> bool {
    let mut m = m;
    // Twice at most: the cached queue may belong to a connection that has since gone.
    for _ in 0..2 {
        if to.as_ref().is_none_or(mpsc::Sender::is_closed) {
            *to = relay.lookup(partner);
        }
        let Some(tx) = to.as_ref() else {
            relay.no_partner.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        match tx.try_send(m) {
            Ok(()) => {
                relay.relayed.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                relay.dropped_full.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Err(mpsc::error::TrySendError::Closed(back)) => {
                *to = None;
                m = back;
            }
        }
    }
    relay.no_partner.fetch_add(1, Ordering::Relaxed);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_to_the_partner_bound_now_and_a_full_queue_drops() {
        let relay = Relay::default();
        let mut to = None;
        assert!(!forward(Message::text("x"), &mut to, &relay, "view"));
        assert_eq!(relay.no_partner.load(Ordering::Relaxed), 1);

        let (old_tx, old_rx) = mpsc::channel(1);
        relay.bind("view", old_tx.clone());
        assert!(forward(Message::text("a"), &mut to, &relay, "view"));
        assert!(forward(Message::text("b"), &mut to, &relay, "view"));
        assert_eq!(relay.dropped_full.load(Ordering::Relaxed), 1);

        // The viewer reconnects: the cached queue is closed, the new binding is found.
        drop(old_rx);
        relay.unbind("view", &old_tx);
        let (new_tx, mut new_rx) = mpsc::channel(4);
        relay.bind("view", new_tx.clone());
        assert!(forward(Message::text("c"), &mut to, &relay, "view"));
        assert_eq!(new_rx.try_recv().ok(), Some(Message::text("c")));
        assert_eq!(relay.relayed.load(Ordering::Relaxed), 2);

        // An old connection ending does not unbind the newer one.
        relay.unbind("view", &old_tx);
        assert!(
            relay
                .lookup("view")
                .is_some_and(|t| t.same_channel(&new_tx))
        );
    }
}
