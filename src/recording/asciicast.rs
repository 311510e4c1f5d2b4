//! A sans-IO asciicast v2 encoder: a header line and one JSON array per event, as text.
//!
//! Written by hand rather than with the `asciicast` crate: that crate (0.2) knows only `i` and `o`
//! events, so it cannot write the `r` (resize) events a recording needs, and its header pulls in
//! chrono for one integer. This file is pure functions over values, tested in memory.
//!
//! Terminal output is bytes; asciicast stores UTF-8 strings. `Utf8Stream` decodes a byte stream
//! chunk by chunk, holding back a character split across two chunks, and replaces invalid bytes
//! with U+FFFD, so a recording never fails on odd bytes and never garbles a split character.
//!
//! A channel without a pty carries a program's byte stream (`scp -O`, `rsync`, `git`, `tar c |
//! ssh`, `cat` of a file), not a terminal's output. A chunk of such a stream that is not UTF-8
//! text, or that holds a NUL byte, is recorded as it is, base64 in an `O` (output) or `I` (input)
//! event: lossless, where U+FFFD would lose the byte, and at 4/3 of its size, where `\u0000` is
//! six bytes a byte. The asciicast v2 format is open to new event codes and tells players to skip
//! the ones they do not know; asciinema keeps a one-letter code when it re-encodes a file, so each
//! is one letter. `docs/OPERATIONS.md` documents them for reviewers.

use std::io::Write;
use std::time::Duration;

use base64::Engine;
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
    /// Environment variables the client set on the target, shown in the header's `env` after
    /// the terminal type.
    pub env: Vec<(String, String)>,
}

/// The width and height used when the client gave none (exec without a pty, or a zero size).
pub const DEFAULT_SIZE: (u32, u32) = (80, 24);

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Output(String),
    Input(String),
    Resize {
        width: u32,
        height: u32,
    },
    /// A marker (`m`, issue #19): a command the user ran, its label the line they saw.
    Marker(String),
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
    let mut env = Map::new();
    if let Some(term) = &header.term {
        env.insert("TERM".into(), json!(term));
    }
    for (name, value) in &header.env {
        env.insert(name.clone(), json!(value));
    }
    if !env.is_empty() {
        object.insert("env".into(), Value::Object(env));
    }
    format!("{}\n", Value::Object(object))
}

/// One event as a line: `[seconds, "o", "text"]`, newline included.
pub fn event_line(elapsed: Duration, event: &Event) -> String {
    let resize;
    let (code, data) = match event {
        Event::Output(text) => (Code::Output, text.as_str()),
        Event::Input(text) => (Code::Input, text.as_str()),
        Event::Marker(label) => (Code::Marker, label.as_str()),
        Event::Resize { width, height } => {
            resize = format!("{width}x{height}");
            (Code::Resize, resize.as_str())
        }
    };
    let mut line = Vec::with_capacity(data.len() + 32);
    begin_event(&mut line, elapsed, code);
    escape_json_into(data, &mut line);
    end_event(&mut line);
    // Only ASCII and whole characters of `data` were written.
    String::from_utf8(line).unwrap_or_default()
}

/// The kind of an event line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Output,
    Input,
    Resize,
    Marker,
    /// Output bytes that are not text, base64 (an extension code, `O`).
    OutputBytes,
    /// Input bytes that are not text, base64 (an extension code, `I`).
    InputBytes,
}

impl Code {
    /// The code as a line writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Output => "o",
            Code::Input => "i",
            Code::Resize => "r",
            Code::Marker => "m",
            Code::OutputBytes => "O",
            Code::InputBytes => "I",
        }
    }

    /// The code a line names, if it is one of ours.
    pub fn parse(text: &str) -> Option<Code> {
        Some(match text {
            "o" => Code::Output,
            "i" => Code::Input,
            "r" => Code::Resize,
            "m" => Code::Marker,
            "O" => Code::OutputBytes,
            "I" => Code::InputBytes,
            _ => return None,
        })
    }
}

/// Appends the start of an event line, up to the opening quote of its data:
/// `[1.500000,"o","`.
///
/// Lines are built in a caller's reusable buffer rather than through `serde_json`: recording
/// sits on the data path of every session, and building a `String` per event and escaping
/// through `fmt::Write` was the largest cost of a bulk transfer (measured with perf, see
/// docs/PERFORMANCE.md). The output is the same JSON.
pub fn begin_event(line: &mut Vec<u8>, elapsed: Duration, code: Code) {
    // Microsecond precision, as asciinema writes it.
    let micros = elapsed.as_micros();
    let code = code.as_str();
    let _ = write!(
        line,
        "[{}.{:06},\"{code}\",\"",
        micros / 1_000_000,
        micros % 1_000_000
    );
}

