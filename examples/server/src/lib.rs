//! An example HTTP server built on `tiermap`.
//!
//! * `GET /lookup/{key}`: a shared [`SyncMap`] caches lookup results; a miss computes the value
//!   and inserts it (unless the cache is at its entry limit).
//! * `POST /ingest`: a JSON object of `key -> integer` is parsed into a per-request scratch
//!   `HashMap` taken from a [`MapPool`] (duplicate keys add up); the response summarizes it. Large
//!   bodies are parsed on the blocking pool, the owned guard moving there and back across the
//!   `.await`, and the map goes back to the pool (shrunk if it grew over the ceiling) when the
//!   guard drops.
//! * `GET /stats`: the cache's [`MapStats`](tiermap::MapStats), the pool's
//!   [`PoolStats`](tiermap::PoolStats) and the server's own counters (with its RSS), as
//!   JSON.
//! * `POST /admin/clear`: [`SyncMap::clear_and_release`] on the cache (and drops the pool's idle
//!   maps); returns the [`Released`](tiermap::Released) value as JSON.
//!
//! Bad input gets a 4xx with a JSON body `{"error": "..."}` and changes nothing shared:
//! a malformed body is 400, a body over [`Limits::max_body_bytes`] is 413, a body that is not
//! `application/json` is 415, and a well-formed body with the wrong shape (not an object,
//! non-integer values, too many keys, a key too long) is 422.
//!
//! [`app`] builds the router and [`serve`] runs it on a listener, so that tests can start the
//! server in-process on an ephemeral port.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tiermap::SyncMap;
use tiermap::{MapPool, OwnedPooled};

pub mod client;
mod ingest;

pub use ingest::{IngestSummary, KeyValue};

/// The scratch map that `POST /ingest` fills.
pub type Scratch = HashMap<String, i64>;

/// What one request may send, and what the shared state may hold.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    /// Most `key: value` pairs in one `POST /ingest` body, duplicates included (422 above it).
    pub max_keys_per_request: usize,
    /// Longest key, in bytes, for `/lookup/{key}` (400) and in an ingest body (422).
    pub max_key_len: usize,
    /// Most entries the cache holds: past it, lookups are computed but not stored.
    pub max_cache_entries: usize,
    /// Capacity ceiling of the scratch-map pool (slots).
    pub pool_capacity_ceiling: usize,
    /// Most idle scratch maps the pool keeps.
    pub pool_max_idle: usize,
    /// Bodies larger than this are parsed on tokio's blocking pool.
    pub blocking_parse_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 << 20,
            max_keys_per_request: 200_000,
            max_key_len: 256,
            max_cache_entries: 1_000_000,
            pool_capacity_ceiling: 1024,
            pool_max_idle: 64,
            blocking_parse_bytes: 64 << 10,
        }
    }
}

/// The server's shared state.
pub struct AppState {
    /// Lookup results, shared by every request.
    pub cache: SyncMap<String, String>,
    /// Per-request scratch maps.
    pub pool: Arc<MapPool<Scratch>>,
    /// The limits in force.
    pub limits: Limits,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    lookups: AtomicU64,
    lookup_hits: AtomicU64,
    lookups_not_stored: AtomicU64,
    ingests: AtomicU64,
    ingested_pairs: AtomicU64,
    blocking_parses: AtomicU64,
    rejected: AtomicU64,
    clears: AtomicU64,
    ingests_in_flight: AtomicUsize,
    largest_scratch_capacity: AtomicUsize,
}

impl AppState {
    /// A new state with `limits`.
    pub fn new(limits: Limits) -> Arc<Self> {
        let pool = MapPool::builder()
            .capacity_ceiling(limits.pool_capacity_ceiling)
            .max_idle(limits.pool_max_idle)
            .build();
        Arc::new(AppState {
            cache: SyncMap::new(),
            pool: Arc::new(pool),
            limits,
            counters: Counters::default(),
        })
    }

