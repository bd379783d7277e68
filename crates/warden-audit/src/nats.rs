//! A NATS JetStream sink: events published to a subject of a stream (created if missing), each
//! acknowledged by the server as stored before the cursor moves. The client protocol is the
//! plain text one (INFO, CONNECT, PUB, SUB, MSG, PING/PONG), over TCP.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::export::Sink;

/// The longest line or payload the sink reads from the server.
const MAX_SERVER_MESSAGE: usize = 1 << 20;

pub struct NatsSink {
    address: String,
    stream: String,
    subject: String,
    connection: Option<Connection>,
}

struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    inbox: String,
    next: u64,
}

impl Connection {
    fn open(address: &str) -> Result<Self, String> {
        let tcp = TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let writer = tcp.try_clone().map_err(|e| e.to_string())?;
        let mut connection = Self {
            reader: BufReader::new(tcp),
            writer,
            inbox: format!("_INBOX.warden.{}", random_token()?),
            next: 0,
        };
        let info = connection.line()?;
        if !info.starts_with("INFO ") {
            return Err(format!("{address} is not a NATS server"));
        }
        let connect = json!({"verbose": false, "pedantic": false, "lang": "rust",
                             "version": env!("CARGO_PKG_VERSION"), "protocol": 1, "name": "warden-audit"});
        connection.send(
            format!(
                "CONNECT {connect}\r\nSUB {}.* 1\r\nPING\r\n",
                connection.inbox
            )
            .as_bytes(),
        )?;
        loop {
            match connection.line()?.as_str() {
                "PONG" => return Ok(connection),
                line if line.starts_with("-ERR") => return Err(format!("{address}: {line}")),
                _ => {}
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writer.write_all(bytes).map_err(|e| e.to_string())
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        let read = (&mut self.reader)
            .take(MAX_SERVER_MESSAGE as u64)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("the NATS server closed the connection".into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// Publishes `payload` to `subject` asking for an answer; returns the reply subject.
    fn request(&mut self, subject: &str, payload: &[u8]) -> Result<String, String> {
        self.next += 1;
        let reply = format!("{}.{}", self.inbox, self.next);
        let mut message = format!("PUB {subject} {reply} {}\r\n", payload.len()).into_bytes();
        message.extend_from_slice(payload);
        message.extend_from_slice(b"\r\n");
        self.send(&message)?;
        Ok(reply)
    }

    /// The next answer on our inbox: (reply subject, payload). Answers PINGs meanwhile.
    fn answer(&mut self) -> Result<(String, Value), String> {
        loop {
            let line = self.line()?;
            if line == "PING" {
                self.send(b"PONG\r\n")?;
                continue;
            }
            if let Some(error) = line.strip_prefix("-ERR") {
                return Err(format!("NATS: {}", error.trim()));
            }
            let Some(rest) = line.strip_prefix("MSG ") else {
                continue;
            };
            let parts: Vec<&str> = rest.split(' ').collect();
            let (subject, len) = match parts.as_slice() {
                [subject, _sid, len] | [subject, _sid, _, len] => (*subject, *len),
                _ => return Err(format!("NATS: malformed MSG `{line}`")),
            };
            let len: usize = len
                .parse()
                .map_err(|_| format!("NATS: malformed MSG `{line}`"))?;
            if len > MAX_SERVER_MESSAGE {
                return Err("NATS: answer too large".into());
            }
            let mut payload = vec![0u8; len + 2];
            self.reader
                .read_exact(&mut payload)
                .map_err(|e| e.to_string())?;
            payload.truncate(len);
            let value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
            return Ok((subject.to_owned(), value));
        }
    }

    /// A JetStream API call and its answer.
    fn api(&mut self, subject: &str, body: &Value) -> Result<Value, String> {
        let reply = self.request(subject, body.to_string().as_bytes())?;
        loop {
            let (subject, answer) = self.answer()?;
            if subject == reply {
                return Ok(answer);
            }
        }
    }
}

fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "no randomness".to_owned())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn valid_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !text.starts_with('.')
        && !text.ends_with('.')
}

impl NatsSink {
    /// Events go to `subject` (no wildcards), stored by JetStream stream `stream`, which is
    /// created for that subject if it does not exist.
    pub fn new(address: String, stream: String, subject: String) -> Result<Self, String> {
        if !valid_token(&stream) || stream.contains('.') {
            return Err(format!("`{stream}` is not a valid stream name"));
        }
        if !valid_token(&subject) {
            return Err(format!("`{subject}` is not a valid subject (no wildcards)"));
        }
        Ok(Self {
            address,
            stream,
            subject,
            connection: None,
        })
    }

    fn connect(&self) -> Result<Connection, String> {
        let mut connection = Connection::open(&self.address)?;
        let info = connection.api(&format!("$JS.API.STREAM.INFO.{}", self.stream), &json!({}))?;
        if info.get("error").is_some() {
            let created = connection.api(
                &format!("$JS.API.STREAM.CREATE.{}", self.stream),
                &json!({"name": self.stream, "subjects": [self.subject], "storage": "file"}),
            )?;
            if let Some(error) = created.get("error") {
                return Err(format!("cannot create stream {}: {error}", self.stream));
            }
        }
        Ok(connection)
    }

    fn publish(&mut self, events: &[Value]) -> Result<(), String> {
        if self.connection.is_none() {
            self.connection = Some(self.connect()?);
        }
        let Some(connection) = self.connection.as_mut() else {
            return Err("no connection".into());
        };
        let mut pending = std::collections::HashSet::new();
        for event in events {
            pending.insert(connection.request(&self.subject, event.to_string().as_bytes())?);
        }
        while !pending.is_empty() {
            let (reply, answer) = connection.answer()?;
            if pending.remove(&reply) && answer.get("seq").is_none() {
                return Err(format!("JetStream did not store an event: {answer}"));
            }
        }
        Ok(())
    }
}

impl Sink for NatsSink {
    fn deliver(&mut self, events: &[Value]) -> Result<(), String> {
        let result = self.publish(events);
        if result.is_err() {
            // Start afresh on the next attempt; these events are offered again.
            self.connection = None;
        }
        result
    }
}