/// Closes an event line begun by `begin_event`, newline included.
pub fn end_event(line: &mut Vec<u8>) {
    line.extend_from_slice(b"\"]\n");
}

/// Appends `bytes` as the inside of a JSON string in standard base64 (no character of which needs
/// escaping), for an `O` or `I` event.
pub fn base64_into(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let length = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    out.resize(start + length, 0);
    let engine = &base64::engine::general_purpose::STANDARD;
    let written = engine.encode_slice(bytes, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
}

/// How each byte appears inside a JSON string: 0 as itself, `u` as `\u00XX`, anything else as
/// a backslash and that letter. Only ASCII bytes escape, so a run of the rest is whole UTF-8.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends `text` as the inside of a JSON string: quotes, backslashes and control characters
/// escaped, everything else copied in runs.
pub fn escape_json_into(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    // The worst case (every byte a control character) is six bytes a byte: one reservation.
    out.reserve(bytes.len() * 6);
    let mut run_start = 0;
    let mut index = 0;
    while index < bytes.len() {
        // Eight bytes at a time past those that need no escape: text has a control byte (a
        // newline) every line, so most words are clean (perf on a base64 text download: this
        // function went from 11% of the bastion's samples to 5.7%).
        while let Some(word) = bytes.get(index..index + 8) {
            let word = u64::from_le_bytes([
                word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
            ]);
            if needs_escape(word) {
                break;
            }
            index += 8;
        }
        let Some(&byte) = bytes.get(index) else {
            break;
        };
        let escape = ESCAPE[byte as usize];
        if escape == 0 {
            index += 1;
            continue;
        }
        out.extend_from_slice(&bytes[run_start..index]);
        if escape == b'u' {
            // Binary streams carry long runs of one control byte (NUL padding): the first
            // escape is written once and then copied by doubling, at memcpy speed.
            let run = bytes[index..]
                .iter()
                .take_while(|&&next| next == byte)
                .count();
            let first = out.len();
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(byte >> 4) as usize],
                HEX[(byte & 0xf) as usize],
            ]);
            let mut written = 1;
            while written < run {
                let copied = written.min(run - written);
                out.extend_from_within(first..first + copied * 6);
                written += copied;
            }
            index += run;
        } else {
            out.extend_from_slice(&[b'\\', escape]);
            index += 1;
        }
        run_start = index;
    }
    out.extend_from_slice(&bytes[run_start..]);
}

/// True if any byte of `word` is a control character, `"` or `\\` (the bytes `ESCAPE` marks).
/// Exact, not a hint: the classic "has a byte less than n" and "has a zero byte" tests on each
/// 8-bit lane, with no carries between lanes because bytes of 0x80 and above are masked out.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let ascii = !word & HIGH;
    let low = word & !HIGH;
    // A lane below 0x20: adding 0x60 to its low seven bits leaves bit 7 clear.
    let control = !(low + ONES * 0x60) & ascii;
    // A lane equal to c: its low seven bits XOR c are zero, and adding 0x7f leaves bit 7 clear.
    let equal = |c: u64| !((low ^ (ONES * c)) + ONES * 0x7f) & ascii;
    (control | equal(b'"' as u64) | equal(b'\\' as u64)) != 0
}

