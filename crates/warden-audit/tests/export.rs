#![allow(clippy::unwrap_used)] // Tests fail loudly by design.
//! Export to SIEMs: OCSF events for every record a checkpoint covers, resumed from a persisted
//! cursor, nothing dropped while a sink is down, files rotated; each event carries what a SIEM
//! needs to check its copy against the log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use warden_audit::export::{self, FileSink, HttpSink};
use warden_audit::merkle::{leaf_hash, verify_inclusion};
use warden_audit::{
    AuditLog, Checkpoint, LogConfig, LogReader, NoteVerifier, generate_private_key,
};

fn log(dir: &std::path::Path) -> (AuditLog, NoteVerifier) {
    let (signer, _) = generate_private_key("warden.test/audit").unwrap();
    let verifier = NoteVerifier::parse(&signer.verifier_key()).unwrap();
    let log = AuditLog::open(
        LogConfig {
            dir: dir.to_owned(),
            origin: "warden.test/audit".into(),
            checkpoint_interval: Duration::from_millis(100),
        },
        signer,
    )
    .unwrap();
    (log, verifier)
}

fn append(log: &AuditLog, range: std::ops::Range<u64>) {
    let pending: Vec<_> = range
        .map(|i| {
            let action = ["mcp.tools/call", "http", "egress.connect"][(i % 3) as usize];
            log.append(
                format!(r#"{{"time":{i},"decisionId":"d{i}","outcome":"allow","action":"{action}","resource":"r","findings":[]}}"#)
                    .into_bytes(),
            )
        })
        .collect();
    for p in pending {
        p.blocking_recv().unwrap().unwrap();
    }
    log.checkpoint().unwrap();
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_file_sink_gets_every_record_once_resumes_from_its_cursor_and_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let (log, verifier) = log(&dir.path().join("audit"));
    append(&log, 0..2500);
    let out = dir.path().join("siem/events.jsonl");
    let mut sink = FileSink::new(out.clone(), 1 << 30, 3);
    while export::export_once(log.dir(), &verifier, "file", &mut sink).unwrap() > 0 {}
    assert_eq!(export::cursor(log.dir(), "file"), 2500);
    let events = lines(&out);
    assert_eq!(events.len(), 2500);
    assert_eq!(events[1]["class_uid"], 4002);
    assert_eq!(events[2]["class_uid"], 4001);
    assert_eq!(events[3]["class_uid"], 6003);

    // A SIEM copy checks against the log: the record's leaf hash, and a proof for its index
    // against the signed checkpoint the event carries.
    let warden = &events[1234]["unmapped"]["warden"];
    let record = warden["record"].as_str().unwrap();
    let index = warden["leaf_index"].as_u64().unwrap();
    let checkpoint = Checkpoint::parse(
        verifier
            .open(warden["checkpoint"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let (leaf, path) = LogReader::open(log.dir())
        .unwrap()
        .inclusion_proof(index, checkpoint.size)
        .unwrap();
    assert_eq!(leaf, leaf_hash(record.as_bytes()));
    assert!(verify_inclusion(
        index,
        checkpoint.size,
        &leaf,
        &path,
        &checkpoint.root
    ));

    // More records later: the sink gets only those, rotating when the file is large.
    append(&log, 2500..4000);
    let mut small = FileSink::new(out.clone(), 100_000, 2);
    while export::export_once(log.dir(), &verifier, "file", &mut small).unwrap() > 0 {}
    let mut all = Vec::new();
    for path in [
        out.with_extension("jsonl.2"),
        out.with_extension("jsonl.1"),
        out.clone(),
    ] {
        all.extend(lines(&path));
    }
    let last: Vec<u64> = all
        .iter()
        .map(|e| e["unmapped"]["warden"]["leaf_index"].as_u64().unwrap())
        .filter(|i| *i >= 2500)
        .collect();
    assert_eq!(
        last,
        (2500..4000).collect::<Vec<_>>(),
        "in order, none twice, none lost"
    );
    assert!(
        !out.with_extension("jsonl.3").exists(),
        "only `keep` old files"
    );
    log.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_catches_up_and_nothing_is_dropped() {
    // An HEC-shaped collector that refuses the first batches, then accepts.
    let refused = Arc::new(AtomicUsize::new(0));
    let got: Arc<Mutex<Vec<u64>>> = Arc::default();
    let app = {
        let (refused, got) = (Arc::clone(&refused), Arc::clone(&got));
        axum::Router::new().route(
            "/services/collector/event",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let (refused, got) = (Arc::clone(&refused), Arc::clone(&got));
                async move {
                    assert_eq!(headers["authorization"], "Splunk hec-token");
                    if refused.fetch_add(1, Ordering::SeqCst) < 3 {
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy");
                    }
                    for line in body.lines() {
                        let event: Value = serde_json::from_str(line).unwrap();
                        assert_eq!(event["sourcetype"], "ocsf");
                        got.lock().unwrap().push(
                            event["event"]["unmapped"]["warden"]["leaf_index"]
                                .as_u64()
                                .unwrap(),
                        );
                    }
                    (axum::http::StatusCode::OK, r#"{"text":"Success","code":0}"#)
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/services/collector/event",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let (log, verifier) = tokio::task::spawn_blocking({
        let audit = audit.clone();
        move || {
            let (log, verifier) = log(&audit);
            append(&log, 0..1500);
            (log, verifier)
        }
    })
    .await
    .unwrap();
    let sink = HttpSink::new(url, Some("hec-token".into())).unwrap();
    let exporter = export::start(&audit, verifier, "hec", Box::new(sink));
    let started = Instant::now();
    while got.lock().unwrap().len() < 1500 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the exporter did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(exporter);
    let mut indexes = got.lock().unwrap().clone();
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes, (0..1500).collect::<Vec<_>>());
    assert!(refused.load(Ordering::SeqCst) > 3);
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
}

/// Reads octet-counted syslog frames from one connection until `want` arrived.
fn read_frames(mut stream: impl std::io::Read, want: usize) -> Vec<String> {
    let mut buffer = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 65536];
    while frames.len() < want {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the connection ended after {} frames", frames.len());
        buffer.extend_from_slice(&chunk[..n]);
        while let Some(space) = buffer.iter().position(|b| *b == b' ') {
            let len: usize = std::str::from_utf8(&buffer[..space])
                .unwrap()
                .parse()
                .unwrap();
            if buffer.len() < space + 1 + len {
                break;
            }
            frames.push(String::from_utf8(buffer[space + 1..space + 1 + len].to_vec()).unwrap());
            buffer.drain(..space + 1 + len);
        }
    }
    frames
}

fn check_syslog(frames: &[String]) {
    for (i, frame) in frames.iter().enumerate() {
        let class = [6003, 4002, 4001][i % 3];
        assert!(
            frame.starts_with("<110>1 "),
            "log audit, informational: {frame}"
        );
        assert!(
            frame.contains(&format!(" warden - ocsf-{class} - {{")),
            "{frame}"
        );
        let event: Value = serde_json::from_str(&frame[frame.find('{').unwrap()..]).unwrap();
        assert_eq!(event["unmapped"]["warden"]["leaf_index"], i as u64);
    }
}

#[test]
fn syslog_gets_rfc_5424_messages_over_tcp_and_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (log, verifier) = log(&dir.path().join("audit"));
    append(&log, 0..300);

    // Plain TCP.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || read_frames(listener.accept().unwrap().0, 300));
    let mut sink = export::SyslogSink::new(address, None).unwrap();
    while export::export_once(log.dir(), &verifier, "syslog", &mut sink).unwrap() > 0 {}
    check_syslog(&server.join().unwrap());

    // TLS, the server's certificate checked against the CA the sink is given.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            )
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let tcp = listener.accept().unwrap().0;
        let connection = rustls::ServerConnection::new(config).unwrap();
        read_frames(rustls::StreamOwned::new(connection, tcp), 300)
    });
    let mut sink = export::SyslogSink::new(address, Some(&ca.pem())).unwrap();
    while export::export_once(log.dir(), &verifier, "syslog-tls", &mut sink).unwrap() > 0 {}
    check_syslog(&server.join().unwrap());

    // A server whose certificate the sink does not trust gets nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let _ = listener.accept();
    });
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let mut sink = export::SyslogSink::new(address, Some(&other.cert.pem())).unwrap();
    assert!(export::export_once(log.dir(), &verifier, "syslog-untrusted", &mut sink).is_err());
    assert_eq!(export::cursor(log.dir(), "syslog-untrusted"), 0);
    log.close();
}

