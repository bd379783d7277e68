//! The HTTP adapter: `/http/<service>/<path>` to a plain HTTP API, decided on method and
//! canonical path (sent upstream re-encoded from it), with the body, URL and forwarded headers
//! inspected, method and URL overrides dropped, and — where the upstream says
//! `inspectResponses` — the answer reviewed like a tool's result.

// The `Err` of the helpers below is the early response that ends the request; boxing it would
// only add an allocation to the refusal path.
#![allow(clippy::result_large_err)]

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use warden_model::{Action, HttpMethod, HttpPath};

use crate::identify::Caller;
use crate::mcp;

use std::sync::Arc;

use crate::stack::{Adapter, Ask, Classification, Refusal};

use crate::plumbing::{
    AgentRequest, Body, BoxError, HOP_AND_CREDENTIALS, State, Upstream, call_upstream, describe,
    forbidden, full, problem,
};

/// `/http/<service>/<path>`: the path below the service's name is `rest`.
pub(crate) struct Http<'a> {
    pub upstream: &'a Upstream,
    pub rest: String,
}

pub(crate) struct HttpPlan {
    /// The upstream URL, re-encoded from the decided path.
    url: String,
    /// The action, when the answer is reviewed (`inspectResponses`).
    reviewed: Option<Action>,
}

impl Adapter for Http<'_> {
    type Plan = HttpPlan;

    fn classify(
        &self,
        state: &State,
        request: &mut AgentRequest,
    ) -> Result<Classification<HttpPlan>, Response<Body>> {
        let upstream = self.upstream;
        let (method, path) = match (
            HttpMethod::new(request.head.method.as_str()),
            HttpPath::new(&self.rest),
        ) {
            (Ok(method), Ok(path)) => (method, path),
            (Err(e), _) | (_, Err(e)) => {
                return Err(problem(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &e.to_string(),
                ));
            }
        };
        let headers = &request.head.headers;
        let query = request
            .head
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let body = &mut request.body;
        if !body.is_empty()
            && is_json(headers)
            && let Err(e) = crate::json::parse_strict(body)
        {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "bad_json",
                &format!(
                    "the JSON body is refused ({e}): Warden forwards only JSON that it and the upstream read the same way"
                ),
            ));
        }
        let mut said = crate::pipeline::Said::from_headers(headers);
        if state.pipeline.redacts_requests() && !body.is_empty() {
            said.redacted = redact_body(&state.pipeline, headers, body);
        }
        let encoded = path.encoded();
        let url = format!(
            "{}{encoded}{query}",
            upstream.config.url.trim_end_matches('/')
        );
        let action = Action::Http {
            service: upstream.config.name.clone(),
            method,
            path,
        };
        // What leaves besides the body: the URL (a query string carries data too) and the
        // headers that are forwarded. Their findings are located at `/url` and `/headers/<name>`.
        let forwarded: serde_json::Map<String, Value> = headers
            .iter()
            .filter(|(name, _)| forwards_header(name.as_str()))
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), Value::String(value))
            })
            .collect();
        said.findings.extend(state.pipeline.inspect_content(
            &action,
            &json!({"url": format!("{encoded}{query}"), "headers": forwarded}),
        ));
        // Kept for the review of the response, when it is inspected.
        let reviewed = upstream.config.inspect_responses.then(|| action.clone());
        Ok(Classification {
            asks: vec![Ask::decide(action, said)],
            plan: HttpPlan { url, reviewed },
        })
    }

    async fn refuse(&self, _: HttpPlan, refusal: Refusal) -> Response<Body> {
        // Denied and needs-approval are both 403; the body's `data.outcome` tells them apart and
        // carries what an approval request needs.
        forbidden(&refusal.verdict, &refusal.what, mcp::CODES)
    }

    async fn forward(
        &self,
        state: &Arc<State>,
        request: AgentRequest,
        plan: HttpPlan,
    ) -> Response<Body> {
        let AgentRequest { caller, head, body } = request;
        let HttpPlan { url, reviewed } = plan;
        let inspect = reviewed.is_some();
        let response = match call_upstream(
            state,
            self.upstream,
            head.method,
            &url,
            &head.headers,
            // An inspected response must come back readable: no compression asked for.
            |name| forwards_header(name) && !(inspect && name == "accept-encoding"),
            body,
        )
        .await
        {
            Ok(response) => response,
            Err(response) => return response,
        };
        let (parts, body) = response.into_parts();
        let mut head = Response::new(());
        *head.status_mut() = parts.status;
        for (name, value) in &parts.headers {
            if !HOP_AND_CREDENTIALS.contains(&name.as_str()) && name != "set-cookie" {
                head.headers_mut().append(name, value.clone());
            }
        }
        let Some(reviewed) = reviewed else {
            return head.map(|()| body.map_err(|e| Box::new(e) as BoxError).boxed());
        };
        match reviewed_http(state, &caller, &reviewed, &parts.headers, body).await {
            Ok(bytes) => {
                // Redaction may have changed the length; the body's own is sent.
                head.headers_mut().remove(http::header::CONTENT_LENGTH);
                head.map(|()| full(bytes))
            }
            Err(refusal) => refusal,
        }
    }
}