/// Decodes a UTF-8 byte stream that arrives in arbitrary chunks.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// The text of `bytes` and whatever was held back, less an incomplete trailing character.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        let mut out = String::new();
        self.decode(bytes, |text| out.push_str(text));
        out
    }

    /// Hands the text of `bytes` (and whatever was held back) to `each` in pieces, holding back
    /// an incomplete trailing character. A chunk of whole characters, the usual case, is handed
    /// over as it is, without a copy.
    pub fn decode(&mut self, bytes: &[u8], mut each: impl FnMut(&str)) {
        if self.pending.is_empty() {
            let rest = decode_valid(bytes, &mut each);
            self.pending.extend_from_slice(rest);
            return;
        }
        // A character was split across chunks: complete it from the new bytes alone, so the
        // rest of the chunk takes the fast path.
        let taken = bytes.len().min(4 - self.pending.len().min(3));
        let mut joined = std::mem::take(&mut self.pending);
        joined.extend_from_slice(&bytes[..taken]);
        let rest = decode_valid(&joined, &mut each);
        // What the joined bytes left over came from `bytes`' first few, or is still incomplete.
        let consumed_from_new = taken.saturating_sub(rest.len());
        if consumed_from_new == 0 && taken == bytes.len() {
            self.pending = rest.to_vec();
            return;
        }
        let rest_of_new = &bytes[consumed_from_new..];
        let tail = decode_valid(rest_of_new, &mut each);
        self.pending.extend_from_slice(tail);
    }

    /// Whether `bytes`, after what is held back, are text: UTF-8 (an incomplete character at
    /// the end is fine, it is held back) with no NUL byte. Text never holds a NUL, and a
    /// terminal shows nothing for one, so a NUL marks a byte stream.
    pub fn is_text(&self, bytes: &[u8]) -> bool {
        if bytes.contains(&0) {
            return false;
        }
        if self.pending.is_empty() {
            return utf8_to_the_end(bytes);
        }
        // Complete the held-back character from the first few new bytes (as `decode` does), then
        // check the rest of the chunk from the character boundary after it.
        let taken = bytes.len().min(3);
        let mut joined = self.pending.clone();
        joined.extend_from_slice(&bytes[..taken]);
        match std::str::from_utf8(&joined) {
            Ok(_) => utf8_to_the_end(&bytes[taken..]),
            Err(error) if error.error_len().is_some() => false,
            // Still incomplete: the chunk was too short to finish the character.
            Err(error) if error.valid_up_to() < self.pending.len() => true,
            Err(error) => utf8_to_the_end(&bytes[error.valid_up_to() - self.pending.len()..]),
        }
    }

    /// `decode` for a byte stream: hands over the text of `bytes` and returns true when they are
    /// text (`is_text`); otherwise hands over nothing, leaves the stream as it was and returns
    /// false. A chunk with nothing held back before it, the usual case, is checked and decoded in
    /// one pass.
    pub fn decode_text(&mut self, bytes: &[u8], mut each: impl FnMut(&str)) -> bool {
        if !self.pending.is_empty() {
            if !self.is_text(bytes) {
                return false;
            }
            self.decode(bytes, each);
            return true;
        }
        if bytes.contains(&0) {
            return false;
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                if !text.is_empty() {
                    each(text);
                }
                true
            }
            Err(error) if error.error_len().is_some() => false,
            Err(error) => {
                let (valid, tail) = bytes.split_at(error.valid_up_to());
                if let Ok(text) = std::str::from_utf8(valid)
                    && !text.is_empty()
                {
                    each(text);
                }
                self.pending.extend_from_slice(tail);
                true
            }
        }
    }

    /// Takes the bytes held back (the start of a character), to record them as bytes.
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
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

/// Whether `bytes` are UTF-8, but for an incomplete character at the end.
fn utf8_to_the_end(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(error) => error.error_len().is_none(),
    }
}

/// Hands the valid text of `bytes` to `each`, invalid bytes as U+FFFD, and returns an incomplete
/// character at the end, if any.
fn decode_valid<'a>(mut bytes: &'a [u8], each: &mut impl FnMut(&str)) -> &'a [u8] {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                if !text.is_empty() {
                    each(text);
                }
                return &[];
            }
            Err(error) => {
                let valid = error.valid_up_to();
                if valid > 0 {
                    each(std::str::from_utf8(&bytes[..valid]).unwrap_or_default());
                }
                match error.error_len() {
                    Some(bad) => {
                        each("\u{fffd}");
                        bytes = &bytes[valid + bad..];
                    }
                    // An incomplete character at the end: the caller keeps it.
                    None => return &bytes[valid..],
                }
            }
        }
    }
}

/// Test inputs shared with the recorder's tests.
#[cfg(test)]
pub(crate) mod testing {
    /// Pieces of byte streams: text, escapes, NUL, whole and cut characters, invalid bytes.
    pub const ALPHABET: &[&[u8]] = &[
        b"a",
        b"\n",
        b"\x00",
        "é".as_bytes(),
        "→".as_bytes(),
        "😀".as_bytes(),
        b"\xff",
        b"\xe2",
        b"\xf0\x9f",
        b"\x80",
        b"\"",
        b"\x1b[31m",
    ];

