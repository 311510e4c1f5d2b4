//! A sans-IO asciicast v2 encoder: a header line and one JSON array per event, as text.
//!
//! Written by hand rather than with the `asciicast` crate: that crate (0.2) knows only `i` and `o`
//! events, so it cannot write the `r` (resize) events a recording needs, and its header pulls in
//! chrono for one integer. This file is pure functions over values, tested in memory.
//!
//! Terminal output is bytes; asciicast stores UTF-8 strings. `Utf8Stream` decodes a byte stream
//! chunk by chunk, holding back a character split across two chunks, and replaces invalid bytes
//! with U+FFFD, so a recording never fails on odd bytes and never garbles a split character.

use std::time::Duration;

use serde_json::{Map, Value, json};

/// The header of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    /// Integer Unix seconds.
    pub timestamp: i64,
    pub title: String,
    /// The command, for exec channels.
    pub command: Option<String>,
    pub term: Option<String>,
}

/// The width and height used when the client gave none (exec without a pty, or a zero size).
pub const DEFAULT_SIZE: (u32, u32) = (80, 24);

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Output(String),
    Input(String),
    Resize { width: u32, height: u32 },
}

/// The header as one line, newline included.
pub fn header_line(header: &Header) -> String {
    let mut object = Map::new();
    object.insert("version".into(), json!(2));
    object.insert("width".into(), json!(header.width));
    object.insert("height".into(), json!(header.height));
    object.insert("timestamp".into(), json!(header.timestamp));
    object.insert("title".into(), json!(header.title));
    if let Some(command) = &header.command {
        object.insert("command".into(), json!(command));
    }
    if let Some(term) = &header.term {
        object.insert("env".into(), json!({ "TERM": term }));
    }
    format!("{}\n", Value::Object(object))
}

/// One event as a line: `[seconds, "o", "text"]`, newline included.
///
/// Built by hand rather than through `serde_json`: recording sits on the data path of every
/// session, and serde_json's string escaping through `fmt::Write` was the largest cost of a bulk
/// transfer (measured with perf, see docs/PERFORMANCE.md). The output is the same JSON.
pub fn event_line(elapsed: Duration, event: &Event) -> String {
    let resize;
    let (code, data) = match event {
        Event::Output(text) => ("o", text.as_str()),
        Event::Input(text) => ("i", text.as_str()),
        Event::Resize { width, height } => {
            resize = format!("{width}x{height}");
            ("r", resize.as_str())
        }
    };
    // Microsecond precision, as asciinema writes it.
    let micros = elapsed.as_micros();
    let mut line = String::with_capacity(data.len() + data.len() / 8 + 32);
    line.push_str(&format!(
        "[{}.{:06},\"{code}\",\"",
        micros / 1_000_000,
        micros % 1_000_000
    ));
    escape_json_into(data, &mut line);
    line.push_str("\"]\n");
    line
}

/// Appends `text` as the inside of a JSON string: quotes, backslashes and control characters
/// escaped, everything else copied in runs.
fn escape_json_into(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    let mut run_start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escaped: Option<&str> = match byte {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        // Every byte that needs escaping is ASCII, so `index` is a char boundary.
        out.push_str(&text[run_start..index]);
        match escaped {
            Some(escape) => out.push_str(escape),
            None => {
                out.push_str("\\u00");
                out.push(HEX[(byte >> 4) as usize] as char);
                out.push(HEX[(byte & 0xf) as usize] as char);
            }
        }
        run_start = index + 1;
    }
    out.push_str(&text[run_start..]);
}

/// Decodes a UTF-8 byte stream that arrives in arbitrary chunks.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// The text of `bytes` and whatever was held back, less an incomplete trailing character.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    rest = &[];
                    break;
                }
                Err(error) => {
                    let valid = error.valid_up_to();
                    out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    match error.error_len() {
                        Some(bad) => {
                            out.push('\u{fffd}');
                            rest = &rest[valid + bad..];
                        }
                        // An incomplete character at the end: keep it for the next chunk.
                        None => {
                            rest = &rest[valid..];
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Whatever is still held back, as replacement characters (at the end of the stream).
    pub fn finish(&mut self) -> String {
        let out = if self.pending.is_empty() {
            String::new()
        } else {
            "\u{fffd}".to_string()
        };
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_events_are_asciicast_v2() {
        let header = Header {
            width: 120,
            height: 40,
            timestamp: 1_700_000_000,
            title: "alice → web-1".to_string(),
            command: Some("uptime".to_string()),
            term: Some("xterm-256color".to_string()),
        };
        let line = header_line(&header);
        let value: Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(value["version"], 2);
        assert_eq!(value["timestamp"], 1_700_000_000);
        assert_eq!(value["env"]["TERM"], "xterm-256color");
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);

        let cases = [
            (
                Event::Output("hi\r\n\"x\"".into()),
                r#"[1.5,"o","hi\r\n\"x\""]"#,
            ),
            (Event::Input("ls\r".into()), r#"[1.5,"i","ls\r"]"#),
            (
                Event::Resize {
                    width: 100,
                    height: 30,
                },
                r#"[1.5,"r","100x30"]"#,
            ),
        ];
        for (event, expected) in cases {
            let line = event_line(Duration::from_millis(1_500), &event);
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            let parsed: Value = serde_json::from_str(&line).unwrap_or_default();
            let wanted: Value = serde_json::from_str(expected).unwrap_or_default();
            assert_eq!(parsed, wanted, "{line}");
        }
    }

    #[test]
    fn every_character_round_trips_through_the_escaper() {
        let mut text: String = (0u8..=0x7f).map(char::from).collect();
        text.push_str("é → 日本 \u{1F600} \u{2028}\u{2029} \\ \"");
        let line = event_line(
            Duration::from_micros(1_234_567),
            &Event::Output(text.clone()),
        );
        let parsed: Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(parsed[0].as_f64(), Some(1.234567));
        assert_eq!(parsed[2].as_str(), Some(text.as_str()));
    }

    #[test]
    fn split_and_invalid_utf8_is_decoded_safely() {
        let mut stream = Utf8Stream::default();
        let arrow = "→".as_bytes(); // three bytes
        assert_eq!(stream.push(&[b'a', arrow[0]]), "a");
        assert_eq!(stream.push(&arrow[1..2]), "");
        assert_eq!(stream.push(&[arrow[2], b'b']), "→b");
        assert_eq!(stream.push(&[0xff, b'c']), "\u{fffd}c");
        assert_eq!(stream.push(&[0xe2]), "");
        assert_eq!(stream.finish(), "\u{fffd}");
    }
}
