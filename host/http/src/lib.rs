//! weft's HTTP API.
//!
//! - `GET /api/status`: message counters, watermark, last checkpoint, source;
//! - `GET /api/plugins`: each plugin instance with its role, digest and stats;
//! - `GET /api/plugins/{name}/query?…`: a metric's answer (JSON);
//! - `GET /api/plugins/{name}/dead-letters?limit=&after=`: batches the plugin
//!   failed on, with the error and the module digest;
//! - `GET /api/rejected?limit=&after=`: rejected messages with their reasons;
//! - `GET /metrics`: Prometheus exposition.
//!
//! Errors are JSON `{"error": "…"}`: unknown plugin 404, bad parameters 400.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};
use weft_pipeline::{Shared, isolation::DeadLetter, lock};
use weft_runtime::Role;

/// An API error: a status and a message safe to show.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, message = %self.message, "API request failed.");
        }
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The API's router over a running pipeline.
pub fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/status", get(status))
        .route("/api/plugins", get(plugins))
        .route("/api/plugins/{name}/query", get(query))
        .route("/api/plugins/{name}/dead-letters", get(dead_letters))
        .route("/api/rejected", get(rejected))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint; see GET / for the API",
            )
        })
        .with_state(shared)
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app(shared).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<weft_pipeline::Status> {
    Json(shared.status())
}

#[derive(Serialize)]
struct PluginView {
    name: String,
    role: String,
    digest: String,
    status: &'static str,
    events_in: u64,
    batches: u64,
    errors: u64,
    mean_batch_ms: f64,
    last_error: Option<String>,
    restarts: u64,
    dead_letters: u64,
    quarantined: Option<String>,
}

async fn plugins(State(shared): State<Arc<Shared>>) -> Json<Vec<PluginView>> {
    let views = shared
        .plugins
        .iter()
        .map(|slot| {
            let stats = lock(&slot.stats).clone();
            let mean = if stats.batches == 0 {
                0.0
            } else {
                stats.busy_seconds * 1e3 / stats.batches as f64
            };
            PluginView {
                name: slot.name.clone(),
                role: slot.role.to_string(),
                digest: slot.digest.clone(),
                status: if stats.quarantined.is_some() {
                    "quarantined"
                } else if stats.failing {
                    "failing"
                } else {
                    "running"
                },
                events_in: stats.events_in,
                batches: stats.batches,
                errors: stats.errors,
                mean_batch_ms: mean,
                last_error: stats.last_error,
                restarts: stats.restarts,
                dead_letters: stats.dead_letters,
                quarantined: stats.quarantined,
            }
        })
        .collect();
    Json(views)
}

async fn query(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let slot = shared
        .plugin(&name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no plugin named `{name}`")))?
        .clone();
    if slot.role != Role::Metric {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "plugin `{name}` is a {}; only metrics answer queries",
                slot.role
            ),
        ));
    }
    let answer = tokio::task::spawn_blocking(move || lock(&slot.plugin).query(&params))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("query task failed: {e}"),
            )
        })?;
    match answer {
        Ok(json) => Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response()),
        // The plugin declined the parameters: the caller's mistake.
        Err(weft_runtime::Error::Failed { message, .. }) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, message))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

#[derive(Deserialize)]
struct PageParams {
    limit: Option<usize>,
    after: Option<u64>,
}

#[derive(Serialize)]
struct RejectedView {
    seq: u64,
    reason: String,
    detail: String,
    partition: i32,
    offset: i64,
    /// The message as received (invalid UTF-8 shown with replacement characters).
    raw: String,
}

async fn rejected(
    State(shared): State<Arc<Shared>>,
    params: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let (after, limit) = page(params)?;
    let records = shared
        .store
        .rejected(after, limit)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let next = records.last().map(|(seq, _)| *seq);
    let views: Vec<RejectedView> = records
        .into_iter()
        .map(|(seq, r)| RejectedView {
            seq,
            reason: r.reason,
            detail: r.detail,
            partition: r.partition,
            offset: r.offset,
            raw: String::from_utf8_lossy(&r.raw).into_owned(),
        })
        .collect();
    Ok(Json(serde_json::json!({ "rejected": views, "next": next })))
}

/// `after` and `limit` (1..=1000, default 100) of a paged listing.
fn page(
    params: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<(Option<u64>, usize)> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "limit must be between 1 and 1000",
        ));
    }
    Ok((params.after, limit))
}

async fn dead_letters(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    params: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    if shared.plugin(&name).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no plugin named `{name}`"),
        ));
    }
    let (after, limit) = page(params)?;
    let records = shared
        .store
        .dead_letters(&name, after, limit)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let next = records.last().map(|(seq, _)| *seq);
    let mut views = Vec::with_capacity(records.len());
    for (seq, bytes) in records {
        let letter = DeadLetter::decode(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("dead letter {seq}: {e}"),
            )
        })?;
        views.push(serde_json::json!({
            "seq": seq,
            "error": letter.error,
            "digest": letter.digest,
            "events": letter.events,
        }));
    }
    Ok(Json(
        serde_json::json!({ "dead_letters": views, "next": next }),
    ))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.telemetry.render(),
    )
}