    /// A reproducible source of numbers below a bound (xorshift).
    pub fn random_below(mut seed: u64) -> impl FnMut(usize) -> usize {
        move |bound| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % bound as u64) as usize
        }
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
            env: vec![("LANG".to_string(), "C.UTF-8".to_string())],
        };
        let line = header_line(&header);
        let value: Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(value["version"], 2);
        assert_eq!(value["timestamp"], 1_700_000_000);
        assert_eq!(value["env"]["TERM"], "xterm-256color");
        assert_eq!(value["env"]["LANG"], "C.UTF-8");
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
        // Runs of one control byte, of every length around the doubling steps.
        for length in [1, 2, 3, 4, 5, 7, 8, 9, 1000] {
            text.push_str(&"\u{0}".repeat(length));
            text.push('x');
            text.push_str(&"\u{1b}".repeat(length));
        }
        let line = event_line(
            Duration::from_micros(1_234_567),
            &Event::Output(text.clone()),
        );
        let parsed: Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(parsed[0].as_f64(), Some(1.234567));
        assert_eq!(parsed[2].as_str(), Some(text.as_str()));
    }

    /// The word test agrees with the byte table for every byte in every lane, and for random
    /// words; and escaping text with escapes at every offset of a word matches serde_json.
    #[test]
    fn the_word_test_agrees_with_the_byte_table() {
        let table = |word: u64| {
            word.to_le_bytes()
                .iter()
                .any(|&byte| ESCAPE[byte as usize] != 0)
        };
        for byte in 0u64..=255 {
            for lane in 0..8 {
                for filler in [b'a' as u64, 0xe9, 0x7f, 0x80, 0xff] {
                    let mut word = filler * 0x0101_0101_0101_0101;
                    word &= !(0xff << (lane * 8));
                    word |= byte << (lane * 8);
                    assert_eq!(needs_escape(word), table(word), "{word:#018x}");
                }
            }
        }
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..100_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            assert_eq!(needs_escape(seed), table(seed), "{seed:#018x}");
        }
        for offset in 0..24 {
            for special in ["\n", "\"", "\\", "\u{1}", "\u{1f}", "é"] {
                let text = format!("{}{special}{}", "x".repeat(offset), "y".repeat(offset));
                let mut out = Vec::new();
                escape_json_into(&text, &mut out);
                let expected = serde_json::to_string(&text).unwrap_or_default();
                assert_eq!(format!("\"{}\"", String::from_utf8_lossy(&out)), expected);
            }
        }
    }

    #[test]
    fn bytes_events_are_base64_and_text_is_told_from_bytes() {
        let mut line = Vec::new();
        begin_event(&mut line, Duration::from_millis(1_500), Code::OutputBytes);
        base64_into(b"\x00\xffhi", &mut line);
        end_event(&mut line);
        assert_eq!(line, b"[1.500000,\"O\",\"AP9oaQ==\"]\n");
        let mut empty = Vec::new();
        base64_into(b"", &mut empty);
        assert!(empty.is_empty());

        let arrow = "→".as_bytes();
        let fresh = Utf8Stream::default();
        let cases: &[(&[u8], bool)] = &[
            (b"plain\r\n\x1b[0m", true),
            (b"", true),
            (&arrow[..2], true),
            (b"a\x00b", false),
            (b"\xff", false),
            (&arrow[1..], false),
        ];
        for (bytes, text) in cases {
            assert_eq!(fresh.is_text(bytes), *text, "{bytes:?}");
        }
        // The rest of a character held back from the last chunk is text.
        let mut split = Utf8Stream::default();
        assert_eq!(split.push(&[b'a', arrow[0]]), "a");
        assert!(split.is_text(&arrow[1..]));
        assert!(!split.is_text(b"x"));
        assert_eq!(split.take_pending(), [arrow[0]]);
        assert!(split.is_text(b"x"));
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

    /// Any bytes, cut anywhere, decode to what the whole would decode to at once, and each chunk
    /// is told text or bytes as a whole-buffer check would.
    #[test]
    fn chunked_decoding_matches_decoding_the_whole() {
        let alphabet = testing::ALPHABET;
        let mut next = testing::random_below(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2_000 {
            let mut bytes = Vec::new();
            for _ in 0..next(24) {
                bytes.extend_from_slice(alphabet[next(alphabet.len())]);
            }
            let mut stream = Utf8Stream::default();
            let mut decoded = String::new();
            let mut rest: &[u8] = &bytes;
            while !rest.is_empty() {
                let cut = 1 + next(rest.len());
                // And text is told from bytes as if the held-back bytes led the chunk.
                let chunk = &rest[..cut];
                let joined = [stream.pending.as_slice(), chunk].concat();
                let text = !chunk.contains(&0) && utf8_to_the_end(&joined);
                assert_eq!(stream.is_text(chunk), text, "{joined:?}");
                // And `decode_text` decodes a text chunk as `decode` does, and no other.
                let mut strict = stream.clone();
                let mut strictly = String::new();
                let decoded_as_text = strict.decode_text(chunk, |piece| strictly.push_str(piece));
                assert_eq!(decoded_as_text, text, "{joined:?}");
                let pushed = stream.push(chunk);
                if text {
                    assert_eq!(strictly, pushed, "{joined:?}");
                    assert_eq!(strict.pending, stream.pending, "{joined:?}");
                } else {
                    assert!(strictly.is_empty(), "{joined:?}");
                }
                decoded.push_str(&pushed);
                rest = &rest[cut..];
            }
            decoded.push_str(&stream.finish());
            assert_eq!(decoded, String::from_utf8_lossy(&bytes), "{bytes:?}");
        }
    }
}
