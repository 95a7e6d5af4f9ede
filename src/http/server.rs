//! The accept loop: HTTP/1.1 connections with a deadline for request headers (which also
//! ends idle keep-alive connections), a cap on open connections, and graceful shutdown.
//! (Bodies have their own idle deadline, applied where they are read.) With TLS, each
//! connection's first byte tells a TLS handshake (0x16) from plain HTTP: both on one port.
//!
//! Accepted connections are handed in turn to the connection threads (one per CPU by
//! default), each a single-threaded runtime that serves its connections from start to end:
//! a request and what it waits for (its row's batch, its answer) stay on one thread, with no
//! hand-over between threads and no task moved between cores. What a request starts (a
//! notification, an eager derivative, a checkpoint) runs on its connection thread too, and
//! blocking work (renders, large writes) on that runtime's blocking threads. Nothing moves a
//! busy thread's connections to an idle one: a request that computes for long holds up the
//! other connections of its thread, as in a server with a process per core.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Limits;

pub async fn run(
    listener: TcpListener,
    app: crate::http::App,
    limits: &Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut threads = ConnectionThreads::start(limits.connection_threads);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let header_timeout = Duration::from_secs(limits.header_timeout_secs.max(1));
    // How long shutdown waits for requests in flight.
    let drain = Duration::from_secs(limits.shutdown_timeout_secs);
    let graceful = GracefulShutdown::new();
    // The connections' tasks: those still running past the shutdown deadline are aborted.
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: let it clear rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the connection limit: closed at once (no request is read).
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        // To the next connection thread, re-registered with its runtime; on this runtime
        // when there is none.
        let handle = threads.next();
        let stream = match handle {
            Some(_) => match stream.into_std() {
                Ok(s) => Conn::Moved(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hand a connection over");
                    continue;
                }
            },
            None => Conn::Here(stream),
        };
        let serve = async move {
            let stream = match stream {
                Conn::Here(s) => s,
                Conn::Moved(s) => match tokio::net::TcpStream::from_std(s) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot take a connection over");
                        return;
                    }
                },
            };
            match tls {
                None => serve_conn(stream, app, header_timeout, watcher).await,
                Some(acceptor) => {
                    // The first byte, within the header deadline: a handshake or HTTP.
                    let mut first = [0u8; 1];
                    let peeked =
                        tokio::time::timeout(header_timeout, stream.peek(&mut first)).await;
                    match peeked {
                        Ok(Ok(1)) if first[0] == 0x16 => {
                            let shake =
                                tokio::time::timeout(header_timeout, acceptor.accept(stream));
                            match shake.await {
                                Ok(Ok(tls_stream)) => {
                                    serve_conn(tls_stream, app, header_timeout, watcher).await
                                }
                                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        }
                        Ok(Ok(1)) => serve_conn(stream, app, header_timeout, watcher).await,
                        _ => {}
                    }
                }
            }
            drop(permit);
        };
        match handle {
            Some(h) => conns.spawn_on(serve, h),
            None => conns.spawn(serve),
        };
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: requests still in flight after {drain:?} are cut off");
        conns.abort_all();
    }
    // The connection threads end once the requests in flight were answered or cut off.
    threads.stop().await;
}

/// An accepted connection: still registered with this runtime, or taken out of it to be
/// registered with a connection thread's.
enum Conn {
    Here(tokio::net::TcpStream),
    Moved(std::net::TcpStream),
}

/// A hook run by every runtime thread as it parks (the allocator's; see [`on_thread_park`]).
static PARK_HOOK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what the connection threads run each time they park, as the main runtime's threads
/// do (set once, before serving).
pub fn on_thread_park(hook: fn()) {
    let _ = PARK_HOOK.set(hook);
}

/// The connection threads: single-threaded runtimes that each serve the connections handed
/// to them. They stop when this is dropped.
struct ConnectionThreads {
    handles: Vec<tokio::runtime::Handle>,
    /// Dropped to stop the threads' runtimes.
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Connections handed out so far (the next goes to this modulo the threads).
    turn: usize,
}

/// Connection threads at most, whatever is configured.
const MOST_THREADS: usize = 256;

impl ConnectionThreads {
    /// `n` threads (0: one per CPU). A thread that cannot be started is done without: with
    /// none, connections are served on the calling runtime.
    fn start(n: usize) -> ConnectionThreads {
        let n = match n {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(MOST_THREADS);
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (tell, told) = std::sync::mpsc::sync_channel(1);
            let started = std::thread::Builder::new()
                .name(format!("nephos-conn-{i}"))
                .spawn(move || {
                    let mut builder = tokio::runtime::Builder::new_current_thread();
                    builder.enable_all();
                    if let Some(hook) = PARK_HOOK.get().copied() {
                        builder.on_thread_park(hook);
                    }
                    let runtime = match builder.build() {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot start a connection thread");
                            return;
                        }
                    };
                    let _ = tell.send(runtime.handle().clone());
                    runtime.block_on(async move {
                        let _ = stopped.await;
                    });
                });
            let Ok(thread) = started else {
                continue;
            };
            if let Ok(handle) = told.recv() {
                handles.push(handle);
                stops.push(stop);
                threads.push(thread);
            }
        }
        ConnectionThreads {
            handles,
            stops,
            threads,
            turn: 0,
        }
    }

    /// Stops the threads' runtimes (what still runs on them is dropped) and waits a little
    /// for the threads to end.
    async fn stop(self) {
        drop(self.stops);
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), joined).await;
    }

    /// The thread whose turn it is (none when there are no threads).
    fn next(&mut self) -> Option<&tokio::runtime::Handle> {
        if self.handles.is_empty() {
            return None;
        }
        let h = &self.handles[self.turn % self.handles.len()];
        self.turn = self.turn.wrapping_add(1);
        Some(h)
    }
}

/// The most a connection reads ahead, and so the largest request head (request line and
/// headers; hyper answers 431 and closes the connection past it; URIs past 64 KiB already got
/// 414). hyper's default (about 400 KiB) has each body read allocate a fresh buffer of that
/// order, faulted in page by page.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Serves HTTP/1.1 on one connection (plain or TLS) until it ends.
async fn serve_conn<I>(io: I, app: crate::http::App, header_timeout: Duration, watcher: Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(READ_BUFFER_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    let _ = watcher.watch(conn).await;
}

#[cfg(test)]
mod tests {
    use super::ConnectionThreads;

    /// Connections go to the connection threads in turn, and what is spawned for one runs on
    /// its thread.
    #[test]
    fn connections_go_to_the_threads_in_turn() {
        let mut threads = ConnectionThreads::start(2);
        assert_eq!(threads.handles.len(), 2);
        let names: Vec<String> = (0..4)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel();
                threads.next().unwrap().spawn(async move {
                    let name = std::thread::current().name().map(String::from);
                    let _ = tx.send(name.unwrap_or_default());
                });
                rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap()
            })
            .collect();
        assert_eq!(
            names,
            [
                "nephos-conn-0",
                "nephos-conn-1",
                "nephos-conn-0",
                "nephos-conn-1"
            ]
        );
        // With no threads asked for, one per CPU.
        let default = ConnectionThreads::start(0);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(default.handles.len(), cpus);
    }
}
