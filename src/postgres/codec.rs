//! Sans-IO framing of the PostgreSQL wire protocol (issue #4), for both directions.
//!
//! It reads attacker input before authentication, so it is pure functions over bytes: no I/O,
//! no panics, every length checked against a maximum before anything is allocated for it. The
//! startup phase has untagged packets (`SSLRequest`, `GSSENCRequest`, `CancelRequest`,
//! `StartupMessage`); after it every message is a tag byte, a big-endian length that counts
//! itself, and a body. Fuzzed by `fuzz/fuzz_targets/codec.rs`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest startup packet accepted (PostgreSQL's own limit is 10000 bytes).
pub const MAX_STARTUP: usize = 10_000;
/// The largest message accepted in either direction after startup.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
const PROTOCOL_3: i32 = 196_608;

/// A packet of the startup phase, from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    Gss,
    Cancel { pid: i32, secret: i32 },
    Startup { parameters: Vec<(String, String)> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The length itself is impossible: nothing sensible can be answered.
    #[error("invalid message length {0}")]
    BadLength(i64),
    /// The length was readable but the content is not a valid message.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Reads one startup packet from the front of `buffer`; `Ok(None)` until it is complete.
pub fn decode_startup(buffer: &mut BytesMut) -> Result<Option<Startup>, CodecError> {
    if buffer.len() < 4 {
        return Ok(None);
    }
    let length = i32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
    if length < 8 || length as usize > MAX_STARTUP {
        return Err(CodecError::BadLength(i64::from(length)));
    }
    let length = length as usize;
    if buffer.len() < length {
        return Ok(None);
    }
    let mut packet = buffer.split_to(length).freeze();
    packet.advance(4);
    let code = packet.get_i32();
    match code {
        SSL_REQUEST if packet.is_empty() => Ok(Some(Startup::Ssl)),
        GSSENC_REQUEST if packet.is_empty() => Ok(Some(Startup::Gss)),
        CANCEL_REQUEST if packet.len() == 8 => {
            let pid = packet.get_i32();
            let secret = packet.get_i32();
            Ok(Some(Startup::Cancel { pid, secret }))
        }
        PROTOCOL_3 => {
            let mut parameters = Vec::new();
            let mut rest: &[u8] = &packet;
            loop {
                let name = cstring(&mut rest).ok_or(CodecError::Malformed("startup packet"))?;
                if name.is_empty() {
                    break;
                }
                let value = cstring(&mut rest).ok_or(CodecError::Malformed("startup packet"))?;
                parameters.push((name, value));
            }
            if !rest.is_empty() {
                return Err(CodecError::Malformed("startup packet"));
            }
            Ok(Some(Startup::Startup { parameters }))
        }
        _ => Err(CodecError::Malformed(
            "startup packet (unsupported protocol)",
        )),
    }
}

/// One tagged message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Bytes,
}

impl Message {
    /// The message as it goes on the wire.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.tag);
        out.put_i32((self.body.len() + 4) as i32);
        out.put_slice(&self.body);
    }
}

/// Reads one tagged message of at most `max` bytes from the front of `buffer`; `Ok(None)` until
/// it is complete.
pub fn decode_message(buffer: &mut BytesMut, max: usize) -> Result<Option<Message>, CodecError> {
    if buffer.len() < 5 {
        return Ok(None);
    }
    let length = i32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]);
    if length < 4 || length as usize > max {
        return Err(CodecError::BadLength(i64::from(length)));
    }
    let total = length as usize + 1;
    if buffer.len() < total {
        return Ok(None);
    }
    let mut frame = buffer.split_to(total).freeze();
    let tag = frame.get_u8();
    frame.advance(4);
    Ok(Some(Message { tag, body: frame }))
}

/// The length of the whole messages, each of at most `max` bytes, at the front of `buffer`: what
/// a relay forwards as it is (a message cut by the read waits for its rest).
pub fn whole_messages(buffer: &[u8], max: usize) -> Result<usize, CodecError> {
    let mut offset = 0;
    while let Some(at) = buffer.get(offset..).filter(|at| at.len() >= 5) {
        let length = i32::from_be_bytes([at[1], at[2], at[3], at[4]]);
        if length < 4 || length as usize > max {
            return Err(CodecError::BadLength(i64::from(length)));
        }
        let total = length as usize + 1;
        if at.len() < total {
            break;
        }
        offset += total;
    }
    Ok(offset)
}

/// A message inside bytes `whole_messages` measured: its tag and a view of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub tag: u8,
    pub body: &'a [u8],
}

