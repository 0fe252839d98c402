//! weft's HTTP API and the dashboard page.
//!
//! - `GET /`: the dashboards (`dashboards/web/`, assets under `/assets/`);
//! - `GET /api`: the API's endpoints, with links;
//! - `GET /api/dashboards`, `GET /api/dashboards/{name}`: the dashboard
//!   declarations, checked against the running plugins;
//! - `GET /api/stream`: Server-Sent Events with the status and the plugins
//!   whenever they change (coalesced);
//! - `GET /api/status`: message counters, watermark, last checkpoint, source;
//! - `GET /api/plugins`: each plugin instance with its role, digest and stats;
//! - `GET /api/plugins/{name}/query?…`: a metric's answer (JSON); in a
//!   consumer group, over every partition of the group ([`group`]): 503
//!   with `missing` when an owner does not answer, or with `partial=true`
//!   `{"partial", "missing", "answer"}`;
//! - `GET /api/internal/partials/{name}?…`: this host's partitions' own
//!   answers, which the hosts of a group ask each other for;
//! - `GET /api/plugins/{name}/dead-letters?limit=&after=`: batches the plugin
//!   failed on, with the error and the module digest;
//! - `GET /api/plugins/{name}/versions`: every version it ran;
//! - `GET /api/rejected?limit=&after=`: rejected messages with their reasons;
//! - `GET /metrics`: Prometheus exposition.
//!
//! The admin API needs `Authorization: Bearer TOKEN` (401 without or with a
//! wrong one) and is refused (403) when no token is configured:
//! - `PUT /api/plugins/{name}?config=&role=&cpu_ms=&memory_mib=`: load or
//!   swap in the component in the body (at most the upload limit, else 413);
//! - `DELETE /api/plugins/{name}`: unload;
//! - `POST /api/plugins/{name}/rollback?to=DIGEST`: swap back (by default to
//!   the version the running one replaced);
//! - `POST /api/plugins/{name}/reload?config=&cpu_ms=&memory_mib=`: restart
//!   the running version from its checkpoint (the way out of quarantine);
//! - `POST /api/plugins/{name}/replay-dead-letters`.
//!
//! The server ([`serve`]) closes connections that send no request head
//! within the header timeout (also idle keep-alive ones), holds at most
//! `max_connections` at once, answers only to loopback host names on a
//! loopback listener unless `allowed_hosts` says otherwise (so a page on
//! another site cannot read it through DNS rebinding), and sends a strict
//! Content-Security-Policy with every answer.
//!
//! Errors are JSON `{"error": "…"}`: unknown plugin 404, bad parameters 400,
//! a component that does not load 422, a conflicting change 409.

pub mod dashboards;
mod group;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, Request, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{
        Html, IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post, put},
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use weft_pipeline::{
    PluginInfo, QueryError, Shared,
    isolation::DeadLetter,
    lifecycle::{Applied, Changes, LifecycleError, Manifest, Origin},
};
use weft_runtime::{Limits, Role};

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

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        let status = match &e {
            LifecycleError::NotFound(_) => StatusCode::NOT_FOUND,
            LifecycleError::BadName(_) | LifecycleError::BadLimits { .. } => {
                StatusCode::BAD_REQUEST
            }
            LifecycleError::Invalid(_) | LifecycleError::RoleMismatch { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            LifecycleError::RoleChanged { .. } | LifecycleError::Conflict(_) => {
                StatusCode::CONFLICT
            }
            LifecycleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            LifecycleError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Who may use the admin API, and how big an upload may be.
#[derive(Clone)]
pub struct Admin {
    /// The bearer token; `None` refuses every admin request.
    pub token: Option<String>,
    /// Largest component upload, in bytes.
    pub upload_limit: usize,
}

/// The default upload limit: 32 MiB.
pub const DEFAULT_UPLOAD_LIMIT: usize = 32 << 20;

/// How the HTTP layer is set up.
pub struct Options {
    pub admin: Admin,
    /// The plugin directory, where plugins may ship dashboard declarations.
    pub plugin_dir: Option<std::path::PathBuf>,
    pub server: Server,
}

/// The HTTP server's own limits (`[http]` in weft.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    /// A connection that sends no complete request head for this long is
    /// closed: a slow client, and an idle keep-alive connection alike.
    pub header_timeout_ms: u64,
    /// The most connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Host names (without the port) the API answers to. Empty: any name
    /// on a non-loopback listener, only loopback names (`localhost`,
    /// `127.0.0.1`, `[::1]`) on a loopback one.
    pub allowed_hosts: Vec<String>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            header_timeout_ms: 10_000,
            max_connections: 512,
            allowed_hosts: Vec::new(),
        }
    }
}

