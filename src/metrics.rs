//! Prometheus metrics at `/metrics` (text exposition format, through `prometheus-client`):
//! requests by route, method and status, latency histograms by route, bytes in and out,
//! uploads in flight, chunked parts being written, derived renders, notification attempts,
//! the database pools and blob store errors. Labels come from fixed lists, so no request can
//! grow the number of series.

use std::sync::Arc;

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::storage::{BlobSink, BlobStore, ByteRange, ByteStream, TempBlob};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
    state: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 33 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 17,
    ))
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    bytes_in: Counter,
    bytes_out: Counter,
    uploads_in_flight: Gauge,
    notifications: Family<OutcomeLabels, Counter>,
    store_errors: Counter,
    streamed_uploads: Counter,
    chunk_parts: Gauge,
    renders_started: Counter,
    derived_served: Counter,
    renders_in_progress: Gauge,
    pool: Family<PoolLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("nephos");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's head to its answer's head, by route",
            latency.clone(),
        );
        let bytes_in = Counter::default();
        registry.register(
            "http_request_bytes",
            "Request body bytes (as their Content-Length gives)",
            bytes_in.clone(),
        );
        let bytes_out = Counter::default();
        registry.register(
            "http_response_bytes",
            "Response body bytes (answers with a known length)",
            bytes_out.clone(),
        );
        let uploads_in_flight = Gauge::default();
        registry.register(
            "uploads_in_flight",
            "Upload API calls (upload, including chunked parts) being answered",
            uploads_in_flight.clone(),
        );
        let chunk_parts = Gauge::default();
        registry.register(
            "chunk_parts_in_flight",
            "Parts of chunked uploads being written",
            chunk_parts.clone(),
        );
        let notifications = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "notification_attempts",
            "Webhook deliveries tried, by outcome (delivered, refused, failed)",
            notifications.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "blob_store_errors",
            "Blob store operations that failed",
            store_errors.clone(),
        );
        let streamed_uploads = Counter::default();
        registry.register(
            "blob_store_streamed_uploads",
            "Uploads sent to the object store while their body arrived",
            streamed_uploads.clone(),
        );
        let renders_started = Counter::default();
        registry.register(
            "derived_renders",
            "Derived images rendered (one per derivative, however many asked)",
            renders_started.clone(),
        );
        let derived_served = Counter::default();
        registry.register(
            "derived_served_stored",
            "Derived images served as stored",
            derived_served.clone(),
        );
        let renders_in_progress = Gauge::default();
        registry.register(
            "derived_renders_in_progress",
            "Derived images being rendered",
            renders_in_progress.clone(),
        );
        let pool = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Database connections by pool (read, write) and state (idle, busy)",
            pool.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            bytes_in,
            bytes_out,
            uploads_in_flight,
            notifications,
            store_errors,
            streamed_uploads,
            chunk_parts,
            renders_started,
            derived_served,
            renders_in_progress,
            pool,
        }
    }
}

