//! `--enable-pprof`'s Rust counterpart: CPU profiles in pprof's format at the paths etcd serves
//! Go's profiles on, so `go tool pprof http://host:2379/debug/pprof/profile` works against oxcd.
//!
//! - `/debug/pprof/profile?seconds=N` samples every thread at 100 Hz for N seconds (30 by
//!   default, as Go) and answers the gzipped `profile.proto`.
//! - `/debug/pprof/cmdline` answers the command line, NUL-separated, as Go does.
//! - `/debug/pprof/` lists what is served; other names (Go's heap, goroutine, ... have no
//!   counterpart here) get Go's 404 `Unknown profile`.
//!
//! Invariants: one profile runs at a time (a second request gets 409 while one runs); sampling
//! and encoding run on the blocking pool, never on the async workers; the routes exist only when
//! the flag (or `--log-level=debug`) is on, on client URLs, behind the same access control as
//! every HTTP request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::node::Node;

/// Whether a profile is being taken.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// The longest profile served (Go's default write timeout would cut longer ones anyway).
const MAX_SECONDS: u64 = 300;

/// The pprof routes.
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/debug/pprof/", get(index))
        .route("/debug/pprof", get(redirect))
        .route("/debug/pprof/profile", get(profile))
        .route("/debug/pprof/cmdline", get(cmdline))
        .route("/debug/pprof/{name}", get(unknown))
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    text(
        StatusCode::OK,
        "/debug/pprof/\n\nprofile: CPU profile (?seconds=N, default 30), gzipped profile.proto\ncmdline: the command line\n"
            .to_string(),
    )
}

async fn redirect() -> Response {
    (
        StatusCode::MOVED_PERMANENTLY,
        [(header::LOCATION, "/debug/pprof/")],
    )
        .into_response()
}

async fn unknown() -> Response {
    text(StatusCode::NOT_FOUND, "Unknown profile\n".to_string())
}

async fn cmdline() -> Response {
    let args: Vec<String> = std::env::args().collect();
    text(StatusCode::OK, args.join("\0"))
}

/// Clears [`RUNNING`] when the profile ends, however it ends.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::SeqCst);
    }
}

async fn profile(Query(q): Query<std::collections::HashMap<String, String>>) -> Response {
    let seconds = match q.get("seconds").map(|s| s.parse::<u64>()) {
        None => 30,
        Some(Ok(s)) if s > 0 && s <= MAX_SECONDS => s,
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("seconds must be between 1 and {MAX_SECONDS}\n"),
            )
        }
    };
    if RUNNING.swap(true, Ordering::SeqCst) {
        return text(
            StatusCode::CONFLICT,
            "a CPU profile is already being taken\n".to_string(),
        );
    }
    let guard = Running;
    let taken = tokio::task::spawn_blocking(move || {
        let _guard = guard;
        take(Duration::from_secs(seconds))
    })
    .await;
    match taken {
        Ok(Ok(body)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"profile\"",
                ),
            ],
            body,
        )
            .into_response(),
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// Samples for `length` and returns the gzipped profile.
fn take(length: Duration) -> Result<Vec<u8>, String> {
    use std::io::Write;

    use pprof::protos::Message;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(100)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(length);
    let report = guard.report().build().map_err(|e| e.to_string())?;
    let profile = report.pprof().map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    profile.encode(&mut raw).map_err(|e| e.to_string())?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).map_err(|e| e.to_string())?;
    gz.finish().map_err(|e| e.to_string())
}
