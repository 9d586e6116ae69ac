//! The shutdown tree: one cancellation token and one tracker for every long-running task.
//!
//! Async tasks are spawned through [`Shutdown::spawn`]; blocking stages (synthesis, rendering, the
//! media clock) run on named OS threads through [`Shutdown::spawn_thread`], each watched by a
//! tracked task so that [`Shutdown::drain`] waits for threads and tasks alike. Lifecycle: a signal
//! (or the end of a render) cancels the token; every stage notices at its next step, finishes
//! what it owes downstream (EOS, file trailers) and returns; `drain` gives them a bounded time.

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

/// Completion of a stage thread: resolves to its return value, or `None` if it panicked.
pub type ThreadDone<T> = oneshot::Receiver<T>;

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn cancel(&self) {
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Runs `f` on a named OS thread that belongs to this tree. The returned receiver yields the
    /// thread's result; it errors if the thread panicked.
    pub fn spawn_thread<T, F>(&self, name: &str, f: F) -> std::io::Result<ThreadDone<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel::<T>();
        let (watch_tx, watch_rx) = oneshot::channel::<()>();
        std::thread::Builder::new().name(name.to_string()).spawn(move || {
            let result = f();
            let _ = done_tx.send(result);
            drop(watch_tx);
        })?;
        // The watcher keeps the tracker open until the thread has returned.
        self.tracker.spawn(async move {
            let _ = watch_rx.await;
        });
        Ok(done_rx)
    }

    /// Cancels everything and waits up to `timeout` for every task and thread to finish.
    /// Returns false if some did not finish in time.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(timeout, self.tracker.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_threads_and_reports_stragglers() {
        let s = Shutdown::new();
        let token = s.token();
        let done = s
            .spawn_thread("worker", move || {
                while !token.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                42
            })
            .unwrap();
        assert!(s.drain(Duration::from_secs(2)).await);
        assert_eq!(done.await.unwrap(), 42);

        let s = Shutdown::new();
        let _stuck = s.spawn_thread("stuck", || std::thread::sleep(Duration::from_millis(500))).unwrap();
        assert!(!s.drain(Duration::from_millis(50)).await);
    }
}
