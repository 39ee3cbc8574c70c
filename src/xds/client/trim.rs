//! Gives the allocator's free memory back to the kernel after a burst of
//! xDS work. Applying a large response (and deciding from it) frees
//! about as much as it allocates; glibc keeps freed memory for reuse and
//! returns only the top of its heaps, so pages left free between
//! long-lived objects stay resident. `malloc_trim(0)` releases every free
//! page of every arena. It is called once a burst is over (no large
//! response and no full decide for [`QUIET`]), from a blocking thread, so
//! neither a burst nor the streams wait for it. Other C libraries:
//! nothing to do.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

/// A response at least this large counts as a burst of work.
pub const LARGE_RESPONSE: usize = 256 << 10;
/// How long no large response arrives before the trim.
pub const QUIET: Duration = Duration::from_millis(200);

/// Shared by every stream of the node.
#[derive(Debug)]
pub struct Trimmer {
    worked: Notify,
    quiet: Duration,
    /// Trims done (`meshlane_xds_heap_trims_total`).
    trims: Counter,
}

impl Trimmer {
    /// Counting trims in `trims`.
    pub fn new(trims: Counter) -> Self {
        Self {
            worked: Notify::new(),
            quiet: QUIET,
            trims,
        }
    }

    /// A response was applied: a large one is a burst of work.
    pub fn note(&self, response_bytes: usize) {
        if response_bytes >= LARGE_RESPONSE {
            self.note_work();
        }
    }

    /// A burst of work was done (a full decide of a pod's resources).
    pub fn note_work(&self) {
        self.worked.notify_one();
    }

    /// Trims after each burst, until dropped (abort the task to stop).
    pub async fn run(self: Arc<Self>) {
        loop {
            self.worked.notified().await;
            // Wait until the burst is over.
            loop {
                tokio::select! {
                    _ = self.worked.notified() => continue,
                    _ = tokio::time::sleep(self.quiet) => break,
                }
            }
            if tokio::task::spawn_blocking(trim).await.is_ok() {
                self.trims.inc();
            }
        }
    }
}

/// Releases the allocator's free pages to the kernel.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_trim_after_a_burst_none_for_small_responses() {
        let quiet = Duration::from_millis(800);
        let t = Arc::new(Trimmer {
            quiet,
            ..Trimmer::new(Counter::default())
        });
        let task = tokio::spawn(Arc::clone(&t).run());
        t.note(LARGE_RESPONSE - 1);
        tokio::time::sleep(quiet * 2).await;
        assert_eq!(t.trims.get(), 0, "small responses are no burst");
        for _ in 0..5 {
            t.note(LARGE_RESPONSE);
            tokio::time::sleep(quiet / 16).await;
        }
        assert_eq!(t.trims.get(), 0, "not while the burst goes on");
        let deadline = tokio::time::Instant::now() + quiet * 10;
        while t.trims.get() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(quiet / 8).await;
        }
        tokio::time::sleep(quiet * 2).await;
        assert_eq!(t.trims.get(), 1, "one trim per burst");
        t.note_work();
        tokio::time::sleep(quiet * 3).await;
        assert_eq!(t.trims.get(), 2, "a full decide is a burst too");
        task.abort();
    }
}
