//! Fuzzes how a recording reads a channel's bytes (issue #3): any bytes, cut anywhere, must never
//! panic, and a channel without a pty must get them back exactly from its events: text chunks
//! decoded as `o` text by `decode_text`, the rest kept as `O` bytes, as `Recorder::text_event`
//! does. Every text piece must also escape to a JSON string that reads back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::recording::asciicast::{Utf8Stream, base64_into, escape_json_into};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk sizes, the rest is the stream.
    let Some((&sizes, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = Utf8Stream::default();
    let mut rebuilt = Vec::new();
    let mut rest = stream;
    let mut turn = 0usize;
    while !rest.is_empty() {
        let size = 1 + (usize::from(sizes).wrapping_mul(turn + 7) % 61);
        let (chunk, after) = rest.split_at(size.min(rest.len()));
        let text = decoder.decode_text(chunk, |text| {
            let mut escaped = b"\"".to_vec();
            escape_json_into(text, &mut escaped);
            escaped.push(b'"');
            let back: String = serde_json::from_slice(&escaped).expect("escaped JSON");
            assert_eq!(back, text);
            rebuilt.extend_from_slice(text.as_bytes());
        });
        if !text {
            let mut bytes = decoder.take_pending();
            bytes.extend_from_slice(chunk);
            let mut encoded = Vec::new();
            base64_into(&bytes, &mut encoded);
            assert_eq!(encoded.len() % 4, 0);
            rebuilt.extend_from_slice(&bytes);
        }
        rest = after;
        turn += 1;
    }
    rebuilt.extend_from_slice(&decoder.take_pending());
    assert!(rebuilt == stream, "the stream was not kept");
});
