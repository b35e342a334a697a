//! Secrets and certificates re-read without a restart.
//!
//! Kubernetes updates a mounted Secret by writing a new timestamped directory and swapping the
//! `..data` symlink beside the files, so the file itself never sees a write: the directory that
//! holds each file is watched (inotify, through `notify`), and SIGHUP forces a re-read for
//! mounts that are not watched (or not watchable). A file whose content did not change is not
//! parsed again; one that fails to parse keeps the previous value and says why, once per
//! content, so a half-written file or a typo never takes keys away from a running service.
//!
//! Readers hold a [`Live`] handle and take the current value per use (one atomic load, no
//! lock); the [`Reloader`] swaps it.

use std::collections::hash_map::DefaultHasher;
use std::fmt::Display;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// How long the reloader waits for a burst of file events to settle before reading: a
/// Secret update is several renames and a plain `echo > file` is a truncate then a write.
pub const SETTLE: Duration = Duration::from_millis(200);

/// A value that can be replaced while the service runs. Cheap to clone; clones share the
/// value.
pub struct Live<T>(Arc<ArcSwap<T>>);

impl<T> Live<T> {
    pub fn new(value: T) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(value)))
    }

    /// The current value, for one use (a request, a handshake).
    pub fn get(&self) -> arc_swap::Guard<Arc<T>> {
        self.0.load()
    }

    /// The current value, to keep.
    pub fn get_full(&self) -> Arc<T> {
        self.0.load_full()
    }

    pub fn store(&self, value: T) {
        self.0.store(Arc::new(value));
    }
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> From<Arc<T>> for Live<T> {
    fn from(value: Arc<T>) -> Self {
        Self(Arc::new(ArcSwap::new(value)))
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// What one check did for one watched set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The files hold what was last read.
    Unchanged,
    Reloaded,
    /// The previous value is kept; the reason names the file, never a secret.
    Failed(String),
}

type Apply = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

struct Watched {
    what: &'static str,
    files: Vec<PathBuf>,
    /// Fingerprint of the content last tried, good or bad: a bad file is reported once, not at
    /// every event in its directory.
    tried: u64,
    apply: Apply,
}

#[derive(Clone)]
struct ReloadMetrics {
    last_success: GaugeVec,
    successful: IntGaugeVec,
    reloads: IntCounterVec,
}

impl ReloadMetrics {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            last_success: GaugeVec::new(
                Opts::new(
                    "iceway_reload_last_success_timestamp_seconds",
                    "When each set of secrets or certificates was last read successfully (the start counts).",
                ),
                &["what"],
            )?,
            successful: IntGaugeVec::new(
                Opts::new(
                    "iceway_reload_successful",
                    "1 when the last read of each set succeeded, 0 while its files fail to parse and the previous set is kept.",
                ),
                &["what"],
            )?,
            reloads: IntCounterVec::new(
                Opts::new(
                    "iceway_reloads_total",
                    "Re-reads of changed secret or certificate files, by outcome (ok, error).",
                ),
                &["what", "result"],
            )?,
        })
    }
}

