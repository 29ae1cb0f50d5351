//! The cache's background tasks, counted: every task the cache spawns (the dispatcher, one per
//! batch, the connection keepers, the publish and refresh loops) holds a token while it runs,
//! so shutdown can wait until the last one has finished (as mini-redis's `shutdown_complete`
//! channel does). A task holds its token, never a handle on the cache: the count does not keep
//! the cache alive.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The count of running tasks (cheap to clone; every clone counts the same tasks).
#[derive(Clone, Debug)]
pub(crate) struct Tasks(Arc<watch::Sender<usize>>);

impl Tasks {
    pub(crate) fn new() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }

    /// Spawns `task`, counted until it finishes or is aborted.
    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.0.send_modify(|n| *n += 1);
        let token = Token(Arc::clone(&self.0));
        tokio::spawn(async move {
            // Dropped when the task ends, and when it is aborted (the future is dropped).
            let _token = token;
            task.await;
        })
    }

    /// Resolves once no counted task is running. Holds only the count.
    pub(crate) fn all_finished(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut running = self.0.subscribe();
        async move {
            // The sender lives as long as any task or this future: the wait cannot fail.
            let _ = running.wait_for(|&n| n == 0).await;
        }
    }
}

/// A running task's place in the count.
struct Token(Arc<watch::Sender<usize>>);

impl Drop for Token {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}
