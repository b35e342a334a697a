//! A TCP proxy that can cut the network between its two sides: while cut, no byte moves either
//! way and no connection is closed, as in a partition (the peers' own deadlines, pings and
//! keepalives must notice). Healing lets the held bytes through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

#[derive(Default)]
struct Gate {
    cut: AtomicBool,
    healed: Notify,
}

impl Gate {
    async fn pass(&self) {
        while self.cut.load(Ordering::Acquire) {
            let healed = self.healed.notified();
            if !self.cut.load(Ordering::Acquire) {
                break;
            }
            healed.await;
        }
    }
}

pub struct CutProxy {
    pub addr: SocketAddr,
    gate: Arc<Gate>,
    tasks: JoinSet<()>,
}

impl CutProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let gate = Arc::new(Gate::default());
        let mut tasks = JoinSet::new();
        let g = gate.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let g = g.clone();
                conns.spawn(async move {
                    g.pass().await;
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, &g), pipe(sr, cw, &g));
                });
            }
        });
        Self { addr, gate, tasks }
    }

    pub fn cut(&self) {
        self.gate.cut.store(true, Ordering::Release);
    }

    pub fn heal(&self) {
        self.gate.cut.store(false, Ordering::Release);
        self.gate.healed.notify_waiters();
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// A TCP front for a service, as a load balancer is: each new connection goes to the current
/// target ([`set_target`](Self::set_target), e.g. another replica once one has died), and
/// [`strand`](Self::strand) leaves the connections made so far open with no byte moving
/// either way (the network a phone just left) while new ones go through.
pub struct Front {
    pub addr: SocketAddr,
    target: Arc<std::sync::Mutex<SocketAddr>>,
    gate: Arc<std::sync::Mutex<Arc<Gate>>>,
    tasks: JoinSet<()>,
}

impl Front {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
        let addr = listener.local_addr().expect("front addr");
        let target = Arc::new(std::sync::Mutex::new(target));
        let gate = Arc::new(std::sync::Mutex::new(Arc::new(Gate::default())));
        let mut tasks = JoinSet::new();
        let (t, g) = (target.clone(), gate.clone());
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let to = *t.lock().expect("front target");
                let gate = g.lock().expect("front gate").clone();
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, &gate), pipe(sr, cw, &gate));
                });
            }
        });
        Self {
            addr,
            target,
            gate,
            tasks,
        }
    }

    /// Where new connections go from now on.
    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock().expect("front target") = target;
    }

    /// Holds every byte of the connections made so far, for good; new ones pass.
    pub fn strand(&self) {
        let fresh = Arc::new(Gate::default());
        let old = std::mem::replace(&mut *self.gate.lock().expect("front gate"), fresh);
        old.cut.store(true, Ordering::Release);
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    gate: &Gate,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        gate.pass().await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Read before the cut, held until it heals.
        gate.pass().await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