/// Counts an upload in flight while it lives.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// One answered request.
    pub fn observe(
        &self,
        route: &'static str,
        method: &axum::http::Method,
        status: u16,
        seconds: f64,
        bytes_in: u64,
        bytes_out: Option<u64>,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method: method_label(method),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
        self.bytes_in.inc_by(bytes_in);
        if let Some(n) = bytes_out {
            self.bytes_out.inc_by(n);
        }
    }

    /// An upload stored in the object store while its body arrived.
    pub fn upload_streamed(&self) {
        self.streamed_uploads.inc();
    }

    /// Marks an upload in flight until the guard is dropped.
    pub fn upload_started(&self) -> InFlight {
        self.uploads_in_flight.inc();
        InFlight(self.uploads_in_flight.clone())
    }

    /// Wraps a blob store so that its failures are counted.
    pub fn counting(&self, inner: Arc<dyn BlobStore>) -> Arc<dyn BlobStore> {
        Arc::new(CountingStore {
            inner,
            errors: self.store_errors.clone(),
        })
    }

    /// One webhook attempt: `delivered`, `refused` (an answer other than 2xx) or `failed`.
    pub fn notification(&self, outcome: &'static str) {
        self.notifications
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The text exposition of every metric, with the gauges read from the server's state.
    pub fn render(&self, state: &crate::state::AppState) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let renders = &state.renders;
        let catch_up = |counter: &Counter, now: u64| {
            let seen = counter.get();
            if now > seen {
                counter.inc_by(now - seen);
            }
        };
        catch_up(&self.renders_started, renders.started.load(Relaxed));
        catch_up(&self.derived_served, renders.served_stored.load(Relaxed));
        self.renders_in_progress.set(renders.in_progress() as i64);
        self.chunk_parts.set(state.chunks.parts_in_flight() as i64);
        for (pool, idle, busy) in state.meta.pool_stats() {
            for (kind, n) in [("idle", idle), ("busy", busy)] {
                self.pool
                    .get_or_create(&PoolLabels { pool, state: kind })
                    .set(n as i64);
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Upload API actions (`/v1_1/<cloud>[/<resource_type>]/<action>`).
const ACTIONS: &[&str] = &[
    "upload",
    "destroy",
    "rename",
    "explicit",
    "tags",
    "context",
    "text",
    "sprite",
    "multi",
    "explode",
    "create_slideshow",
    "generate_archive",
    "metadata",
    "download",
    "delete_by_token",
    "download_backup",
];

/// The route a path belongs to, from a fixed list: Upload API actions by name, Admin API
/// collections as `admin:<name>`, deliveries, health and the rest.
pub fn route_of(path: &str) -> &'static str {
    // The first eight segments tell every route (the patterns below look at no more).
    let mut first = [""; 8];
    let mut n = 0;
    for (slot, seg) in first
        .iter_mut()
        .zip(path.trim_start_matches('/').split('/'))
    {
        *slot = seg;
        n += 1;
    }
    match &first[..n] {
        ["health"] => "health",
        ["metrics"] => "metrics",
        ["v1_1", _cloud, rest @ ..] => {
            let action = match rest {
                [a] => Some(*a),
                [_, a] | [_, a, ..] if ACTIONS.contains(a) => Some(*a),
                _ => None,
            };
            if let Some(a) = action.and_then(|a| ACTIONS.iter().find(|x| **x == a)) {
                return a;
            }
            match rest.first() {
                Some(first) => ADMIN_ROUTES
                    .iter()
                    .find(|r| r.strip_prefix("admin:") == Some(*first))
                    .copied()
                    .unwrap_or("admin:other"),
                None => "other",
            }
        }
        [_cloud, "image" | "video" | "raw", ..] => "delivery",
        _ => "other",
    }
}

/// Admin API collections (`/v1_1/<cloud>/<collection>…`), as their route labels.
const ADMIN_ROUTES: &[&str] = &[
    "admin:ping",
    "admin:config",
    "admin:usage",
    "admin:resources",
    "admin:resources_by_asset_folder",
    "admin:tags",
    "admin:folders",
    "admin:transformations",
    "admin:upload_presets",
    "admin:upload_mappings",
    "admin:metadata_fields",
    "admin:metadata_rules",
    "admin:streaming_profiles",
    "admin:derived_resources",
    "admin:triggers",
];

/// A blob store that counts the failures of the one it wraps.
pub struct CountingStore {
    pub inner: Arc<dyn BlobStore>,
    pub errors: Counter,
}

impl CountingStore {
    fn count<T>(&self, r: std::io::Result<T>) -> std::io::Result<T> {
        if r.is_err() {
            self.errors.inc();
        }
        r
    }
}

#[async_trait]
impl BlobStore for CountingStore {
    async fn put(&self, key: &str, blob: TempBlob) -> std::io::Result<()> {
        self.count(self.inner.put(key, blob).await)
    }
    async fn size(&self, key: &str) -> std::io::Result<Option<u64>> {
        self.count(self.inner.size(key).await)
    }
    async fn read(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> std::io::Result<Option<ByteStream>> {
        self.count(self.inner.read(key, range).await)
    }
    async fn delete(&self, key: &str) -> std::io::Result<()> {
        self.count(self.inner.delete(key).await)
    }
    async fn keys(&self) -> std::io::Result<Vec<String>> {
        self.count(self.inner.keys().await)
    }
    async fn modified(&self, key: &str) -> std::io::Result<Option<std::time::SystemTime>> {
        self.count(self.inner.modified(key).await)
    }
    async fn health(&self) -> std::io::Result<()> {
        self.count(self.inner.health().await)
    }
    fn streams(&self) -> bool {
        self.inner.streams()
    }
    async fn sink(
        &self,
        key: &str,
        len: Option<u64>,
    ) -> std::io::Result<Option<Box<dyn BlobSink>>> {
        self.count(self.inner.sink(key, len).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_come_from_fixed_lists() {
        assert!(ADMIN_ROUTES.iter().all(|r| r.starts_with("admin:")));
        let cases = [
            ("/v1_1/demo/image/upload", "upload"),
            ("/v1_1/demo/upload", "upload"),
            ("/v1_1/demo/raw/destroy", "destroy"),
            ("/v1_1/demo/resources/image/upload/x", "admin:resources"),
            ("/v1_1/demo/tags/image", "admin:tags"),
            ("/v1_1/demo/unheard_of/x", "admin:other"),
            ("/demo/image/upload/w_10/a.png", "delivery"),
            ("/health", "health"),
            ("/favicon.ico", "other"),
        ];
        for (path, route) in cases {
            assert_eq!(route_of(path), route, "{path}");
        }
    }

    #[test]
    fn the_exposition_has_the_families() {
        let m = Metrics::default();
        m.observe(
            "upload",
            &axum::http::Method::POST,
            200,
            0.003,
            1000,
            Some(400),
        );
        m.notification("delivered");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        assert!(out.contains(
            "nephos_http_requests_total{route=\"upload\",method=\"POST\",status=\"200\"} 1"
        ));
        assert!(
            out.contains(
                "nephos_http_request_duration_seconds_bucket{le=\"0.004\",route=\"upload\"} 1"
            ),
            "{out}"
        );
        assert!(out.contains("nephos_http_request_bytes_total 1000"));
        assert!(out.contains("nephos_notification_attempts_total{outcome=\"delivered\"} 1"));
        assert!(out.ends_with("# EOF\n"));
    }
}
