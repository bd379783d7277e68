//! Logs to stderr (`WARDEN_LOG` filters them), and, when an OpenTelemetry collector is configured
//! with the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf` or
//! `http/json`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`), traces — a span per gateway
//! request with a child per pipeline stage — exported over OTLP/HTTP.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithHttpConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Flushes exported spans when dropped.
pub struct Telemetry(Option<SdkTracerProvider>);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warden: could not flush traces to the collector: {e}");
        }
    }
}

fn configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

pub fn init() -> anyhow::Result<Telemetry> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG")
                .unwrap_or_else(|_| "warn,warden::decision=info".into()),
        );
    if !configured() {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry(None));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OtlpClient::new()?)
        .build()
        .context("the OpenTelemetry exporter configuration (OTEL_EXPORTER_OTLP_*) is unusable")?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| String::from("warden"));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    // Only Warden's own spans: the request and its stages.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("warden"))
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("warden_gateway", tracing::Level::INFO),
        );
    tracing_subscriber::registry().with(logs).with(spans).init();
    Ok(Telemetry(Some(provider)))
}

/// The exporter's HTTP client: Warden's own (rustls with aws-lc-rs), on a runtime of its own,
/// because the batch exporter sends from its own thread.
struct OtlpClient {
    client: warden_http::HttpClient,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for OtlpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtlpClient")
    }
}

impl OtlpClient {
    fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("warden-otlp")
            .enable_all()
            .build()
            .context("cannot start the trace exporter's runtime")?;
        Ok(Self {
            client: warden_http::HttpClient::new(Duration::from_secs(10))?,
            runtime: Arc::new(runtime),
        })
    }
}

impl opentelemetry_http::HttpClient for OtlpClient {
    fn send_bytes<'a, 'f>(
        &'a self,
        request: http::Request<Bytes>,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<http::Response<Bytes>, opentelemetry_http::HttpError>>
                + Send
                + 'f,
        >,
    >
    where
        'a: 'f,
        Self: 'f,
    {
        let client = self.client.clone();
        let exchange = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let url = parts.uri.to_string();
            let headers: Vec<(String, String)> = parts
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect();
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            client
                .send(parts.method, &url, &headers, Some(body.to_vec()), 1 << 20)
                .await
        });
        Box::pin(async move {
            let answer = exchange.await??;
            let mut response = http::Response::new(answer.body);
            *response.status_mut() = answer.status;
            *response.headers_mut() = answer.headers;
            Ok(response)
        })
    }
}