/// Watches the files behind [`Live`] values and replaces the values when the files change.
#[derive(Default)]
pub struct Reloader {
    items: Vec<Watched>,
    metrics: Option<ReloadMetrics>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field(
                "watching",
                &self.items.iter().map(|i| i.what).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Reloader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Re-runs `load` into `live` when any of `files` changes. `live` already holds what `load`
    /// returned at start (the service refuses to start on a bad file; only later reads are
    /// lenient). `what` is a metric label: a fixed name, never a path.
    pub fn watch<T, E, F>(
        &mut self,
        what: &'static str,
        files: Vec<PathBuf>,
        live: &Live<T>,
        load: F,
    ) where
        T: Send + Sync + 'static,
        E: Display,
        F: Fn() -> Result<T, E> + Send + Sync + 'static,
    {
        let live = live.clone();
        let tried = fingerprint(&files);
        self.items.push(Watched {
            what,
            files,
            tried,
            apply: Box::new(move || {
                live.store(load().map_err(|e| e.to_string())?);
                Ok(())
            }),
        });
    }

    /// Registers the reload metrics, with a series for every watched set from the start.
    pub fn register_metrics(&mut self, registry: &Registry) -> prometheus::Result<()> {
        let m = ReloadMetrics::new()?;
        registry.register(Box::new(m.last_success.clone()))?;
        registry.register(Box::new(m.successful.clone()))?;
        registry.register(Box::new(m.reloads.clone()))?;
        let now = unix_now();
        for item in &self.items {
            m.last_success.with_label_values(&[item.what]).set(now);
            m.successful.with_label_values(&[item.what]).set(1);
            for result in ["ok", "error"] {
                m.reloads.with_label_values(&[item.what, result]);
            }
        }
        self.metrics = Some(m);
        Ok(())
    }

    /// Reads every set whose files changed since they were last tried (every set when
    /// `force`, as on SIGHUP) and swaps in what parses.
    pub fn check(&mut self, force: bool) -> Vec<(&'static str, Outcome)> {
        let mut outcomes = Vec::with_capacity(self.items.len());
        for item in &mut self.items {
            let now = fingerprint(&item.files);
            if !force && now == item.tried {
                outcomes.push((item.what, Outcome::Unchanged));
                continue;
            }
            item.tried = now;
            let outcome = match (item.apply)() {
                Ok(()) => {
                    tracing::info!(what = item.what, "reloaded");
                    Outcome::Reloaded
                }
                Err(why) => {
                    tracing::warn!(what = item.what, error = %why, "reload failed; keeping the previous set");
                    Outcome::Failed(why)
                }
            };
            if let Some(m) = &self.metrics {
                let ok = outcome == Outcome::Reloaded;
                let result = if ok { "ok" } else { "error" };
                m.reloads.with_label_values(&[item.what, result]).inc();
                m.successful
                    .with_label_values(&[item.what])
                    .set(i64::from(ok));
                if ok {
                    m.last_success
                        .with_label_values(&[item.what])
                        .set(unix_now());
                }
            }
            outcomes.push((item.what, outcome));
        }
        outcomes
    }

    /// The directories to watch: each file's own, and that of the file a symlink points to.
    fn directories(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for file in self.items.iter().flat_map(|i| &i.files) {
            let real = std::fs::canonicalize(file).ok();
            for path in std::iter::once(file.as_path()).chain(real.as_deref()) {
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                    _ => PathBuf::from("."),
                };
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
        dirs
    }

    /// Watches in the background until the returned guard is dropped. Nothing to watch: no
    /// task, and SIGHUP keeps its default meaning.
    pub fn spawn(mut self) -> ReloadTask {
        if self.items.is_empty() {
            return ReloadTask(None);
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let watcher = watch_directories(&self.directories(), tx);
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot handle SIGHUP; reloading on file changes only");
            });
        let task = tokio::spawn(async move {
            let _watcher = watcher;
            let mut hangup = hangup.ok();
            loop {
                let force = tokio::select! {
                    event = rx.recv() => {
                        if event.is_none() {
                            // The watcher is gone (it could not start): SIGHUP only.
                            std::future::pending::<()>().await;
                        }
                        tokio::time::sleep(SETTLE).await;
                        while rx.try_recv().is_ok() {}
                        false
                    }
                    Some(()) = async {
                        match hangup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        tracing::info!("SIGHUP: re-reading secrets and certificates");
                        true
                    }
                };
                self.check(force);
            }
        });
        ReloadTask(Some(task))
    }
}

/// Stops the reloader when dropped (the service's `run` holds it).
#[derive(Debug)]
pub struct ReloadTask(Option<tokio::task::JoinHandle<()>>);

impl Drop for ReloadTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

fn watch_directories(
    dirs: &[PathBuf],
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            // A full channel already holds a wake-up, which is all an event means here.
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch files; reloading on SIGHUP only"))
    .ok()?;
    for dir in dirs {
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; reload it with SIGHUP");
        }
    }
    Some(watcher)
}

