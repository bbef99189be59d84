//! Giving memory back after a burst. glibc's malloc keeps what a burst
//! freed (1 MiB bodies at hundreds of connections) in its per-thread
//! arenas, so the process stayed at several hundred MiB resident long after
//! the load; `malloc_trim` returns the free pages of every arena to the
//! system. Run every few seconds off the async workers: it walks the
//! arenas, and costs nothing measurable when there is nothing to return.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Trims the allocator every `every` until `cancel`.
pub async fn give_back_freed_memory(every: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = cancel.cancelled() => return,
        }
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim has no preconditions; it only releases free
    // memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
