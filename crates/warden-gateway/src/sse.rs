//! Server-sent events, split as bytes arrive.

/// The largest event held while it arrives; a longer one is dropped and the stream marked.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Splits an SSE stream into events as bytes arrive, and rewrites each `data:` payload with
/// `rewrite(event type, data)` (the type is `message` unless the event names another);
/// comments, ids and event names pass unchanged.
pub struct SseRewriter<F> {
    buffer: Vec<u8>,
    rewrite: F,
    overflowed: bool,
}

impl<F: FnMut(&str, &str) -> String> SseRewriter<F> {
    pub fn new(rewrite: F) -> Self {
        Self {
            buffer: Vec::new(),
            rewrite,
            overflowed: false,
        }
    }

    /// Whether an event grew past the limit and was dropped.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Feeds bytes; returns the complete events rewritten.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some((end, sep)) = event_end(&self.buffer) {
            let event: Vec<u8> = self.buffer.drain(..end + sep).collect();
            out.extend(self.rewrite_event(&event[..end]));
            out.extend_from_slice(b"\n\n");
        }
        if self.buffer.len() > MAX_EVENT_BYTES {
            self.buffer.clear();
            self.overflowed = true;
        }
        out
    }

    /// Whatever remains when the stream ends.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.buffer);
        if rest.is_empty() {
            Vec::new()
        } else {
            self.rewrite_event(&rest)
        }
    }

    fn rewrite_event(&mut self, event: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(event);
        let mut data = Vec::new();
        let mut other = Vec::new();
        let mut kind = "message";
        for line in text.lines() {
            match line.strip_prefix("data:") {
                Some(d) => data.push(d.strip_prefix(' ').unwrap_or(d)),
                None => {
                    if let Some(named) = line.strip_prefix("event:") {
                        kind = named.trim();
                    }
                    other.push(line)
                }
            }
        }
        let mut out = other.join("\n");
        if !data.is_empty() {
            // A payload of several lines goes out as several `data:` lines, as it came.
            for line in (self.rewrite)(kind, &data.join("\n")).split('\n') {
                if !out.is_empty() {
                    out.push('\n');
                }
                out += "data: ";
                out += line;
            }
        }
        out.into_bytes()
    }
}

/// Where the first event ends in `buffer`, and the length of the blank-line separator.
fn event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_rewritten_across_chunk_boundaries() {
        let mut r = SseRewriter::new(|kind: &str, d: &str| format!("{kind}:{}", d.to_uppercase()));
        let mut out = r.feed(b"event: message\nid: 1\ndata: {\"a\"");
        assert!(out.is_empty());
        out.extend(r.feed(b":1}\n\n: keepalive\n\ndata: x\r\n\r\nevent: endpoint\ndata: /m\n\ndata: a\ndata: b\n\n"));
        out.extend(r.finish());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "event: message\nid: 1\ndata: message:{\"A\":1}\n\n: keepalive\n\ndata: message:X\n\nevent: endpoint\ndata: endpoint:/M\n\ndata: message:A\ndata: B\n\n"
        );
    }
}