    /// The body of `GET /stats`.
    pub fn stats(&self) -> StatsResponse {
        let c = &self.counters;
        StatsResponse {
            cache: self.cache.stats(),
            pool: self.pool.stats(),
            pool_capacity_ceiling: self.pool.capacity_ceiling(),
            pool_max_idle: self.pool.max_idle(),
            server: ServerStats {
                lookups: c.lookups.load(Relaxed),
                lookup_hits: c.lookup_hits.load(Relaxed),
                lookups_not_stored: c.lookups_not_stored.load(Relaxed),
                ingests: c.ingests.load(Relaxed),
                ingested_pairs: c.ingested_pairs.load(Relaxed),
                blocking_parses: c.blocking_parses.load(Relaxed),
                rejected: c.rejected.load(Relaxed),
                clears: c.clears.load(Relaxed),
                ingests_in_flight: c.ingests_in_flight.load(Relaxed),
                largest_scratch_capacity: c.largest_scratch_capacity.load(Relaxed),
                rss_bytes: proc_status_bytes("VmRSS:"),
                peak_rss_bytes: proc_status_bytes("VmHWM:"),
            },
        }
    }
}

/// The body of `GET /stats`.
#[derive(Serialize)]
pub struct StatsResponse {
    /// The cache's [`SyncMap::stats`].
    pub cache: tiermap::MapStats,
    /// The scratch pool's [`MapPool::stats`].
    pub pool: tiermap::PoolStats,
    /// The pool's effective capacity ceiling (slots).
    pub pool_capacity_ceiling: Option<usize>,
    /// The pool's `max_idle`.
    pub pool_max_idle: usize,
    /// The server's own counters.
    pub server: ServerStats,
}

/// The server's counters, in `GET /stats`.
#[derive(Serialize)]
pub struct ServerStats {
    /// `GET /lookup` requests answered (2xx).
    pub lookups: u64,
    /// Of which served from the cache.
    pub lookup_hits: u64,
    /// Misses not stored because the cache was at `max_cache_entries`.
    pub lookups_not_stored: u64,
    /// `POST /ingest` requests answered (2xx).
    pub ingests: u64,
    /// Pairs in those requests.
    pub ingested_pairs: u64,
    /// Ingest bodies parsed on the blocking pool.
    pub blocking_parses: u64,
    /// Requests answered with a 4xx.
    pub rejected: u64,
    /// `POST /admin/clear` calls.
    pub clears: u64,
    /// Ingests holding a scratch map now.
    pub ingests_in_flight: usize,
    /// The largest capacity a scratch map reached (slots).
    pub largest_scratch_capacity: usize,
    /// The process's resident set (`VmRSS` in `/proc/self/status`), if known.
    pub rss_bytes: Option<u64>,
    /// The process's peak resident set (`VmHWM`), if known.
    pub peak_rss_bytes: Option<u64>,
}

/// A `kB` line of `/proc/self/status` (`VmRSS:`, `VmHWM:`), in bytes; `None` off Linux.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kb(&status, field)
}

/// The value of a `kB` line (`VmRSS:   1234 kB`) of a `/proc/<pid>/status` text, in bytes.
pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The router, with every route, on `state`.
pub fn app(state: Arc<AppState>) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/lookup/{key}", get(lookup))
        .route("/ingest", post(ingest))
        .route("/stats", get(stats))
        .route("/admin/clear", post(admin_clear))
        .fallback(not_found)
        // For extractors that buffer the body; `/ingest` reads it itself with the same limit.
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Serves [`app`]`(state)` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> io::Result<()> {
    axum::serve(listener, app(state)).await
}

/// Serves [`app`]`(state)` on `listener` until `shutdown` completes, then finishes the
/// requests in flight.
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A 4xx (or 5xx) answer with a JSON body `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// What was wrong.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl fmt::Display) -> Self {
        ApiError {
            status,
            message: message.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
        }
        (
            self.status,
            Json(Body {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// Counts a rejection (4xx) and passes the error on.
fn reject(state: &AppState, error: ApiError) -> ApiError {
    if error.status.is_client_error() {
        state.counters.rejected.fetch_add(1, Relaxed);
    }
    error
}

/// The body of `GET /lookup/{key}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LookupResponse {
    /// The key looked up.
    pub key: String,
    /// Its value.
    pub value: String,
    /// Whether the value came from the cache.
    pub cached: bool,
    /// Whether the value is in the cache now (false when it was computed and the cache was full).
    pub stored: bool,
}

