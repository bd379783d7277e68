//! Export to SIEMs: each sink reads the log from its own persisted cursor, sends OCSF events for
//! the records a signed checkpoint covers, and moves the cursor only once the sink took them.
//! Delivery is at least once; a sink that is down catches up when it returns; the gateway never
//! waits for a sink (the log is the source of truth, sinks read from it).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::merkle::leaf_hash;
use crate::note::NoteVerifier;
use crate::ocsf::{self, Provenance};
use crate::reader::LogReader;

/// Records sent to a sink at once.
const BATCH: u64 = 1000;

/// Where events go.
pub trait Sink: Send {
    /// Delivers the events, or says why not (the same events are offered again later).
    fn deliver(&mut self, events: &[Value]) -> Result<(), String>;
}

/// A running export; stops when dropped.
pub struct Exporter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn cursor_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("cursors").join(name)
}

/// The next record sink `name` has not taken yet.
pub fn cursor(dir: &Path, name: &str) -> u64 {
    std::fs::read_to_string(cursor_path(dir, name))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Persists a cursor so a crash never moves it back past what a sink took, nor forward past
/// what it did not.
fn save_cursor(dir: &Path, name: &str, next: u64) -> std::io::Result<()> {
    let path = cursor_path(dir, name);
    std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(next.to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(path.parent().unwrap_or(dir))?.sync_all()
}

/// Starts exporting the log in `dir` to `sink` under `name` (the cursor's name).
pub fn start(dir: &Path, verifier: NoteVerifier, name: &str, sink: Box<dyn Sink>) -> Exporter {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (stop, dir, name) = (Arc::clone(&stop), dir.to_owned(), name.to_owned());
        std::thread::Builder::new()
            .name(format!("warden-export-{name}"))
            .spawn(move || run(&dir, &verifier, &name, sink, &stop))
            .ok()
    };
    Exporter { stop, thread }
}

fn run(
    dir: &Path,
    verifier: &NoteVerifier,
    name: &str,
    mut sink: Box<dyn Sink>,
    stop: &AtomicBool,
) {
    let mut failures = 0u32;
    while !stop.load(Ordering::Relaxed) {
        match export_once(dir, verifier, name, sink.as_mut()) {
            Ok(0) => {
                failures = 0;
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(_) => failures = 0,
            Err(why) => {
                failures += 1;
                let backoff = Duration::from_millis(100 << failures.min(7));
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!("audit export `{name}`: {why}; retrying (attempt {failures})");
                }
                std::thread::sleep(backoff);
            }
        }
    }
}

/// Sends the next batch a checkpoint covers; returns how many records it sent.
pub fn export_once(
    dir: &Path,
    verifier: &NoteVerifier,
    name: &str,
    sink: &mut dyn Sink,
) -> Result<u64, String> {
    let reader = LogReader::open(dir).map_err(|e| e.to_string())?;
    let Some((checkpoint, note)) = reader
        .latest_checkpoint(verifier)
        .map_err(|e| e.to_string())?
    else {
        return Ok(0);
    };
    let from = cursor(dir, name);
    if from >= checkpoint.size {
        return Ok(0);
    }
    let count = (checkpoint.size - from).min(BATCH);
    let mut events = Vec::new();
    for record in reader
        .records(from)
        .map_err(|e| e.to_string())?
        .take(count as usize)
    {
        let (index, bytes) = record.map_err(|e| e.to_string())?;
        let hash: String = leaf_hash(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        let record: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let (_, path) = reader
            .inclusion_proof(index, checkpoint.size)
            .map_err(|e| e.to_string())?;
        let path: Vec<String> = path
            .iter()
            .map(|h| h.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        events.extend(ocsf::events(
            &record,
            &Provenance {
                record: &text,
                index,
                leaf_hash: &hash,
                checkpoint: &note,
                path: &path,
            },
        ));
    }
    sink.deliver(&events)?;
    save_cursor(dir, name, from + count).map_err(|e| format!("cannot save the cursor: {e}"))?;
    Ok(count)
}

/// JSON lines in a file, rotated when it grows past `max_bytes` (`path.1` is the newest old
/// file; `keep` old files are kept).
pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
}

impl FileSink {
    pub fn new(path: PathBuf, max_bytes: u64, keep: usize) -> Self {
        Self {
            path,
            max_bytes,
            keep,
        }
    }

    fn rotate(&self) -> std::io::Result<()> {
        let numbered = |n: usize| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if self.keep > 0 {
            std::fs::rename(&self.path, numbered(1))
        } else {
            std::fs::remove_file(&self.path)
        }
    }
}

impl Sink for FileSink {
    fn deliver(&mut self, events: &[Value]) -> Result<(), String> {
        let io = |e: std::io::Error| format!("{}: {e}", self.path.display());
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= self.max_bytes) {
            self.rotate().map_err(io)?;
        }
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut lines = Vec::new();
        for event in events {
            lines.extend_from_slice(event.to_string().as_bytes());
            lines.push(b'\n');
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        file.write_all(&lines).map_err(io)?;
        file.sync_data().map_err(io)
    }
}

/// An HTTP event collector in the Splunk HEC shape: events POSTed in batches as
/// `{"time", "source", "sourcetype", "event"}` objects, with `Authorization: Splunk <token>`.
pub struct HttpSink {
    url: String,
    token: Option<String>,
    client: warden_http::HttpClient,
    runtime: tokio::runtime::Runtime,
}

impl HttpSink {
    pub fn new(url: String, token: Option<String>) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let client =
            warden_http::HttpClient::new(Duration::from_secs(10)).map_err(|e| e.to_string())?;
        Ok(Self {
            url,
            token,
            client,
            runtime,
        })
    }
}

impl Sink for HttpSink {
    fn deliver(&mut self, events: &[Value]) -> Result<(), String> {
        let mut body = Vec::new();
        for event in events {
            let time = event
                .get("time")
                .and_then(Value::as_i64)
                .unwrap_or_default()
                / 1000;
            let wrapped = serde_json::json!({
                "time": time, "source": "warden", "sourcetype": "ocsf", "event": event,
            });
            body.extend_from_slice(wrapped.to_string().as_bytes());
            body.push(b'\n');
        }
        let authorization = self.token.as_ref().map(|t| format!("Splunk {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(authorization) = &authorization {
            headers.push(("authorization", authorization));
        }
        let response = self
            .runtime
            .block_on(self.client.send(
                http::Method::POST,
                &self.url,
                &headers,
                Some(body),
                64 * 1024,
            ))
            .map_err(|e| e.to_string())?;
        if response.status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "{} answered {}: {}",
                self.url,
                response.status,
                String::from_utf8_lossy(&response.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))
        }
    }
}

