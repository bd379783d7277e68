//! The REST API under `/v1`: JSON in and out, admin credentials with roles, errors that say what
//! to do. Operations that write wait for the store's fsync before answering.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use warden_authority::Revocation;
use warden_model::Name;

use crate::approvals::{ApprovalBinding, ApprovalRequest, ApprovalStatus, Verdict};
use crate::control::{
    AdminRecord, AttestRequest, Control, ControlError, CredentialRequest, ExchangeRequest, Feed,
    RegisterAgent, Role,
};
use crate::events::PublishEvent;
use crate::tools::ToolSeen;

/// The OpenAPI document served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");
/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest a revocation watch may hold a request open.
const MAX_WATCH: Duration = Duration::from_secs(60);

impl ControlError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let message = match &self {
            // Internal details go to the log, not to the caller.
            Self::Internal(detail) => {
                eprintln!("warden-control: internal error: {detail}");
                "internal error; see the control plane's log".to_owned()
            }
            other => other.to_string(),
        };
        (
            status,
            Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ControlError>;

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    payload
        .map(|Json(v)| v)
        .map_err(|e| ControlError::BadRequest(format!("invalid request body: {}", e.body_text())))
}

/// Runs a store-touching operation off the async workers (commits wait for fsync).
async fn blocking<T: Send + 'static>(
    control: &Arc<Control>,
    op: impl FnOnce(&Control) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let control = Arc::clone(control);
    tokio::task::spawn_blocking(move || op(&control))
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))?
}

/// Authenticates the request's admin token for `role`, returning who it is.
async fn require(
    control: &Arc<Control>,
    headers: &HeaderMap,
    role: Role,
) -> ApiResult<AdminRecord> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ControlError::Unauthorized(
                "send an admin token: `Authorization: Bearer wdn_…` (WARDEN_TOKEN for the CLI)"
                    .into(),
            )
        })?
        .to_owned();
    blocking(control, move |c| c.authenticate(&token, role)).await
}

fn name(what: &str, value: String) -> ApiResult<Name> {
    Name::new(value).map_err(|e| ControlError::BadRequest(format!("{what}: {e}")))
}

pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .route(
            "/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/v1/bundle", get(bundle))
        .route("/v1/revocations", get(revocations).post(revoke))
        .route("/v1/agents", get(list_agents).post(register_agent))
        .route("/v1/agents/{tenant}/{name}", get(show_agent))
        .route("/v1/agents/{tenant}/{name}/revoke", post(revoke_agent))
        .route("/v1/agents/{tenant}/{name}/credentials", post(credentials))
        .route("/v1/agents/{tenant}/{name}/join-tokens", post(join_token))
        .route("/v1/attest", post(attest))
        .route("/v1/token", post(token_exchange))
        .route("/v1/authority/rotate", post(rotate))
        .route("/v1/admins", post(create_admin))
        .route("/v1/whoami", get(whoami))
        .route("/v1/oversight", get(oversight))
        .route("/v1/quarantine", post(quarantine))
        .route("/v1/quarantine/release", post(release))
        .route("/v1/detections", post(report_detection))
        .route("/v1/freeze", post(freeze))
        .route("/v1/approvals", get(list_approvals).post(request_approval))
        .route("/v1/approvals/{id}", get(show_approval))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/reject", post(reject))
        .route("/v1/approvals/{id}/use", post(use_approval))
        .route("/v1/events", get(events).post(publish_event))
        .route("/v1/tools", get(list_tools))
        .route("/v1/tools/observe", post(observe_tool))
        .route("/v1/tools/{server}/{tool}/approve", post(approve_tool))
        .route("/v1/unfreeze", post(unfreeze))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(control)
}

/// Serves the API until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    control: Arc<Control>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let expiry = tokio::spawn(release_expired_holds(Arc::clone(&control)));
    let served = axum::serve(listener, router(control))
        .with_graceful_shutdown(shutdown)
        .await;
    expiry.abort();
    served
}

/// Lifts time-limited quarantines as they run out (checked every second).
async fn release_expired_holds(control: Arc<Control>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        match blocking(&control, move |c| c.release_expired(now)).await {
            Ok(0) => {}
            Ok(released) => tracing::info!("{released} time-limited quarantine(s) lifted"),
            Err(e) => tracing::error!("cannot lift expired quarantines: {e}"),
        }
    }
}

async fn bundle(State(control): State<Arc<Control>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(blocking(&control, |c| c.bundle()).await?))
}