/// The messages in `bytes`, in order, as views (no copy, no allocation: a relay walks every
/// message it forwards). Stops at the first incomplete one.
pub fn frames(bytes: &[u8]) -> impl Iterator<Item = Frame<'_>> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let header = rest.get(..5)?;
        let length = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let total = usize::try_from(length).ok().filter(|length| *length >= 4)? + 1;
        let body = rest.get(5..total)?;
        let frame = Frame {
            tag: header[0],
            body,
        };
        rest = &rest[total..];
        Some(frame)
    })
}

/// Reads a NUL-terminated string, as its bytes.
fn cstr<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = bytes.iter().position(|byte| *byte == 0)?;
    let (text, rest) = bytes.split_at(end);
    *bytes = &rest[1..];
    Some(text)
}

/// Reads a NUL-terminated string.
fn cstring(bytes: &mut &[u8]) -> Option<String> {
    cstr(bytes).map(|text| String::from_utf8_lossy(text).into_owned())
}

/// The SQL of a simple `Query` ('Q'), borrowed when it is UTF-8.
pub fn query_text(body: &[u8]) -> Result<std::borrow::Cow<'_, str>, CodecError> {
    let mut body = body;
    cstr(&mut body)
        .map(String::from_utf8_lossy)
        .ok_or(CodecError::Malformed("Query"))
}

/// The statement name (as sent: names are matched byte for byte) and SQL of a `Parse` ('P').
pub fn parse_message(body: &[u8]) -> Result<(&[u8], String), CodecError> {
    let mut body = body;
    let name = cstr(&mut body).ok_or(CodecError::Malformed("Parse"))?;
    let sql = cstring(&mut body).ok_or(CodecError::Malformed("Parse"))?;
    Ok((name, sql))
}

/// A `Bind` ('B'): portal, statement, and the parameter values (`None` for NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub portal: String,
    pub statement: String,
    pub parameters: Vec<Option<Vec<u8>>>,
    /// Whether each parameter is in binary format (else text).
    pub binary: Vec<bool>,
}

pub fn bind_message(body: &[u8]) -> Result<Bind, CodecError> {
    let view = bind_view(body)?;
    Ok(Bind {
        portal: String::from_utf8_lossy(view.portal).into_owned(),
        statement: String::from_utf8_lossy(view.statement).into_owned(),
        parameters: view
            .parameters()
            .map(|(value, _)| value.map(<[u8]>::to_vec))
            .collect(),
        binary: view.parameters().map(|(_, binary)| binary).collect(),
    })
}

/// A `Bind` read in place: checked whole when made, so reading its parameters cannot fail.
#[derive(Debug, Clone, Copy)]
pub struct BindView<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub arguments: Arguments<'a>,
}

/// Format codes and values as a `Bind` and a `FunctionCall` carry them, checked whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct Arguments<'a> {
    /// The format codes, two bytes each.
    codes: &'a [u8],
    /// The values as on the wire: a length (-1 for NULL), then the bytes.
    values: &'a [u8],
    count: usize,
}

pub fn bind_view(body: &[u8]) -> Result<BindView<'_>, CodecError> {
    let malformed = CodecError::Malformed("Bind");
    let mut body = body;
    let portal = cstr(&mut body).ok_or(malformed.clone())?;
    let statement = cstr(&mut body).ok_or(malformed.clone())?;
    let arguments = arguments(&mut body).ok_or(malformed)?;
    Ok(BindView {
        portal,
        statement,
        arguments,
    })
}

/// A `FunctionCall` ('F', the fastpath libpq's large objects and `PQfn` use): the function's
/// OID and its arguments.
pub fn function_call(body: &[u8]) -> Result<(u32, Arguments<'_>), CodecError> {
    let malformed = CodecError::Malformed("FunctionCall");
    let mut body = body;
    let oid = read_i32(&mut body).ok_or(malformed.clone())?;
    let arguments = arguments(&mut body).ok_or(malformed)?;
    Ok((oid as u32, arguments))
}

/// The result of a `FunctionCallResponse` ('V'): `None` for NULL.
pub fn function_result(body: &[u8]) -> Result<Option<&[u8]>, CodecError> {
    let malformed = CodecError::Malformed("FunctionCallResponse");
    let mut body = body;
    let length = read_i32(&mut body).ok_or(malformed.clone())?;
    match usize::try_from(length) {
        Ok(length) => body.get(..length).map(Some).ok_or(malformed),
        Err(_) => Ok(None),
    }
}