/// The API's router over a running pipeline, answering requests addressed
/// to a listener at `local`.
pub fn app(shared: Arc<Shared>, options: Options, local: SocketAddr) -> Router {
    let admin = options.admin;
    let hosts = Arc::new(Hosts {
        allowed: options.server.allowed_hosts,
        loopback: local.ip().is_loopback(),
    });
    let upload_limit = admin.upload_limit;
    let admin_routes = Router::new()
        .route("/api/plugins/{name}", put(deploy).delete(unload))
        .route("/api/plugins/{name}/rollback", post(rollback))
        .route("/api/plugins/{name}/reload", post(reload))
        .route(
            "/api/plugins/{name}/replay-dead-letters",
            post(replay_dead_letters),
        )
        .route_layer(middleware::from_fn_with_state(Arc::new(admin), authorize))
        .layer(DefaultBodyLimit::max(upload_limit))
        .with_state(shared.clone());
    let dashboard_routes = Router::new()
        .route("/api/dashboards", get(list_dashboards))
        .route("/api/dashboards/{name}", get(dashboard))
        .with_state(Dashboards {
            shared: shared.clone(),
            plugin_dir: options.plugin_dir.map(Arc::from),
        });
    Router::new()
        .route("/", get(dashboard_page))
        .route("/assets/{file}", get(asset))
        .route("/api", get(api_index))
        .route("/api/stream", get(stream))
        .route("/api/status", get(status))
        .route("/api/plugins", get(plugins))
        .route("/api/plugins/{name}/query", get(query))
        .route("/api/internal/partials/{name}", get(partials))
        .route("/api/plugins/{name}/dead-letters", get(dead_letters))
        .route("/api/plugins/{name}/versions", get(versions))
        .route("/api/rejected", get(rejected))
        .route("/metrics", get(metrics))
        .merge(admin_routes)
        .merge(dashboard_routes)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint; see GET / for the API",
            )
        })
        .layer(middleware::from_fn(secure_headers))
        .layer(middleware::from_fn_with_state(hosts, check_host))
        .with_state(shared)
}

/// The host names a request may address.
struct Hosts {
    /// Configured names; empty: see `loopback`.
    allowed: Vec<String>,
    /// Whether the listener is on a loopback address: then only loopback
    /// names are answered unless names are configured.
    loopback: bool,
}

impl Hosts {
    fn allows(&self, host: &str) -> bool {
        // `host[:port]`, `[v6][:port]`.
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        if !self.allowed.is_empty() {
            return self
                .allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(name));
        }
        !self.loopback
            || name.eq_ignore_ascii_case("localhost")
            || name.to_ascii_lowercase().ends_with(".localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// Refuses requests addressed to a host name this weft does not answer to:
/// a page elsewhere that rebinds its own name to 127.0.0.1 must not read the
/// API from a browser.
async fn check_host(State(hosts): State<Arc<Hosts>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}").to_owned());
    match host {
        Some(host) if !hosts.allows(&host) => ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this weft does not answer to the host name in `Host: {host}`; list the names it is reached by in allowed_hosts ([http] in weft.toml)"
            ),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// The page loads only its own scripts, styles and data, and no other site
/// may frame it.
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

async fn secure_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

/// How long requests in progress get to finish once the server stops; a
/// dashboard's event stream never ends by itself.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests
/// in progress finish for at most [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(options.server.header_timeout_ms));
    let slots = Arc::new(tokio::sync::Semaphore::new(
        options.server.max_connections.max(1),
    ));
    let service = TowerToHyperService::new(app(shared, options, local));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.map_err(std::io::Error::other)?,
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait for some to be freed.
                    tracing::warn!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection =
            graceful.watch(http1.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error.");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("Closed the HTTP connections still open after the grace period.");
    }
    Ok(())
}

/// The API's index: every endpoint with links.
async fn api_index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

/// The dashboard page and its assets, compiled in from `dashboards/web/`.
const PAGE: &str = include_str!("../../../dashboards/web/index.html");
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../dashboards/web/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../../dashboards/web/app.css"),
    ),
    (
        "api.css",
        "text/css; charset=utf-8",
        include_str!("api.css"),
    ),
    (
        "chart.umd.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../dashboards/web/vendor/chart.umd.min.js"),
    ),
];

async fn dashboard_page() -> Html<&'static str> {
    Html(PAGE)
}

async fn asset(Path(file): Path<String>) -> ApiResult<Response> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no asset `{file}`")))?;
    Ok((
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        *body,
    )
        .into_response())
}

/// What the dashboard routes need: the pipeline, and where plugins may ship
/// their own declarations.
#[derive(Clone)]
struct Dashboards {
    shared: Arc<Shared>,
    plugin_dir: Option<Arc<std::path::Path>>,
}

impl Dashboards {
    fn load(&self) -> Vec<dashboards::Dashboard> {
        dashboards::load(&self.shared, self.plugin_dir.as_deref())
    }
}