/// Headers some frameworks read as the request's real method or URL: forwarded, they would turn
/// a call decided as `GET /status` into a `DELETE` or a request for another path upstream.
const METHOD_AND_URL_OVERRIDES: [&str; 9] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-forwarded-path",
    "x-forwarded-prefix",
];

/// Whether a client's header goes on to an HTTP upstream: credentials, hop-by-hop headers,
/// method and URL overrides and Warden's own do not.
fn forwards_header(name: &str) -> bool {
    !(HOP_AND_CREDENTIALS.contains(&name)
        || METHOD_AND_URL_OVERRIDES.contains(&name)
        || name.starts_with("warden-"))
}

/// Redacts an HTTP request body where configured (see `as_content`) and returns what was
/// redacted.
fn redact_body(
    pipeline: &crate::pipeline::Pipeline,
    headers: &HeaderMap,
    body: &mut Bytes,
) -> Vec<warden_model::Finding> {
    let Some((mut value, json)) = as_content(headers, body) else {
        return Vec::new();
    };
    let redacted = pipeline.redact_request(&mut value);
    if !redacted.is_empty() {
        *body = content_bytes(value, json);
    }
    redacted
}

/// An HTTP response read whole and reviewed as a tool's result is: its bytes as they go on
/// (redacted where configured), or the refusal that replaces it. Text and JSON are inspected;
/// other media types (images, archives) pass as they are.
async fn reviewed_http(
    state: &State,
    caller: &Caller,
    action: &Action,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, Response<Body>> {
    let encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    if encoding.is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
        // Fail closed: what cannot be read cannot be inspected.
        return Err(problem(
            StatusCode::BAD_GATEWAY,
            "uninspectable_response",
            "the upstream compressed a response that is to be inspected; it must answer uncompressed",
        ));
    }
    let bytes = crate::reviewed::collect(
        body,
        crate::reviewed::MAX_REVIEWED_BYTES,
        "the upstream's response is too large to inspect",
    )
    .await?;
    let Some((mut value, json)) = as_content(headers, &bytes) else {
        return Ok(bytes);
    };
    let review = state.pipeline.review(caller, action, &mut value);
    if let Some(verdict) = review.verdict.as_ref().filter(|_| review.refused()) {
        let what = format!("the response of {}", describe(action));
        return Err(forbidden(verdict, &what, mcp::CODES));
    }
    Ok(if review.redacted {
        content_bytes(value, json)
    } else {
        bytes
    })
}

/// An HTTP body as content to inspect or redact, by its media type: JSON as its value (as text
/// when it does not parse), text (and XML, JavaScript, forms) as a string; other media types
/// (images, archives) are not content. Whether it is JSON comes with it.
fn as_content(headers: &HeaderMap, body: &[u8]) -> Option<(Value, bool)> {
    let media = media_type(headers);
    let json = media.contains("json");
    let textual = json
        || media.starts_with("text/")
        || media.contains("xml")
        || media.contains("javascript")
        || media.starts_with("application/x-www-form-urlencoded");
    if !textual {
        return None;
    }
    let text = || Value::String(String::from_utf8_lossy(body).into_owned());
    let value = if json {
        crate::json::parse_strict(body).unwrap_or_else(|_| text())
    } else {
        text()
    };
    Some((value, json))
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain")
        .to_ascii_lowercase()
}

/// Whether a body says it is JSON (`application/json`, `…+json`).
fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).contains("json")
}

/// The body `as_content` read, written back after redaction.
fn content_bytes(value: Value, json: bool) -> Bytes {
    match value {
        Value::String(text) if !json => Bytes::from(text),
        value => Bytes::from(value.to_string()),
    }
}
