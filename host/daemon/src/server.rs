//! The HTTP server under the router: accepting connections, each served
//! by hyper's HTTP/1 with a deadline for the request head, a cap on open
//! connections (at the cap, the oldest connection that has not sent a
//! whole request head makes room; with none such, the new one gets a 503),
//! and a shutdown with a hard bound.
//!
//! axum's own `serve` has no header-read timeout and no connection limit,
//! and its graceful shutdown waits for every request however long it takes
//! (an upload may take an hour): so a client that never finishes its
//! headers held a connection and a file descriptor for ever, enough of them
//! starved `/health`, and a slow upload held up SIGTERM.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::App;

/// What a connection past the cap is told before it is closed: a 503 with
/// the API's JSON error body.
fn too_many_connections() -> &'static [u8] {
    static RESPONSE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    RESPONSE.get_or_init(|| {
        let body = serde_json::json!({"error": {"code": "unavailable",
            "message": "the daemon is at its connection limit; try again"}})
        .to_string();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    })
}

/// How long an accept waits for the slot of a connection it closed.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// The open connections, oldest first, and whether each has sent a whole
/// request head yet.
#[derive(Debug, Default)]
struct Open {
    next: AtomicU64,
    connections: Mutex<BTreeMap<u64, Handles>>,
}

/// Whether a connection has sent a whole request head, and what closes it.
type Handles = (Arc<AtomicBool>, Arc<Notify>);

/// One open connection's entry, removed when it is dropped.
struct Tracked {
    id: u64,
    open: Arc<Open>,
    /// Set once a whole request head arrived.
    spoke: Arc<AtomicBool>,
    /// Closes it.
    evict: Arc<Notify>,
}

impl Open {
    fn track(self: &Arc<Self>) -> Tracked {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (spoke, evict) = (Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
        self.connections.lock().expect("lock").insert(id, (spoke.clone(), evict.clone()));
        Tracked { id, open: self.clone(), spoke, evict }
    }

    /// Close the oldest connection that has not sent a whole request head:
    /// a flood of those cannot keep out a client that sends its request.
    /// Whether there was one.
    fn evict_oldest_silent(&self) -> bool {
        let mut connections = self.connections.lock().expect("lock");
        let silent =
            connections.iter().find(|(_, (spoke, _))| !spoke.load(Ordering::Relaxed)).map(|(id, _)| *id);
        match silent.and_then(|id| connections.remove(&id)) {
            Some((_, evict)) => {
                evict.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.open.connections.lock().expect("lock").remove(&self.id);
    }
}

/// Serve `router` on `listener` until `stop` turns true; then stop
/// accepting, let requests in flight finish for up to the limits' shutdown
/// grace, and drop what still runs (its handlers are cancelled; an ingest
/// already handed to the vault finishes on its own thread).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = &app.config.limits;
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(Some(limits.header_read_timeout()));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(Open::default());
    let (drain, draining) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection that broke off
                // before it was accepted: wait a moment and go on.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            // Full: make room by closing the oldest connection that has not
            // sent a whole request head yet, if there is one.
            Err(_) if open.evict_oldest_silent() => {
                tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        let Some(slot) = slot else {
            app.metrics.refusal("connections");
            // A fresh socket's send buffer is empty: this does not block.
            let _ = stream.try_write(too_many_connections());
            continue;
        };
        let tracked = open.track();
        let (spoke, inner) = (tracked.spoke.clone(), TowerToHyperService::new(router.clone()));
        let service = hyper::service::service_fn(move |request| {
            spoke.store(true, Ordering::Relaxed);
            hyper::service::Service::call(&inner, request)
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let mut draining = draining.clone();
        connections.spawn(async move {
            let _slot = slot;
            let evicted = tracked.evict.clone();
            let _tracked = tracked;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "a connection ended with an error");
                    }
                    return;
                }
                // It never finished a request head: nothing to finish.
                _ = evicted.notified() => return,
                _ = draining.wait_for(|drain| *drain) => {}
            }
            // Finish the request in flight, then close.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    drop(listener);
    let _ = drain.send(true);
    let grace = limits.shutdown_grace();
    let drained =
        tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            ?grace,
            connections = connections.len(),
            "requests still running at the end of the shutdown grace are dropped"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}
