//! A target's dispatcher runs supervised: should it panic (a bug, since no
//! input may reach one), that target alone stops for a moment and starts
//! again with its breaker, flow control and shard view as they were, while
//! the admin API and every other target go on.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Pause before a restart, so that a panic on every start does not spin.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Runs `start()` until it returns, starting it again after each panic
/// (`before_restart` first puts the shared state right), until `cancel`.
pub async fn supervise<F, Fut>(
    name: String,
    cancel: CancellationToken,
    mut start: F,
    mut before_restart: impl FnMut(),
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut restarts: u64 = 0;
    loop {
        match tokio::spawn(start()).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                restarts += 1;
                let panic = e.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                tracing::error!(dispatcher = %name, restarts, panic = %message,
                    "dispatcher panicked; restarting it (this is a bug: please report it)");
            }
            // Cancelled from outside: the runtime is shutting down.
            Err(_) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(RESTART_DELAY) => {}
            () = cancel.cancelled() => return,
        }
        before_restart();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_until_it_returns() {
        let starts = Arc::new(AtomicU32::new(0));
        let fixes = Arc::new(AtomicU32::new(0));
        let (s, f) = (Arc::clone(&starts), Arc::clone(&fixes));
        supervise(
            "r/t".into(),
            CancellationToken::new(),
            move || {
                let n = s.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        panic!("boom {n}");
                    }
                }
            },
            move || {
                f.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await;
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert_eq!(fixes.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_ends_the_restarts() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        supervise("r/t".into(), cancel, || async { panic!("always") }, || {}).await;
    }
}