/// Syslog (RFC 5424) over TCP with octet-counting framing (RFC 6587), or over TLS (RFC 5425):
/// facility log audit, severity informational for allowed calls and warning otherwise, the
/// OCSF event as the message.
pub struct SyslogSink {
    address: String,
    tls: Option<(
        rustls_pki_types::ServerName<'static>,
        Arc<rustls::ClientConfig>,
    )>,
    hostname: String,
    stream: Option<Box<dyn std::io::Write + Send>>,
}

impl SyslogSink {
    /// `address` is `host:port`; with `ca_pem`, the connection is TLS and the server's
    /// certificate must chain to it and name `host`.
    pub fn new(address: String, ca_pem: Option<&str>) -> Result<Self, String> {
        let tls = match ca_pem {
            None => None,
            Some(pem) => {
                use rustls_pki_types::pem::PemObject as _;
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots
                        .add(cert.map_err(|e| format!("the CA file is not PEM: {e}"))?)
                        .map_err(|e| format!("unusable CA certificate: {e}"))?;
                }
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let host = address
                    .rsplit_once(':')
                    .map_or(address.as_str(), |(host, _)| host)
                    .trim_matches(['[', ']'])
                    .to_owned();
                let name = rustls_pki_types::ServerName::try_from(host)
                    .map_err(|e| format!("{address}: {e}"))?;
                Some((name, Arc::new(config)))
            }
        };
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
            .unwrap_or_else(|| "-".into());
        Ok(Self {
            address,
            tls,
            hostname,
            stream: None,
        })
    }

    fn connect(&self) -> Result<Box<dyn std::io::Write + Send>, String> {
        let tcp = std::net::TcpStream::connect(&self.address)
            .map_err(|e| format!("{}: {e}", self.address))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some((name, config)) => {
                let connection = rustls::ClientConnection::new(Arc::clone(config), name.clone())
                    .map_err(|e| e.to_string())?;
                Box::new(rustls::StreamOwned::new(connection, tcp))
            }
        })
    }

    fn message(&self, event: &Value) -> String {
        let failed = event.get("status_id").and_then(Value::as_i64) != Some(1);
        // Facility 13 (log audit); severity 4 (warning) or 6 (informational).
        let priority = 13 * 8 + if failed { 4 } else { 6 };
        let time = event
            .get("time")
            .and_then(Value::as_i64)
            .and_then(|ms| time::OffsetDateTime::from_unix_timestamp(ms / 1000).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "-".into());
        let class = event.get("class_uid").and_then(Value::as_i64).unwrap_or(0);
        let body = format!(
            "<{priority}>1 {time} {} warden - ocsf-{class} - {event}",
            self.hostname
        );
        format!("{} {body}", body.len())
    }
}

impl Sink for SyslogSink {
    fn deliver(&mut self, events: &[Value]) -> Result<(), String> {
        let mut frames = String::new();
        for event in events {
            frames += &self.message(event);
        }
        if self.stream.is_none() {
            self.stream = Some(self.connect()?);
        }
        let written = self
            .stream
            .as_mut()
            .map(|s| s.write_all(frames.as_bytes()).and_then(|()| s.flush()));
        match written {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                // Reconnect on the next attempt; these events are offered again.
                self.stream = None;
                Err(format!("{}: {e}", self.address))
            }
            None => Err("no connection".into()),
        }
    }
}