async fn list_dashboards(State(d): State<Dashboards>) -> Json<serde_json::Value> {
    let list: Vec<_> = d
        .load()
        .into_iter()
        .map(|b| {
            serde_json::json!({
                "name": b.name, "title": b.title, "source": b.source,
                "panels": b.panels.len(), "errors": b.errors(), "error": b.error,
            })
        })
        .collect();
    Json(serde_json::Value::Array(list))
}

async fn dashboard(
    State(d): State<Dashboards>,
    Path(name): Path<String>,
) -> ApiResult<Json<dashboards::Dashboard>> {
    d.load()
        .into_iter()
        .find(|b| b.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no dashboard `{name}`")))
}

/// How often the stream looks for changes: updates are coalesced to at
/// most this rate.
const STREAM_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// `GET /api/stream`: Server-Sent Events, an `update` with the status and
/// the plugins whenever either changed, at most every [`STREAM_EVERY`].
async fn stream(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let updates =
        futures_util::stream::unfold((shared, String::new()), |(shared, last)| async move {
            loop {
                let snapshot = serde_json::json!({
                    "status": shared.status(),
                    "plugins": shared.plugin_infos(),
                })
                .to_string();
                if snapshot != last {
                    let event = Event::default().event("update").data(snapshot.clone());
                    return Some((Ok(event), (shared, snapshot)));
                }
                tokio::time::sleep(STREAM_EVERY).await;
            }
        });
    Sse::new(updates).keep_alive(KeepAlive::default())
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<weft_pipeline::Status> {
    Json(shared.status())
}

async fn plugins(State(shared): State<Arc<Shared>>) -> Json<Vec<PluginInfo>> {
    Json(shared.plugin_infos())
}

async fn query(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let answer = tokio::task::spawn_blocking(move || group::query(&shared, &name, params))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("query task failed: {e}"),
            )
        })?;
    match answer {
        Ok(group::Answer::Whole(json)) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
        }
        Ok(group::Answer::Partial(body)) => Ok(Json(body).into_response()),
        Ok(group::Answer::Missing(missing)) => Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "error": format!(
                    "no answer from the owners of partitions {missing:?}: they are moving between hosts or their host is unreachable; ask again, or add partial=true for the answer of the others"
                ),
                "missing": missing,
            })),
        )
            .into_response()),
        Err(error) => Err(query_error(error)),
    }
}

/// This host's partitions' own answers of a metric, for a query on another
/// host of the group: `{"partials": [{"partition": P, "answer": …}]}`.
async fn partials(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Json<serde_json::Value>> {
    let answer = tokio::task::spawn_blocking(move || shared.partials(&name, &params))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("query task failed: {e}"),
            )
        })?
        .map_err(query_error)?;
    let partials: Vec<_> = answer
        .into_iter()
        .map(|(partition, answer)| {
            let answer: serde_json::Value =
                serde_json::from_str(&answer).unwrap_or(serde_json::Value::String(answer));
            serde_json::json!({ "partition": partition, "answer": answer })
        })
        .collect();
    Ok(Json(serde_json::json!({ "partials": partials })))
}

fn query_error(error: QueryError) -> ApiError {
    let status = match &error {
        QueryError::NotFound(_) => StatusCode::NOT_FOUND,
        QueryError::NotMetric { .. } | QueryError::Declined(_) => StatusCode::BAD_REQUEST,
        // Asked more than the plugin's limits allow: the instance is
        // restarted, and the next query is answered.
        QueryError::Limit(_) => StatusCode::UNPROCESSABLE_ENTITY,
        QueryError::Stopping(_) => StatusCode::SERVICE_UNAVAILABLE,
        QueryError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, error.to_string())
}

#[derive(Deserialize)]
struct PageParams {
    limit: Option<usize>,
    /// The `next` of the page before: `{partition}.{sequence}`.
    after: Option<String>,
}

#[derive(Serialize)]
struct RejectedView {
    /// `{partition}.{sequence}`: its place among the rejected.
    seq: String,
    reason: String,
    detail: String,
    partition: i32,
    offset: i64,
    /// The message as received (invalid UTF-8 shown with replacement
    /// characters), or its first bytes when it was longer than
    /// `rejected_raw_limit`.
    raw: String,
    /// The whole message's length in bytes.
    raw_len: u64,
    /// Whether `raw` is only a prefix; `raw_sha256` is then the whole
    /// message's digest.
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_sha256: Option<String>,
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
    let next = records.last().map(|(seq, _)| seq.to_string());
    let views: Vec<RejectedView> = records
        .into_iter()
        .map(|(seq, r)| RejectedView {
            seq: seq.to_string(),
            reason: r.reason,
            detail: r.detail,
            partition: r.partition,
            offset: r.offset,
            raw: String::from_utf8_lossy(&r.raw).into_owned(),
            raw_len: r.raw_len,
            truncated: r.raw_sha256.is_some(),
            raw_sha256: r.raw_sha256,
        })
        .collect();
    Ok(Json(serde_json::json!({ "rejected": views, "next": next })))
}