/// Reads format codes, then values, checking every length.
fn arguments<'a>(body: &mut &'a [u8]) -> Option<Arguments<'a>> {
    // The server reads both counts as unsigned: up to 65535 (issue #17 review).
    let formats = read_i16(body)? as u16 as usize;
    if body.len() < formats * 2 {
        return None;
    }
    let (codes, rest) = body.split_at(formats * 2);
    *body = rest;
    let count = read_i16(body)? as u16 as usize;
    let values = *body;
    for _ in 0..count {
        let length = read_i32(body)?;
        if let Ok(length) = usize::try_from(length) {
            *body = body.get(length..)?;
        }
    }
    Some(Arguments {
        codes,
        values: &values[..values.len() - body.len()],
        count,
    })
}

impl<'a> BindView<'a> {
    /// Each parameter's value (`None` for NULL) and whether it is in binary format.
    pub fn parameters(&self) -> impl Iterator<Item = (Option<&'a [u8]>, bool)> + use<'a> {
        self.arguments.values()
    }
}

impl<'a> Arguments<'a> {
    /// Each value (`None` for NULL) and whether it is in binary format: no codes means all
    /// text, one code is for every value, otherwise one per value.
    pub fn values(&self) -> impl Iterator<Item = (Option<&'a [u8]>, bool)> + use<'a> {
        let codes = self.codes;
        let code = move |index: usize| {
            let at = if codes.len() == 2 { 0 } else { index * 2 };
            codes.get(at..at + 2) == Some(&[0, 1][..])
        };
        let mut values = self.values;
        (0..self.count).map_while(move |index| {
            let length = read_i32(&mut values)?;
            let value = match usize::try_from(length) {
                Ok(length) => {
                    let (value, rest) = values.split_at_checked(length)?;
                    values = rest;
                    Some(value)
                }
                Err(_) => None,
            };
            Some((value, code(index)))
        })
    }
}

/// The portal an `Execute` ('E' from the client) runs.
pub fn execute_portal(body: &[u8]) -> Result<&[u8], CodecError> {
    let mut body = body;
    cstr(&mut body).ok_or(CodecError::Malformed("Execute"))
}

/// The password of a `PasswordMessage` ('p').
pub fn password(body: &[u8]) -> Result<String, CodecError> {
    let mut body = body;
    cstring(&mut body).ok_or(CodecError::Malformed("PasswordMessage"))
}

/// The tag of a `CommandComplete` ('C').
pub fn command_tag(body: &[u8]) -> std::borrow::Cow<'_, str> {
    let mut body = body;
    String::from_utf8_lossy(cstr(&mut body).unwrap_or_default())
}

/// The SQLSTATE ('C') and message ('M') fields of an ErrorResponse or NoticeResponse.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let mut body = body;
    let (mut code, mut message) = (String::new(), String::new());
    while let Some(&field) = body.first() {
        if field == 0 {
            break;
        }
        body = &body[1..];
        let Some(value) = cstring(&mut body) else {
            break;
        };
        match field {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (code, message)
}

fn read_i16(bytes: &mut &[u8]) -> Option<i16> {
    (bytes.len() >= 2).then(|| bytes.get_i16())
}

fn read_i32(bytes: &mut &[u8]) -> Option<i32> {
    (bytes.len() >= 4).then(|| bytes.get_i32())
}

/// Messages the bastion itself sends to clients.
pub mod backend {
    use bytes::{BufMut, BytesMut};

    use super::Message;

    fn message(tag: u8, body: BytesMut) -> BytesMut {
        let mut out = BytesMut::with_capacity(body.len() + 5);
        Message {
            tag,
            body: body.freeze(),
        }
        .encode(&mut out);
        out
    }

    fn fields(severity: &str, code: &str, text: &str) -> BytesMut {
        let mut body = BytesMut::new();
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', text),
        ] {
            body.put_u8(field);
            body.put_slice(value.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        body
    }

    /// An ErrorResponse.
    pub fn error(severity: &str, code: &str, text: &str) -> BytesMut {
        message(b'E', fields(severity, code, text))
    }

    /// A NoticeResponse.
    pub fn notice(code: &str, text: &str) -> BytesMut {
        message(b'N', fields("WARNING", code, text))
    }

    pub fn authentication_cleartext() -> BytesMut {
        let mut body = BytesMut::new();
        body.put_i32(3);
        message(b'R', body)
    }

    pub fn backend_key_data(pid: i32, secret: i32) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_i32(pid);
        body.put_i32(secret);
        message(b'K', body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(parameters: &[(&str, &str)]) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_i32(PROTOCOL_3);
        for (name, value) in parameters {
            body.put_slice(name.as_bytes());
            body.put_u8(0);
            body.put_slice(value.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut out = BytesMut::new();
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(&body);
        out
    }

    #[test]
    fn startup_packets_decode_whole_and_only_whole() {
        let mut buffer = startup(&[("user", "alice"), ("database", "prod-db")]);
        let mut partial = BytesMut::from(&buffer[..7]);
        assert_eq!(decode_startup(&mut partial), Ok(None));
        assert_eq!(
            decode_startup(&mut buffer),
            Ok(Some(Startup::Startup {
                parameters: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "prod-db".into())
                ]
            }))
        );
        let mut ssl = BytesMut::from(&[0u8, 0, 0, 8, 4, 210, 22, 47][..]);
        assert_eq!(decode_startup(&mut ssl), Ok(Some(Startup::Ssl)));
        let mut cancel =
            BytesMut::from(&[0u8, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 7, 0, 0, 0, 9][..]);
        assert_eq!(
            decode_startup(&mut cancel),
            Ok(Some(Startup::Cancel { pid: 7, secret: 9 }))
        );
        let mut huge = BytesMut::from(&[0x7fu8, 0, 0, 0][..]);
        assert!(matches!(
            decode_startup(&mut huge),
            Err(CodecError::BadLength(_))
        ));
        let mut unterminated =
            BytesMut::from(&[0u8, 0, 0, 12, 0, 3, 0, 0, b'u', b's', b'e', b'r'][..]);
        assert!(matches!(
            decode_startup(&mut unterminated),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn messages_round_trip_and_parse() {
        let mut wire = BytesMut::new();
        let mut bind = BytesMut::new();
        bind.put_slice(b"\0s1\0");
        bind.put_i16(0);
        bind.put_i16(2);
        bind.put_i32(2);
        bind.put_slice(b"42");
        bind.put_i32(-1);
        bind.put_i16(0);
        Message {
            tag: b'B',
            body: bind.freeze(),
        }
        .encode(&mut wire);
        let message = decode_message(&mut wire, MAX_MESSAGE).ok().flatten();
        let parsed = message.as_ref().map(|message| bind_message(&message.body));
        assert_eq!(
            parsed,
            Some(Ok(Bind {
                portal: String::new(),
                statement: "s1".into(),
                parameters: vec![Some(b"42".to_vec()), None],
                binary: vec![false, false],
            }))
        );
        let mut error = backend::error("FATAL", "57P01", "access ended");
        let message = decode_message(&mut error, MAX_MESSAGE).ok().flatten();
        assert_eq!(
            message.map(|message| error_fields(&message.body)),
            Some(("57P01".to_string(), "access ended".to_string()))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap, deterministic stand-in for the fuzz target, run by `cargo test`.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for round in 0..20_000 {
            let length = (round % 64) + 1;
            let mut bytes = Vec::with_capacity(length);
            for _ in 0..length {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            let mut buffer = BytesMut::from(&bytes[..]);
            let _ = decode_startup(&mut buffer);
            let mut whole = BytesMut::from(&bytes[..]);
            if let Ok(length) = whole_messages(&whole, MAX_MESSAGE) {
                let raw = whole.split_to(length);
                let mut again = raw.clone();
                for frame in frames(&raw) {
                    let decoded = decode_message(&mut again, MAX_MESSAGE);
                    let decoded = decoded.as_ref().ok().and_then(Option::as_ref);
                    assert_eq!(
                        decoded.map(|message| (message.tag, &message.body[..])),
                        Some((frame.tag, frame.body))
                    );
                    let _ = bind_view(frame.body).map(|bind| bind.parameters().count());
                    let _ = function_call(frame.body).map(|(_, call)| call.values().count());
                    let _ = function_result(frame.body);
                }
                assert!(again.is_empty());
                assert!(matches!(decode_message(&mut whole, MAX_MESSAGE), Ok(None)));
            }
            let mut buffer = BytesMut::from(&bytes[..]);
            if let Ok(Some(message)) = decode_message(&mut buffer, MAX_MESSAGE) {
                let _ = bind_message(&message.body);
                let _ = parse_message(&message.body);
                let _ = error_fields(&message.body);
                let _ = query_text(&message.body);
            }
        }
    }
}
