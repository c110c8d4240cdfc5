//! Starts the server in-process on an ephemeral loopback port and talks HTTP to it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use tiermap_server::client::Conn;
use tiermap_server::{serve, AppState, IngestSummary, Limits, LookupResponse};

/// Small limits, so that the tests can cross them cheaply.
fn limits() -> Limits {
    Limits {
        max_body_bytes: 64 << 10,
        max_keys_per_request: 1000,
        max_key_len: 32,
        max_cache_entries: 100,
        pool_capacity_ceiling: 64,
        pool_max_idle: 4,
        blocking_parse_bytes: 4 << 10,
    }
}

async fn start(limits: Limits) -> (SocketAddr, Arc<AppState>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    assert!(addr.ip().is_loopback());
    let state = AppState::new(limits);
    tokio::spawn(serve(listener, state.clone()));
    (addr, state)
}

/// Writes `head` and then `body`, on a fresh connection, ignoring write errors (the server may
/// close before taking the whole body), and returns everything the server sent until it closed
/// (or, for a keep-alive reply, until the response is complete).
async fn raw_exchange(addr: SocketAddr, head: &str, body: &[&[u8]]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for part in body {
        if stream.write_all(part).await.is_err() {
            break;
        }
    }
    // Bytes that reached this socket before the server closed stay readable on Linux even when
    // the close resets the connection; stop at the end of the first complete response.
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no complete response within 10 s: {response:?}"),
        }
        if response_complete(&response) {
            break;
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

/// Whether `bytes` hold a whole response with a `Content-Length` body.
fn response_complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = text[..end].lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|n| bytes.len() >= end + 4 + n)
}

