//! Session threads: one single-threaded tokio runtime per core, each with
//! its own event loop, and connections dealt to them in turn.
//!
//! A multi-threaded runtime has one event loop (one `epoll`), polled by
//! whichever worker is free; the tasks it wakes mostly run on that same
//! worker. Under a steady request–response load such as RETR after RETR,
//! that kept a whole server on about one core of two while clients waited.
//! Here each thread waits on its own connections' events and runs their
//! tasks, so the cores work in parallel, and a session's socket, buffers
//! and task stay on one core's caches.
//!
//! Sessions are many and short (a mail client's poll), so dealing them in
//! turn spreads the load; nothing moves a session between threads after
//! that. Blocking work (password hashing, large file reads, fsync) goes
//! to each runtime's blocking pool as before.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// The session threads of one server.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped with the pool: each thread then stops its runtime (which
    /// drops the sessions still on it, as a runtime shutting down does).
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `threads` session threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::new();
        let mut stop = Vec::new();
        for i in 0..threads.max(1) {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            std::thread::Builder::new()
                .name(format!("mailbag-session-{i}"))
                .spawn(move || {
                    // Returns when the pool is dropped; the runtime and
                    // whatever still runs on it go with it.
                    let _ = runtime.block_on(rx);
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop,
        })
    }

    /// One thread per core this process may use.
    pub fn per_core() -> std::io::Result<Workers> {
        Workers::start(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Runs `session` on the next thread in turn. Its sockets must be
    /// registered there: pass them as std sockets and convert inside.
    pub fn spawn<F>(&self, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        drop(self.handles[i].spawn(session));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_dealt_to_the_threads_in_turn() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..6 {
            let tx = tx.clone();
            workers.spawn(async move {
                // Each session has a runtime (timers, sockets) where it runs.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let name = std::thread::current().name().map(str::to_string);
                tx.send((i, name)).unwrap();
            });
        }
        let mut seen: Vec<(usize, Option<String>)> = (0..6)
            .map(|_| rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap())
            .collect();
        seen.sort();
        for (i, name) in seen {
            assert_eq!(name, Some(format!("mailbag-session-{}", i % 2)));
        }
    }

    #[test]
    fn dropping_the_pool_stops_its_sessions() {
        let workers = Workers::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        workers.spawn(async move {
            let _held = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        // The session's task is dropped with its runtime: the sender goes.
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