/// The "expensive" lookup: a few thousand rounds of a 64-bit mix over the key, as hex.
pub fn compute_value(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut out = String::with_capacity(32);
    let mut x = h;
    for _ in 0..2 {
        for _ in 0..2000 {
            // splitmix64
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^= z ^ (z >> 31);
        }
        out.push_str(&format!("{x:016x}"));
    }
    out
}

async fn lookup(
    State(state): State<Arc<AppState>>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<LookupResponse>, ApiError> {
    let Path(key) = key.map_err(|e| {
        reject(
            &state,
            ApiError::new(StatusCode::BAD_REQUEST, e.body_text()),
        )
    })?;
    if key.is_empty() || key.len() > state.limits.max_key_len {
        return Err(reject(
            &state,
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format_args!(
                    "key must be 1 to {} bytes, got {}",
                    state.limits.max_key_len,
                    key.len()
                ),
            ),
        ));
    }
    let c = &state.counters;
    c.lookups.fetch_add(1, Relaxed);
    if let Some(value) = state.cache.get_cloned(key.as_str()) {
        c.lookup_hits.fetch_add(1, Relaxed);
        return Ok(Json(LookupResponse {
            key,
            value,
            cached: true,
            stored: true,
        }));
    }
    // Computed outside any lock; two racing misses compute twice and the first insert wins.
    let value = compute_value(&key);
    if state.cache.len() >= state.limits.max_cache_entries {
        c.lookups_not_stored.fetch_add(1, Relaxed);
        return Ok(Json(LookupResponse {
            key,
            value,
            cached: false,
            stored: false,
        }));
    }
    let stored = state.cache.get_or_insert(key.clone(), value);
    let cached = stored.is_loaded();
    let value = stored.into_inner().clone();
    if cached {
        c.lookup_hits.fetch_add(1, Relaxed);
    }
    Ok(Json(LookupResponse {
        key,
        value,
        cached,
        stored: true,
    }))
}

/// Query parameters of `POST /ingest`.
#[derive(Debug, Deserialize)]
pub struct IngestParams {
    /// How many of the largest values to return (default 3, at most 100).
    pub top: Option<usize>,
}

async fn ingest(
    State(state): State<Arc<AppState>>,
    params: Result<Query<IngestParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestSummary>, ApiError> {
    let limits = &state.limits;
    let Query(params) = params.map_err(|e| {
        reject(
            &state,
            ApiError::new(StatusCode::BAD_REQUEST, e.body_text()),
        )
    })?;
    let top = params.top.unwrap_or(3);
    if top > 100 {
        return Err(reject(
            &state,
            ApiError::new(StatusCode::BAD_REQUEST, "top must be at most 100"),
        ));
    }
    if !is_json(&headers) {
        return Err(reject(
            &state,
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected `Content-Type: application/json`",
            ),
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format_args!("body larger than {} bytes", limits.max_body_bytes),
        )
    };
    // Refuse a declared oversized body before reading any of it...
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(reject(&state, too_large()));
    }
    // ...and stop reading an undeclared (chunked) one at the limit.
    let bytes: Bytes = match axum::body::to_bytes(body, limits.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(e) if is_length_limit(&e) => return Err(reject(&state, too_large())),
        Err(e) => {
            return Err(reject(
                &state,
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format_args!("reading the body: {e}"),
                ),
            ))
        }
    };

    // The scratch map is taken only once the whole body is here, so that a slow upload does not
    // hold one.
    let mut scratch: OwnedPooled<Scratch> = state.pool.get_owned();
    let c = &state.counters;
    let in_flight = InFlight::enter(&c.ingests_in_flight);
    let key_limits = ingest::KeyLimits {
        max_keys: limits.max_keys_per_request,
        max_key_len: limits.max_key_len,
    };
    let (scratch, result) = if bytes.len() > limits.blocking_parse_bytes {
        // A large body: parse it off the async workers. The owned guard is `Send + 'static`, so
        // it moves to the blocking pool and back across this `.await`.
        c.blocking_parses.fetch_add(1, Relaxed);
        let joined = tokio::task::spawn_blocking(move || {
            let result = ingest::fill_and_summarize(&mut scratch, &bytes, key_limits, top);
            (scratch, result)
        })
        .await;
        match joined {
            Ok(done) => done,
            Err(e) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
        }
    } else {
        let result = ingest::fill_and_summarize(&mut scratch, &bytes, key_limits, top);
        (scratch, result)
    };
    c.largest_scratch_capacity
        .fetch_max(scratch.capacity(), Relaxed);
    // Back to the pool: emptied, and shrunk if it grew over the ceiling.
    drop(scratch);
    drop(in_flight);
    let summary = result.map_err(|e| reject(&state, e))?;
    c.ingests.fetch_add(1, Relaxed);
    c.ingested_pairs.fetch_add(summary.pairs as u64, Relaxed);
    Ok(Json(summary))
}