/// A change detector over the files' bytes (or why they cannot be read), not a secure hash:
/// it only decides whether parsing again is worth it.
fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut h = DefaultHasher::new();
    for file in files {
        match std::fs::read(file) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => e.kind().hash(&mut h),
        }
    }
    h.finish()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(path: &Path) -> Result<u32, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        text.trim()
            .parse()
            .map_err(|_| format!("{}: not a number", path.display()))
    }

    fn reloader(dir: &tempfile::TempDir) -> (Reloader, Live<u32>, PathBuf) {
        let file = dir.path().join("n");
        std::fs::write(&file, "1").expect("test set-up");
        let live = Live::new(parse(&file).expect("test set-up"));
        let mut r = Reloader::new();
        let f = file.clone();
        r.watch("n", vec![file.clone()], &live, move || parse(&f));
        (r, live, file)
    }

    #[test]
    fn a_changed_file_is_swapped_in_and_an_unchanged_one_is_not_read_again() {
        let dir = tempfile::tempdir().expect("test set-up");
        let (mut r, live, file) = reloader(&dir);
        assert_eq!(r.check(false), vec![("n", Outcome::Unchanged)]);
        std::fs::write(&file, "2").expect("test set-up");
        assert_eq!(r.check(false), vec![("n", Outcome::Reloaded)]);
        assert_eq!(**live.get(), 2);
        assert_eq!(r.check(false), vec![("n", Outcome::Unchanged)]);
        assert_eq!(r.check(true), vec![("n", Outcome::Reloaded)]);
    }

    #[test]
    fn a_bad_file_keeps_the_old_value_is_reported_once_and_its_fix_is_read() {
        let dir = tempfile::tempdir().expect("test set-up");
        let (mut r, live, file) = reloader(&dir);
        let registry = Registry::new();
        r.register_metrics(&registry).expect("test set-up");
        std::fs::write(&file, "two").expect("test set-up");
        let out = r.check(false);
        assert!(
            matches!(&out[0].1, Outcome::Failed(why) if why.contains("not a number")),
            "{out:?}"
        );
        assert_eq!(**live.get(), 1);
        assert_eq!(r.check(false), vec![("n", Outcome::Unchanged)]);
        let text = crate::metrics::encode(&registry);
        assert!(
            text.contains(r#"iceway_reload_successful{what="n"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"iceway_reloads_total{result="error",what="n"} 1"#),
            "{text}"
        );
        std::fs::remove_file(&file).expect("test set-up");
        assert!(matches!(r.check(false)[0].1, Outcome::Failed(_)));
        std::fs::write(&file, "3").expect("test set-up");
        assert_eq!(r.check(false), vec![("n", Outcome::Reloaded)]);
        assert_eq!(**live.get(), 3);
        let text = crate::metrics::encode(&registry);
        assert!(
            text.contains(r#"iceway_reload_successful{what="n"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"iceway_reloads_total{result="ok",what="n"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn series_exist_before_any_reload() {
        let dir = tempfile::tempdir().expect("test set-up");
        let (mut r, _live, _) = reloader(&dir);
        let registry = Registry::new();
        r.register_metrics(&registry).expect("test set-up");
        let text = crate::metrics::encode(&registry);
        for series in [
            r#"iceway_reloads_total{result="ok",what="n"} 0"#,
            r#"iceway_reloads_total{result="error",what="n"} 0"#,
            r#"iceway_reload_successful{what="n"} 1"#,
            "iceway_reload_last_success_timestamp_seconds{what=\"n\"}",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }

    /// What a Kubernetes Secret volume does on update: a new data directory, then the `..data`
    /// symlink renamed over the old one; the file the service opened is a symlink through it.
    #[tokio::test]
    async fn a_kubernetes_style_symlink_swap_is_seen_without_a_signal() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("test set-up");
        let v1 = dir.path().join("..2026_12_01_v1");
        std::fs::create_dir(&v1).expect("test set-up");
        std::fs::write(v1.join("n"), "1").expect("test set-up");
        symlink("..2026_12_01_v1", dir.path().join("..data")).expect("test set-up");
        let file = dir.path().join("n");
        symlink("..data/n", &file).expect("test set-up");
        let live = Live::new(parse(&file).expect("test set-up"));
        let mut r = Reloader::new();
        let f = file.clone();
        r.watch("n", vec![file], &live, move || parse(&f));
        let _task = r.spawn();

        let v2 = dir.path().join("..2026_12_01_v2");
        std::fs::create_dir(&v2).expect("test set-up");
        std::fs::write(v2.join("n"), "2").expect("test set-up");
        symlink("..2026_12_01_v2", dir.path().join("..data_tmp")).expect("test set-up");
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data"))
            .expect("test set-up");
        std::fs::remove_dir_all(&v1).expect("test set-up");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while **live.get() != 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "swap not seen in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