/// Asserts that a raw response is `status`, with a JSON error mentioning `needle`.
#[track_caller]
fn assert_raw_rejected(response: &str, status: u16, needle: &str) {
    let status_line = format!("HTTP/1.1 {status} ");
    assert!(
        response.starts_with(&status_line),
        "{}",
        &response[..response.len().min(300)]
    );
    let body = &response[response.find("\r\n\r\n").expect("a header block") + 4..];
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let message = body["error"].as_str().unwrap();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

async fn stats(conn: &mut Conn) -> Value {
    let reply = conn.get("/stats").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json().unwrap()
}

fn object(n: usize) -> String {
    let pairs: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
    format!("{{{}}}", pairs.join(","))
}

/// Asserts a 4xx with a JSON `{"error": ...}` body mentioning `needle`.
#[track_caller]
fn assert_rejected(reply: &tiermap_server::client::Reply, status: StatusCode, needle: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    let body: Value = reply
        .json()
        .unwrap_or_else(|e| panic!("{e}: {}", reply.text()));
    let message = body["error"].as_str().unwrap();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_caches_and_stats_show_it() {
    let (addr, state) = start(limits()).await;
    let mut conn = Conn::new(addr);

    let first: LookupResponse = conn.get("/lookup/alice").await.unwrap().json().unwrap();
    assert!(!first.cached && first.stored);
    assert_eq!(first.value, tiermap_server::compute_value("alice"));
    let second: LookupResponse = conn.get("/lookup/alice").await.unwrap().json().unwrap();
    assert!(second.cached);
    assert_eq!(second.value, first.value);
    // Percent-encoded keys are decoded.
    let spaced: LookupResponse = conn.get("/lookup/a%20b").await.unwrap().json().unwrap();
    assert_eq!(spaced.key, "a b");

    let s = stats(&mut conn).await;
    assert_eq!(s["cache"]["len"], 2);
    assert!(s["cache"]["held_bytes"].as_u64().unwrap() > 0);
    assert_eq!(s["server"]["lookups"], 3);
    assert_eq!(s["server"]["lookup_hits"], 1);
    assert_eq!(s["pool"]["gets"], 0);
    assert_eq!(s["pool_max_idle"], 4);
    if cfg!(target_os = "linux") {
        assert!(s["server"]["rss_bytes"].as_u64().unwrap() > 0);
    }
    assert_eq!(state.cache.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_stops_storing_at_its_limit() {
    let (addr, state) = start(Limits {
        max_cache_entries: 3,
        ..limits()
    })
    .await;
    let mut conn = Conn::new(addr);
    for i in 0..5 {
        let r: LookupResponse = conn
            .get(&format!("/lookup/k{i}"))
            .await
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(r.stored, i < 3, "{r:?}");
        assert_eq!(r.value, tiermap_server::compute_value(&format!("k{i}")));
    }
    assert_eq!(state.cache.len(), 3);
    assert_eq!(stats(&mut conn).await["server"]["lookups_not_stored"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_uses_the_pool() {
    let (addr, state) = start(limits()).await;
    let mut conn = Conn::new(addr);

    let reply = conn
        .post_json("/ingest?top=2", r#"{"a": 1, "b": 2, "a": 3, "c": -7}"#)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let summary: IngestSummary = reply.json().unwrap();
    assert_eq!((summary.pairs, summary.keys, summary.sum), (4, 3, -1));
    assert_eq!((summary.min, summary.max), (Some(-7), Some(4)));
    let top: Vec<_> = summary
        .top
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value))
        .collect();
    assert_eq!(top, [("a", 4), ("b", 2)]);

    // The map comes back to the pool, unshrunk. `MapPool` keeps one idle map per worker thread
    // in that thread's cache, so the next request reuses it if it runs on the same worker (a
    // hit) and otherwise gets a new one (a miss) while the first idles in the other worker's
    // cache: either way every map the pool made is idle again.
    let reply = conn.post_json("/ingest", object(10)).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let s = stats(&mut conn).await;
    assert_eq!(s["pool"]["gets"], 2);
    assert_eq!(s["pool"]["returns"], 2);
    assert_eq!(s["pool"]["returns_shrunk"], 0);
    let (hits, misses) = (pool_u64(&s, "hits"), pool_u64(&s, "misses"));
    assert_eq!(hits + misses, 2);
    assert!(
        (1..=2).contains(&misses),
        "the first get cannot hit: {misses}"
    );
    assert_eq!(pool_u64(&s, "idle"), misses, "every map made is idle again");
    assert_eq!(s["server"]["ingests"], 2);
    assert_eq!(s["server"]["ingested_pairs"], 14);
    assert_eq!(s["server"]["ingests_in_flight"], 0);

    // A request over the ceiling (64 slots) and over `blocking_parse_bytes` (4 KiB): parsed on
    // the blocking pool, and its map is shrunk on the way back.
    let reply = conn.post_json("/ingest", object(900)).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let summary: IngestSummary = reply.json().unwrap();
    assert_eq!(summary.keys, 900);
    assert!(summary.scratch_capacity >= 900);
    let s = stats(&mut conn).await;
    assert_eq!(s["server"]["blocking_parses"], 1);
    assert_eq!(s["pool"]["returns_shrunk"], 1);
    assert_eq!(pool_u64(&s, "idle"), pool_u64(&s, "misses"));
    let ceiling = s["pool_capacity_ceiling"].as_u64().unwrap();
    assert!((64..900).contains(&ceiling));
    let retained = state.pool.stats().retained_bytes;
    assert!(retained < 64 * 1024, "idle scratch map keeps {retained} B");
    assert!(s["server"]["largest_scratch_capacity"].as_u64().unwrap() >= 900);
    // Ingests never touch the cache.
    assert_eq!(state.cache.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_without_effect() {
    let (addr, state) = start(limits()).await;
    let mut conn = Conn::new(addr);
    // Some shared state to protect.
    for key in ["x", "y"] {
        let reply = conn.get(&format!("/lookup/{key}")).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
    let reply = conn.post_json("/ingest", r#"{"warm": 1}"#).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let before = stats(&mut conn).await;
    let held_before = state.cache.stats().held_bytes;

    // Malformed JSON.
    for body in ["", "{", r#"{"a": 1,}"#, r#"{"a": 1} trailing"#, "{a: 1}"] {
        let reply = conn.post_json("/ingest", body).await.unwrap();
        assert_rejected(&reply, StatusCode::BAD_REQUEST, "malformed JSON");
    }
    // Well-formed, wrong shape.
    for body in [
        "[1, 2]",
        "17",
        r#"{"a": "one"}"#,
        r#"{"a": 1.5}"#,
        r#"{"a": {"b": 1}}"#,
    ] {
        let reply = conn.post_json("/ingest", body).await.unwrap();
        assert_rejected(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "expected a JSON object",
        );
    }
    // Too many keys (the limit is 1000), within the body limit.
    let reply = conn.post_json("/ingest", object(1001)).await.unwrap();
    assert_rejected(&reply, StatusCode::UNPROCESSABLE_ENTITY, "too many keys");
    // A key too long.
    let long = format!(r#"{{"{}": 1}}"#, "k".repeat(33));
    let reply = conn.post_json("/ingest", long).await.unwrap();
    assert_rejected(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "keys must be 1 to 32 bytes",
    );
    // Oversized body (the limit is 64 KiB), declared by Content-Length. The server answers from
    // the headers and closes without reading the body, so the upload may fail part way (a broken
    // pipe): raw TCP, which still reads the 413 the server sent before closing.
    let huge = object(20_000);
    assert!(huge.len() > 64 << 10);
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        huge.len()
    );
    let response = raw_exchange(addr, &head, &[huge.as_bytes()]).await;
    assert_raw_rejected(&response, 413, "body larger than 65536 bytes");
    // A client that asks first (`Expect: 100-continue`) gets the 413 without sending a byte of
    // the body, and never a `100 Continue`: the refusal comes from the headers alone.
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        huge.len()
    );
    let response = raw_exchange(addr, &head, &[]).await;
    assert_raw_rejected(&response, 413, "body larger than 65536 bytes");
    // Not JSON.
    let reply = conn
        .request(
            Method::POST,
            "/ingest",
            Some("text/plain"),
            Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
    assert_rejected(
        &reply,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "application/json",
    );
    let reply = conn
        .request(Method::POST, "/ingest", None, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Bad query.
    let reply = conn.post_json("/ingest?top=lots", "{}").await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    let reply = conn.post_json("/ingest?top=101", "{}").await.unwrap();
    assert_rejected(&reply, StatusCode::BAD_REQUEST, "top must be at most 100");
    // Lookup keys.
    let reply = conn
        .get(&format!("/lookup/{}", "k".repeat(33)))
        .await
        .unwrap();
    assert_rejected(&reply, StatusCode::BAD_REQUEST, "key must be 1 to 32 bytes");
    let reply = conn.get("/lookup/%FF%FE").await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    // Unknown routes and wrong methods.
    let reply = conn.get("/nope").await.unwrap();
    assert_rejected(&reply, StatusCode::NOT_FOUND, "no such route");
    let reply = conn.get("/admin/clear").await.unwrap();
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let reply = conn.get("/ingest").await.unwrap();
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);

    // Nothing shared changed: same cache, no ingest counted, the pool no larger.
    let after = stats(&mut conn).await;
    assert_eq!(after["cache"]["len"], 2);
    assert_eq!(state.cache.stats().held_bytes, held_before);
    assert_eq!(after["server"]["ingests"], before["server"]["ingests"]);
    assert_eq!(after["server"]["ingested_pairs"], 1);
    assert_eq!(after["server"]["ingests_in_flight"], 0);
    assert!(after["server"]["rejected"].as_u64().unwrap() >= 17);
    // The pool handed out maps to the requests that got past the headers; the one that was
    // filled with 1000 keys before being refused came back shrunk to the ceiling.
    assert_eq!(pool_u64(&after, "idle"), pool_u64(&after, "misses"));
    assert_eq!(after["pool"]["returns_shrunk"], 1);
    assert_eq!(after["pool"]["gets"], after["pool"]["returns"]);
    assert!(after["pool"]["retained_bytes"].as_u64().unwrap() < 64 * 1024);
    // And the server still serves.
    let reply = conn.post_json("/ingest", r#"{"ok": 1}"#).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_clear_releases_the_cache() {
    let (addr, state) = start(Limits {
        max_cache_entries: 10_000,
        ..limits()
    })
    .await;
    let mut conn = Conn::new(addr);
    for i in 0..300 {
        let reply = conn.get(&format!("/lookup/key-{i}")).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
    let reply = conn.post_json("/ingest", object(5)).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let held = stats(&mut conn).await["cache"]["held_bytes"]
        .as_u64()
        .unwrap();
    assert!(held > 0);

    let reply = conn
        .request(Method::POST, "/admin/clear", None, Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let cleared: Value = reply.json().unwrap();
    let released = cleared["released"]["released_bytes"].as_u64().unwrap();
    let pending = cleared["released"]["pending_bytes"].as_u64().unwrap();
    // Tests run in parallel in this process and share the global epoch: a guard pinned by
    // another test's request may hold part of the release back, as `pending_bytes`.
    assert!(released + pending > 0, "{cleared}");
    assert!(released + pending <= held + 64 * 1024, "{cleared}");
    if pending > 0 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while state.cache.reclaim() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{pending} bytes still pending after 10 s: {cleared}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    assert_eq!(cleared["cache"]["len"], 0);
    // `MapPool::clear` drops the shared stripes' maps and the clearing thread's cached one; a
    // map idle in the other worker's cache is that thread's alone until it exits. One map was
    // idle: it is dropped, or still idle in the other worker's cache.
    let dropped = cleared["pool_idle_dropped"].as_u64().unwrap();

    let s = stats(&mut conn).await;
    assert_eq!(s["cache"]["len"], 0);
    assert!(s["cache"]["held_bytes"].as_u64().unwrap() < held);
    assert_eq!(dropped + pool_u64(&s, "idle"), 1);
    assert_eq!(s["server"]["clears"], 1);
    assert!(state.cache.is_empty());
    // The cache fills again.
    let r: LookupResponse = conn.get("/lookup/key-1").await.unwrap().json().unwrap();
    assert!(!r.cached && r.stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients() {
    let (addr, state) = start(Limits {
        max_cache_entries: 10_000,
        ..limits()
    })
    .await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            for i in 0..50 {
                let reply = conn
                    .get(&format!("/lookup/k{}", (t * 7 + i) % 40))
                    .await
                    .unwrap();
                assert_eq!(reply.status, StatusCode::OK);
                let reply = conn.post_json("/ingest", object(i % 20)).await.unwrap();
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(state.cache.len(), 40);
    let mut conn = Conn::new(addr);
    let s = stats(&mut conn).await;
    assert_eq!(s["server"]["ingests"], 400);
    assert_eq!(s["server"]["lookups"], 400);
    assert_eq!(s["pool"]["gets"], 400);
    assert_eq!(s["pool"]["returns"], 400);
    assert!(s["pool"]["idle"].as_u64().unwrap() <= 4);
    assert_eq!(s["server"]["ingests_in_flight"], 0);
    let body = json!(s["cache"]);
    assert_eq!(body["len"], 40);
}

/// A chunked body (no `Content-Length`) is cut off at the limit while it is read: 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_limit() {
    let (addr, state) = start(limits()).await;
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    // 80 KiB in 8 KiB chunks, over the 64 KiB limit; the server may stop reading early.
    let chunk = format!("2000\r\n{}\r\n", " ".repeat(0x2000));
    let mut parts = vec![chunk.as_bytes(); 10];
    parts.push(b"0\r\n\r\n");
    let response = raw_exchange(addr, &head, &parts).await;
    assert_raw_rejected(&response, 413, "body larger than 65536 bytes");
    assert_eq!(
        state.pool.stats().gets,
        0,
        "no scratch map for a refused body"
    );

    // A chunked body within the limit is fine.
    let response = raw_exchange(addr, &head, &[b"5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n"]).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"sum\":1"), "{response}");
}

/// A counter of the pool's statistics in a `/stats` reply.
fn pool_u64(stats: &Value, name: &str) -> u64 {
    stats["pool"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("pool.{name} missing: {stats}"))
}