/// `after` and `limit` (1..=1000, default 100) of a paged listing.
fn page(
    params: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<(Option<weft_state::Seq>, usize)> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "limit must be between 1 and 1000",
        ));
    }
    let after = params
        .after
        .map(|a| a.parse::<weft_state::Seq>())
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    Ok((after, limit))
}

async fn dead_letters(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    params: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    if shared.role(&name).is_none() {
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
    let next = records.last().map(|(seq, _)| seq.to_string());
    let mut views = Vec::with_capacity(records.len());
    for (seq, bytes) in records {
        let letter = DeadLetter::decode(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("dead letter {seq}: {e}"),
            )
        })?;
        views.push(serde_json::json!({
            "seq": seq.to_string(),
            "partition": seq.part,
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
        // The gauges that sum over partitions, as of now.
        shared.update_gauges();
        shared.telemetry.render()
    })
}

/// Lets a request through only with the configured bearer token.
async fn authorize(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = admin.token.as_deref() else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "the admin API is disabled: start weft with --admin-token (or WEFT_ADMIN_TOKEN, or admin_token in weft.toml)",
        )
        .into_response();
    };
    // The scheme's name is case-insensitive (RFC 7235).
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim_start());
    match given {
        Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => {
            // An announced upload over the limit is refused before a byte of it
            // is read; one that grows past it while read is refused by the
            // body limit (see `deploy`).
            let announced = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if announced.is_some_and(|n| n > admin.upload_limit as u64) {
                return too_large().into_response();
            }
            next.run(request).await
        }
        _ => {
            let message = if given.is_some() {
                "wrong admin token"
            } else {
                "the admin API needs `Authorization: Bearer TOKEN`"
            };
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "the component is larger than the upload limit (upload_limit_mib in weft.toml, default 32)",
    )
}

/// A manifest given as the query of an upload.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadParams {
    /// The instance's config, as JSON.
    config: Option<String>,
    role: Option<Role>,
    cpu_ms: Option<u64>,
    memory_mib: Option<u64>,
}

impl UploadParams {
    /// `config`, parsed.
    fn config(&self) -> ApiResult<Option<serde_json::Value>> {
        self.config
            .as_deref()
            .map(serde_json::from_str::<serde_json::Value>)
            .transpose()
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("`config` is not JSON: {e}"),
                )
            })
    }

    fn manifest(self) -> ApiResult<Manifest> {
        let config = self.config()?;
        let defaults = Limits::default();
        Ok(Manifest {
            role: self.role,
            config,
            limits: Limits {
                cpu_ms: self.cpu_ms.unwrap_or(defaults.cpu_ms),
                memory_mib: self.memory_mib.unwrap_or(defaults.memory_mib),
            },
        })
    }
}

/// Runs a blocking lifecycle action off the async workers.
async fn lifecycle(
    action: impl FnOnce() -> Result<Applied, LifecycleError> + Send + 'static,
) -> ApiResult<Json<Applied>> {
    tokio::task::spawn_blocking(action)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("lifecycle task failed: {e}"),
            )
        })?
        .map(Json)
        .map_err(ApiError::from)
}

async fn deploy(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    params: Result<Query<UploadParams>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let manifest = params.manifest()?;
    let wasm = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        status => ApiError::new(status, e.body_text()),
    })?;
    if wasm.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request body must be the component (a .wasm file)",
        ));
    }
    let Json(applied) =
        lifecycle(move || shared.deploy(&name, &wasm, manifest, Origin::Api)).await?;
    let status = if applied.replaced.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(applied)).into_response())
}

async fn unload(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Applied>> {
    lifecycle(move || shared.remove(&name)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackParams {
    to: Option<String>,
}

async fn rollback(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    params: Result<Query<RollbackParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Applied>> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    lifecycle(move || shared.rollback(&name, params.to.as_deref())).await
}

async fn reload(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    params: Result<Query<UploadParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Applied>> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    if params.role.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a reload keeps the running version, and so its role",
        ));
    }
    let changes = Changes {
        config: params.config()?,
        cpu_ms: params.cpu_ms,
        memory_mib: params.memory_mib,
    };
    lifecycle(move || shared.reload(&name, changes)).await
}

async fn replay_dead_letters(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Applied>> {
    lifecycle(move || shared.replay_dead_letters(&name)).await
}

async fn versions(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let versions = shared.versions(&name)?;
    let current = shared.digest(&name);
    Ok(Json(
        serde_json::json!({ "name": name, "current": current, "versions": versions }),
    ))
}
