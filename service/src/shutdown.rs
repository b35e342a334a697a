//! Graceful shutdown (DESIGN §6): SIGTERM turns `/readyz` false and starts the drain; the service
//! stops taking new work, lets existing work finish until its deadline, then exits 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Shared readiness and drain state of one service process. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    ready: Arc<AtomicBool>,
    /// A dependency the service needs for new work is down (signal's Redis).
    dependency_down: Arc<AtomicBool>,
    drain: CancellationToken,
}

impl Shutdown {
    /// Not ready until the service says its listeners are up.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// What `/readyz` reports: listeners up, dependencies up, and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_dependency_down() && !self.is_draining()
    }

    /// Marks a dependency down (or up again): `/readyz` answers 503 meanwhile, and the
    /// service goes on serving what it holds.
    pub fn set_dependency_down(&self, down: bool) {
        self.dependency_down.store(down, Ordering::Release);
    }

    pub fn is_dependency_down(&self) -> bool {
        self.dependency_down.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Starts the drain (what SIGTERM does); idempotent.
    pub fn begin_drain(&self) {
        self.drain.cancel();
    }

    /// Resolves when the drain has begun.
    pub async fn draining(&self) {
        self.drain.cancelled().await;
    }

    /// Resolves `grace` after the drain began: the deadline for existing work.
    pub async fn deadline(&self, grace: Duration) {
        self.draining().await;
        tokio::time::sleep(grace).await;
    }

    /// A token cancelled when the drain begins, for tasks that select on it.
    pub fn token(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// Begins the drain on SIGTERM or SIGINT. Must be called inside a tokio runtime.
    pub fn listen_for_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let term = async {
                #[cfg(unix)]
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        std::future::pending::<()>().await;
                    }
                }
                #[cfg(not(unix))]
                std::future::pending::<()>().await;
            };
            tokio::select! {
                _ = term => tracing::info!("SIGTERM: draining"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
                _ = this.draining() => return,
            }
            this.begin_drain();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_between_start_and_drain() {
        let s = Shutdown::new();
        assert!(!s.is_ready());
        s.set_ready();
        assert!(s.is_ready());
        s.clone().begin_drain();
        assert!(!s.is_ready());
        tokio::time::timeout(Duration::from_secs(5), s.draining())
            .await
            .expect("drain observed");
    }
}