/// A real nats-server with JetStream on free ports, storing in `store`; killed when dropped.
struct NatsServer(std::process::Child);

impl NatsServer {
    fn start(port: u16, monitor: u16, store: &std::path::Path) -> Self {
        let find = || {
            [
                "/usr/sbin/nats-server",
                "/usr/bin/nats-server",
                "nats-server",
            ]
            .into_iter()
            .find(|b| {
                std::process::Command::new(b)
                    .arg("--version")
                    .output()
                    .is_ok()
            })
        };
        // `cargo test` sets up its peers itself: Debian's nats-server when it is missing.
        let binary = find()
            .or_else(|| {
                let apt = |args: &[&str]| {
                    std::process::Command::new("apt-get")
                        .args(args)
                        .stdout(std::process::Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                };
                (apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", "nats-server"]))
                    .then(find)
                    .flatten()
            })
            .expect("nats-server is missing and `apt-get install nats-server` failed");
        let child = std::process::Command::new(binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-m",
                &monitor.to_string(),
            ])
            .arg("-sd")
            .arg(store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Messages stored in the stream, from the server's own monitoring endpoint.
fn stored(monitor: u16) -> u64 {
    use std::io::{Read as _, Write as _};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", monitor)).unwrap();
    tcp.write_all(b"GET /jsz?streams=true HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    let body: Value =
        serde_json::from_str(&answer[answer.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    body["account_details"][0]["stream_detail"][0]["state"]["messages"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_jetstream_stream_stores_every_event_and_catches_up_after_the_server_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (port, monitor) = (free_port(), free_port());
    let server = NatsServer::start(port, monitor, &dir.path().join("js"));
    let (log, verifier) = log(&dir.path().join("audit"));
    append(&log, 0..1200);
    let mut sink = warden_audit::nats::NatsSink::new(
        format!("127.0.0.1:{port}"),
        "WARDEN".into(),
        "warden.audit".into(),
    )
    .unwrap();
    while export::export_once(log.dir(), &verifier, "nats", &mut sink).unwrap() > 0 {}
    assert_eq!(stored(monitor), 1200);

    // The server goes away: nothing is lost, the cursor waits.
    drop(server);
    append(&log, 1200..1500);
    assert!(export::export_once(log.dir(), &verifier, "nats", &mut sink).is_err());
    assert_eq!(export::cursor(log.dir(), "nats"), 1200);

    // It returns (same storage): the sink catches up.
    let _server = NatsServer::start(port, monitor, &dir.path().join("js"));
    let started = Instant::now();
    loop {
        match export::export_once(log.dir(), &verifier, "nats", &mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(20), "{e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    assert_eq!(export::cursor(log.dir(), "nats"), 1500);
    assert_eq!(stored(monitor), 1500);
    log.close();
}