/// Counts an ingest holding a scratch map, until dropped (also when the client goes away and
/// the handler's future is dropped mid-way).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Relaxed);
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
        || (mime.len() > 5 && mime[mime.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Whether reading the body failed on the length limit (and not on the connection).
fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

async fn stats(State(state): State<Arc<AppState>>) -> Json<StatsResponse> {
    Json(state.stats())
}

/// Query parameters of `POST /admin/clear`.
#[derive(Debug, Default, Deserialize)]
pub struct ClearParams {
    /// Also ask the allocator to hand free memory back to the OS (`malloc_trim(0)`, glibc
    /// only). Freed memory otherwise stays in the process's RSS, ready for reuse.
    #[serde(default)]
    pub trim: bool,
}

/// The body of `POST /admin/clear`.
#[derive(Serialize)]
pub struct ClearResponse {
    /// What the cache's [`SyncMap::clear_and_release`] gave back.
    pub released: tiermap::Released,
    /// Idle scratch maps the pool dropped.
    pub pool_idle_dropped: usize,
    /// The cache's stats after the clear.
    pub cache: tiermap::MapStats,
    /// Whether `malloc_trim` ran (asked with `?trim=true` and available).
    pub trimmed: bool,
    /// The process's RSS before the call, if known.
    pub rss_before: Option<u64>,
    /// The process's RSS after the call, if known.
    pub rss_after: Option<u64>,
}

async fn admin_clear(
    State(state): State<Arc<AppState>>,
    params: Result<Query<ClearParams>, QueryRejection>,
) -> Result<Json<ClearResponse>, ApiError> {
    let Query(params) = params.map_err(|e| {
        reject(
            &state,
            ApiError::new(StatusCode::BAD_REQUEST, e.body_text()),
        )
    })?;
    state.counters.clears.fetch_add(1, Relaxed);
    let rss_before = proc_status_bytes("VmRSS:");
    let released = state.cache.clear_and_release();
    let pool_idle_dropped = state.pool.clear();
    let trimmed = params.trim && malloc_trim();
    Ok(Json(ClearResponse {
        released,
        pool_idle_dropped,
        cache: state.cache.stats(),
        trimmed,
        rss_before,
        rss_after: proc_status_bytes("VmRSS:"),
    }))
}

/// `malloc_trim(0)` where the allocator is glibc's; whether it ran.
fn malloc_trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` only walks glibc's own heap structures; any pad is valid.
        unsafe { libc::malloc_trim(0) };
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

async fn not_found(State(state): State<Arc<AppState>>) -> ApiError {
    reject(
        &state,
        ApiError::new(StatusCode::NOT_FOUND, "no such route"),
    )
}