async fn revocations(
    State(control): State<Arc<Control>>,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let since = long_poll(&control, Feed::Revocations, query).await?;
    Ok(Json(
        blocking(&control, move |c| c.revocations_since(since)).await?,
    ))
}

async fn revoke(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    payload: Result<Json<Revocation>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    require(&control, &headers, Role::Admin).await?;
    let revocation = body(payload)?;
    let version = blocking(&control, move |c| c.revoke(revocation)).await?;
    Ok((StatusCode::CREATED, Json(json!({"version": version}))))
}

async fn list_agents(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    require(&control, &headers, Role::Viewer).await?;
    Ok(Json(blocking(&control, |c| c.list_agents()).await?))
}

async fn register_agent(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    payload: Result<Json<RegisterAgent>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let admin = require(&control, &headers, Role::Admin).await?;
    let request = body(payload)?;
    let record = blocking(&control, move |c| c.register_agent(request, &admin.name)).await?;
    Ok((StatusCode::CREATED, Json(record)))
}

async fn show_agent(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path((tenant, agent)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    require(&control, &headers, Role::Viewer).await?;
    let (tenant, agent) = (name("tenant", tenant)?, name("agent", agent)?);
    Ok(Json(
        blocking(&control, move |c| c.agent(&tenant, &agent)).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeAgent {
    reason: String,
}

async fn revoke_agent(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path((tenant, agent)): Path<(String, String)>,
    payload: Result<Json<RevokeAgent>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    require(&control, &headers, Role::Admin).await?;
    let (tenant, agent) = (name("tenant", tenant)?, name("agent", agent)?);
    let reason = body(payload)?.reason;
    let version = blocking(&control, move |c| c.revoke_agent(&tenant, &agent, &reason)).await?;
    Ok(Json(json!({"version": version})))
}

async fn credentials(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path((tenant, agent)): Path<(String, String)>,
    payload: Result<Json<CredentialRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    require(&control, &headers, Role::Admin).await?;
    let (tenant, agent) = (name("tenant", tenant)?, name("agent", agent)?);
    let request = body(payload)?;
    let issued = blocking(&control, move |c| {
        c.issue_credentials(&tenant, &agent, request, "admin")
    })
    .await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JoinTokenRequest {
    #[serde(default = "default_join_ttl")]
    ttl_seconds: u64,
}

fn default_join_ttl() -> u64 {
    3600
}

async fn join_token(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path((tenant, agent)): Path<(String, String)>,
    payload: Result<Json<JoinTokenRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    require(&control, &headers, Role::Admin).await?;
    let (tenant, agent) = (name("tenant", tenant)?, name("agent", agent)?);
    let ttl = Duration::from_secs(body(payload)?.ttl_seconds);
    let (token, expires) =
        blocking(&control, move |c| c.create_join_token(&tenant, &agent, ttl)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "expires": expires})),
    ))
}

async fn attest(
    State(control): State<Arc<Control>>,
    payload: Result<Json<AttestRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let request = body(payload)?;
    // Verification may fetch the issuer's keys (async); issuing commits to the store.
    let issued = Arc::clone(&control).attest(request).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// RFC 8693 token exchange: form-encoded in, OAuth-shaped errors out.
async fn token_exchange(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    form: axum::body::Bytes,
) -> Response {
    let header_value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut request = ExchangeRequest {
        proof: header_value("dpop"),
        svid: header_value("warden-svid"),
        ..ExchangeRequest::default()
    };
    for (key, value) in form_urlencoded::parse(&form) {
        let value = value.into_owned();
        match key.as_ref() {
            "grant_type" => request.grant_type = value,
            "subject_token" => request.subject_token = value,
            "subject_token_type" => request.subject_token_type = value,
            "scope" => request.scope = value,
            "sub_agent" => request.sub_agent = value,
            "sub_instance" => request.sub_instance = Some(value),
            "purpose" => request.purpose = Some(value),
            "holder_key" => request.holder_key = Some(value),
            "expires_in" => match value.parse() {
                Ok(secs) => request.expires_in = Some(secs),
                Err(_) => return oauth_error("invalid_request", "expires_in must be seconds"),
            },
            _ => {}
        }
    }
    match blocking(&control, move |c| c.exchange(request)).await {
        Ok(response) => Json(response).into_response(),
        Err(e) => {
            let code = match e {
                ControlError::BadRequest(_) => "invalid_request",
                ControlError::Forbidden(_) => "invalid_scope",
                ControlError::Internal(_) => return e.into_response(),
                _ => "invalid_grant",
            };
            oauth_error(code, &e.to_string())
        }
    }
}

fn oauth_error(code: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

async fn rotate(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    require(&control, &headers, Role::Admin).await?;
    Ok(Json(blocking(&control, |c| c.rotate()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAdmin {
    name: String,
    role: Role,
    #[serde(default)]
    groups: Vec<Name>,
}

async fn create_admin(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    payload: Result<Json<CreateAdmin>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    require(&control, &headers, Role::Admin).await?;
    let request = body(payload)?;
    let token = blocking(&control, move |c| {
        c.create_admin(&request.name, request.role, request.groups)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "note": "shown once; store it now"})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    #[serde(default)]
    since: u64,
    /// Seconds to wait for something newer than `since` (long poll); 0 answers at once.
    #[serde(default)]
    wait: u64,
}

/// Authenticates the caller for `role`, reads the JSON body, and runs `op` with both off the
/// async workers (it commits, and waits for fsync).
async fn acting<T: Send + 'static, R: Send + 'static>(
    control: &Arc<Control>,
    headers: &HeaderMap,
    role: Role,
    payload: Result<Json<T>, JsonRejection>,
    op: impl FnOnce(&Control, AdminRecord, T) -> ApiResult<R> + Send + 'static,
) -> ApiResult<Json<R>> {
    let admin = require(control, headers, role).await?;
    let request = body(payload)?;
    Ok(Json(
        blocking(control, move |c| op(c, admin, request)).await?,
    ))
}

type QueryRejection = axum::extract::rejection::QueryRejection;

fn query_of<T>(query: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ControlError::BadRequest(format!("invalid query: {}", e.body_text())))
}

/// Reads a long-poll query and waits, when asked, until `feed` moves past `since`; returns
/// `since`.
async fn long_poll(
    control: &Control,
    feed: Feed,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> ApiResult<u64> {
    let query = query_of(query)?;
    if query.wait > 0 {
        control
            .wait_for(
                feed,
                query.since,
                Duration::from_secs(query.wait).min(MAX_WATCH),
            )
            .await;
    }
    Ok(query.since)
}

/// Quarantine holds and the kill switch; with `wait`, answers as soon as they change. Anyone
/// may read which agents are held (every gateway and stdio wrapper must); who held them and why
/// is shown to admins only.
async fn oversight(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let admin = if headers.contains_key(header::AUTHORIZATION) {
        Some(require(&control, &headers, Role::Viewer).await?)
    } else {
        None
    };
    long_poll(&control, Feed::Oversight, query).await?;
    let mut state = blocking(&control, |c| c.oversight()).await?;
    if admin.is_none() {
        for hold in &mut state.quarantined {
            hold.reason.clear();
            hold.by.clear();
        }
        if let Some(freeze) = &mut state.frozen {
            freeze.reason.clear();
            freeze.by.clear();
        }
    }
    Ok(Json(state))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldRequest {
    /// `tenant/name` or a SPIFFE ID.
    agent: String,
    reason: String,
}

async fn quarantine(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    payload: Result<Json<HoldRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let state = acting(&control, &headers, Role::Admin, payload, |c, admin, r| {
        c.quarantine(&r.agent, &r.reason, &admin.name)
    })
    .await?;
    Ok((StatusCode::CREATED, state))
}

/// What a gateway's detectors found.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DetectionReport {
    /// The agent's SPIFFE ID.
    agent: String,
    detector: String,
    summary: String,
    /// The decisions that make it.
    evidence: Vec<String>,
    /// Quarantine the agent.
    quarantine: bool,
    /// For this long; absent: until a person releases it.
    #[serde(default)]
    for_secs: Option<u64>,
}

/// A gateway reports a detection: it is recorded in the control trail and, when asked, the
/// agent quarantined as `warden quarantine` would (an agent already held stays held).
async fn report_detection(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    payload: Result<Json<DetectionReport>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let outcome = acting(
        &control,
        &headers,
        Role::Gateway,
        payload,
        |c, gateway, r| {
            c.detected(
                &crate::oversight::Detected {
                    agent: &r.agent,
                    detector: &r.detector,
                    summary: &r.summary,
                    evidence: &r.evidence,
                    quarantine: r.quarantine,
                    for_secs: r.for_secs,
                },
                &gateway.name,
            )
        },
    )
    .await?;
    Ok((StatusCode::CREATED, outcome))
}

async fn release(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    payload: Result<Json<HoldRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    acting(&control, &headers, Role::Admin, payload, |c, admin, r| {
        c.release(&r.agent, &r.reason, &admin.name)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonRequest {
    reason: String,
}

async fn freeze(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    payload: Result<Json<ReasonRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let state = acting(&control, &headers, Role::Admin, payload, |c, admin, r| {
        c.freeze(&r.reason, &admin.name)
    })
    .await?;
    Ok((StatusCode::CREATED, state))
}

async fn unfreeze(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    payload: Result<Json<ReasonRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    acting(&control, &headers, Role::Admin, payload, |c, admin, r| {
        c.unfreeze(&r.reason, &admin.name)
    })
    .await
}

async fn request_approval(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    payload: Result<Json<ApprovalRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let approval = acting(&control, &headers, Role::Gateway, payload, |c, _, r| {
        c.request_approval(r)
    })
    .await?;
    Ok((StatusCode::CREATED, approval))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalsQuery {
    /// `pending` (the default), `approved`, `rejected`, `used`, `expired` or `all`.
    #[serde(default)]
    status: Option<String>,
}

async fn list_approvals(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    query: Result<Query<ApprovalsQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    require(&control, &headers, Role::Viewer).await?;
    let query = query_of(query)?;
    let status = match query.status.as_deref().unwrap_or("pending") {
        "all" => None,
        other => Some(
            serde_json::from_value::<ApprovalStatus>(json!(other)).map_err(|_| {
                ControlError::BadRequest(format!(
                    "status `{other}`: use pending, approved, rejected, used, expired or all"
                ))
            })?,
        ),
    };
    Ok(Json(
        blocking(&control, move |c| c.approvals(status)).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    /// Seconds to wait while the approval is pending.
    #[serde(default)]
    wait: u64,
}

async fn show_approval(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    require(&control, &headers, Role::Viewer).await?;
    let query = query_of(query)?;
    if query.wait > 0 {
        control
            .wait_for_approval(&id, Duration::from_secs(query.wait).min(MAX_WATCH))
            .await;
    }
    Ok(Json(blocking(&control, move |c| c.approval(&id)).await?))
}

async fn approve(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    payload: Result<Json<Verdict>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    acting(
        &control,
        &headers,
        Role::Approver,
        payload,
        move |c, approver, v| c.approve(&id, &approver, v),
    )
    .await
}

async fn reject(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    payload: Result<Json<Verdict>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    acting(
        &control,
        &headers,
        Role::Approver,
        payload,
        move |c, approver, v| c.reject(&id, &approver, v),
    )
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UseRequest {
    #[serde(flatten)]
    binding: ApprovalBinding,
    decision_id: String,
}

async fn use_approval(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    payload: Result<Json<UseRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    acting(
        &control,
        &headers,
        Role::Gateway,
        payload,
        move |c, _, r| c.use_approval(&id, &r.binding, &r.decision_id),
    )
    .await
}

async fn publish_event(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    payload: Result<Json<PublishEvent>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let event = acting(
        &control,
        &headers,
        Role::Publisher,
        payload,
        |c, publisher, r| c.publish_event(r, &publisher),
    )
    .await?;
    Ok((StatusCode::CREATED, event))
}

/// Published events after `since`; with `wait`, answers as soon as one arrives.
async fn events(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    require(&control, &headers, Role::Viewer).await?;
    let since = long_poll(&control, Feed::Events, query).await?;
    Ok(Json(
        blocking(&control, move |c| c.events_since(since)).await?,
    ))
}

/// Who an admin token belongs to: name, role and groups (gateways check people this way).
async fn whoami(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let admin = require(&control, &headers, Role::Viewer).await?;
    Ok(Json(admin))
}

async fn observe_tool(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    payload: Result<Json<ToolSeen>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let status = acting(&control, &headers, Role::Gateway, payload, |c, _, seen| {
        c.observe_tool(seen)
    })
    .await?;
    Ok(Json(json!({"status": status.0})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolsQuery {
    /// `pending` (the default) or `all`.
    #[serde(default)]
    status: Option<String>,
}

async fn list_tools(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    query: Result<Query<ToolsQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    require(&control, &headers, Role::Viewer).await?;
    let pending_only = match query_of(query)?.status.as_deref() {
        None | Some("pending") => true,
        Some("all") => false,
        Some(other) => {
            return Err(ControlError::BadRequest(format!(
                "status `{other}`: use pending or all"
            )));
        }
    };
    Ok(Json(
        blocking(&control, move |c| c.tool_pins(pending_only)).await?,
    ))
}

async fn approve_tool(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path((server, tool)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let admin = require(&control, &headers, Role::Admin).await?;
    Ok(Json(
        blocking(&control, move |c| {
            c.approve_tool(&server, &tool, &admin.name)
        })
        .await?,
    ))
}
