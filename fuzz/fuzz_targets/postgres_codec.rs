//! Fuzzes the PostgreSQL codec (issue #4): arbitrary bytes, read as a startup packet and as a
//! stream of tagged messages with every body parser applied, must never panic or hang.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis::postgres::codec;

fuzz_target!(|data: &[u8]| {
    if let Ok(length) = codec::whole_messages(data, codec::MAX_MESSAGE) {
        for frame in codec::frames(&data[..length]) {
            if let Ok(bind) = codec::bind_view(frame.body) {
                for parameter in bind.parameters() {
                    let _ = parameter;
                }
            }
            if let Ok((_, arguments)) = codec::function_call(frame.body) {
                for argument in arguments.values() {
                    let _ = argument;
                }
            }
            let _ = codec::function_result(frame.body);
        }
    }
    let mut startup = BytesMut::from(data);
    let _ = codec::decode_startup(&mut startup);
    let mut stream = BytesMut::from(data);
    while let Ok(Some(message)) = codec::decode_message(&mut stream, codec::MAX_MESSAGE) {
        let _ = codec::query_text(&message.body);
        let _ = codec::parse_message(&message.body);
        let _ = codec::bind_message(&message.body);
        let _ = codec::execute_portal(&message.body);
        let _ = codec::password(&message.body);
        let _ = codec::command_tag(&message.body);
        let _ = codec::error_fields(&message.body);
    }
});
