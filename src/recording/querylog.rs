//! The query log of a PostgreSQL session (issue #4): one JSON object a line, one line a
//! statement, in `recordings_dir/YYYY/MM/DD/<session>.pg.jsonl`.
//!
//! A record is `{"t", "protocol", "sql", "params", "duration_ms", "tags", "rows", "error",
//! "copy_bytes"}`, the shape issue #4 fixes for outside tools: `t` is seconds since the session
//! started, `params` the bind parameters of an extended-protocol statement (cut past
//! `MAX_PARAMETER`, or `"<redacted>"` when the target says `record_parameters = false`; `null`
//! for a simple Query), `tags` the CommandComplete tags in order, `rows` the sum of their row
//! counts (`null` when no tag carries one), `error` the SQLSTATE and message, and `copy_bytes`
//! the bytes of COPY data (counted, never stored). Lines are serialized from a borrowed struct
//! into a reused buffer (no `serde_json::Value` per statement: this runs 20,000 times a second
//! under `pgbench -S`). Written through a `HashedFile`, so it is flushed every second and
//! finalized with its SHA-256 like a terminal recording.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::Digest;

use super::{Finalized, HashedFile, RecordingError};

/// Bind parameters longer than this are cut, with the original length noted.
pub const MAX_PARAMETER: usize = 256;

/// SQL text longer than this is kept (in memory and in the log) cut at this many bytes, with
/// `sql_sha256` of the whole text in its record (issue #17: a client cannot grow the bastion's
/// memory by preparing huge statements).
pub const MAX_SQL: usize = 1 << 20;

/// SQL text as a front end keeps it: cut past `MAX_SQL` at a character boundary, with the
/// SHA-256 (hex) of the whole text when cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SqlText {
    pub text: Arc<str>,
    pub sha256: Option<Arc<str>>,
}

impl SqlText {
    pub fn new(whole: &str) -> SqlText {
        if whole.len() <= MAX_SQL {
            return SqlText {
                text: Arc::from(whole),
                sha256: None,
            };
        }
        let mut end = MAX_SQL;
        while !whole.is_char_boundary(end) {
            end -= 1;
        }
        let digest = sha2::Sha256::digest(whole.as_bytes());
        SqlText {
            text: Arc::from(&whole[..end]),
            sha256: Some(Arc::from(hex::encode(digest))),
        }
    }

    /// Bytes held in memory.
    pub fn weight(&self) -> usize {
        self.text.len()
    }
}

/// Which message a record comes from: a closed set, written as its name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StatementProtocol {
    /// A simple `Query`.
    #[default]
    Simple,
    /// An extended-protocol `Execute`.
    Extended,
    /// A fastpath `FunctionCall` (issue #17: libpq's large objects and `PQfn`).
    Function,
    /// The session's startup parameters, its first record (issue #17).
    Startup,
    /// A named prepared statement the server accepted: its text, whatever later runs it.
    Prepare,
    /// An error answering a Sync: the extended batch's implicit commit failed.
    Sync,
    /// A named portal the server bound: its statement's text and parameters, whatever later
    /// runs it (an Execute, SQL `FETCH`).
    Bind,
}

impl StatementProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            StatementProtocol::Simple => "simple",
            StatementProtocol::Extended => "extended",
            StatementProtocol::Function => "function",
            StatementProtocol::Startup => "startup",
            StatementProtocol::Prepare => "prepare",
            StatementProtocol::Sync => "sync",
            StatementProtocol::Bind => "bind",
        }
    }

    /// Is a record of this kind a statement that ran (counted in the session's row)? The
    /// others only say what the server accepted (`prepare`, `bind`), that a batch's commit failed
    /// (`sync`), or how the session started.
    pub fn ran(self) -> bool {
        matches!(
            self,
            StatementProtocol::Simple | StatementProtocol::Extended | StatementProtocol::Function
        )
    }

    /// Does a record of this kind carry a list of bound values?
    fn has_parameters(self) -> bool {
        matches!(
            self,
            StatementProtocol::Extended | StatementProtocol::Function | StatementProtocol::Bind
        )
    }
}

/// What a record carries besides SQL, for the kinds that are not SQL statements. Boxed in the
/// statement: rare, and a statement is moved thousands of times a second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementDetail {
    /// A fastpath call: the function's OID and, once answered, its result.
    Function {
        oid: u32,
        /// The client asked for the result in binary (shown as hex).
        binary_result: bool,
        result: Option<FunctionResult>,
    },
    /// Startup parameters as forwarded to the target, in the order the client sent them.
    Startup { parameters: Vec<(String, String)> },
    /// A named prepared statement's name.
    Prepare { name: String },
    /// A named portal's name.
    Bind { portal: String },
}

/// A fastpath call's result: its length (`None` for NULL) and at most `MAX_PARAMETER` bytes of
/// it, shown as text, or as hex when the result is binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionResult {
    pub length: Option<u64>,
    pub head: String,
}

/// Name-value pairs serialized as one JSON object, in their order.
pub struct NameValues<'a>(pub &'a [(String, String)]);

impl Serialize for NameValues<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
    }
}

/// One finished statement.
#[derive(Debug, Clone, Default)]
pub struct Statement {
    pub protocol: StatementProtocol,
    /// Shared with the prepared statement and portal it came from: a prepared statement runs
    /// thousands of times a second, and its text is not copied for each run.
    pub sql: Arc<str>,
    /// The SHA-256 of the whole SQL text when `sql` was cut at `MAX_SQL`.
    pub sql_sha256: Option<Arc<str>>,
    /// Text forms of the bind parameters (`None` for SQL NULL), as sent; shared with the portal.
    pub parameters: Parameters,
    pub started: Option<Instant>,
    /// When its outcome arrived (`None` while it runs, or if it never finished).
    pub finished: Option<Instant>,
    /// The CommandComplete tags, in order (a simple Query can run several statements).
    pub tags: Vec<String>,
    /// The sum of the tags' row counts, `None` when no tag carries one (the front end reads
    /// them: the tags' shape is its protocol's).
    pub rows: Option<u64>,
    pub sqlstate: Option<String>,
    pub error: Option<String>,
    pub copy_bytes: u64,
    /// Set for the records that are not SQL (function calls, startup).
    pub detail: Option<Box<StatementDetail>>,
}

impl Statement {
    pub fn duration(&self) -> Duration {
        match (self.started, self.finished) {
            (Some(started), Some(finished)) => finished.saturating_duration_since(started),
            (Some(started), None) => started.elapsed(),
            _ => Duration::default(),
        }
    }
}

/// Bind parameter values (`None` for SQL NULL), in one shared allocation: copied once when a
/// portal is bound and shared by every statement it runs (a front end binds thousands a second).
/// Each value is a 4-byte length (`u32::MAX` for NULL) followed by its bytes.
#[derive(Clone, Default)]
pub struct Parameters(Option<Arc<[u8]>>);

const NULL: u32 = u32::MAX;

impl Parameters {
    /// Starts a list in `scratch`, a buffer the caller keeps between lists.
    pub fn build(scratch: &mut Vec<u8>) -> ParametersBuilder<'_> {
        scratch.clear();
        ParametersBuilder { bytes: scratch }
    }

    pub fn iter(&self) -> impl Iterator<Item = Option<&[u8]>> {
        let mut rest: &[u8] = self.0.as_deref().unwrap_or_default();
        std::iter::from_fn(move || {
            let (length, after) = rest.split_first_chunk::<4>()?;
            let length = u32::from_be_bytes(*length);
            if length == NULL {
                rest = after;
                return Some(None);
            }
            let (value, after) = after.split_at_checked(length as usize)?;
            rest = after;
            Some(Some(value))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(<[u8]>::is_empty)
    }

    /// Bytes held in memory.
    pub fn weight(&self) -> usize {
        self.0.as_deref().map_or(0, <[u8]>::len)
    }
}

impl std::fmt::Debug for Parameters {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_list()
            .entries(self.iter().map(|value| value.map(String::from_utf8_lossy)))
            .finish()
    }
}

impl From<Vec<Option<Vec<u8>>>> for Parameters {
    fn from(values: Vec<Option<Vec<u8>>>) -> Parameters {
        let mut scratch = Vec::new();
        let mut list = Parameters::build(&mut scratch);
        for value in values {
            match value {
                Some(value) => list.value(&value),
                None => list.null(),
            }
        }
        list.finish()
    }
}

/// Appends values to a `Parameters` being built.
pub struct ParametersBuilder<'a> {
    bytes: &'a mut Vec<u8>,
}

impl ParametersBuilder<'_> {
    pub fn null(&mut self) {
        self.bytes.extend_from_slice(&NULL.to_be_bytes());
    }

    /// A value, kept cut at `MAX_PARAMETER` bytes with its length noted: a 60 MB bytea is
    /// logged as its first bytes, and the front end does not hold the rest (issue #17).
    pub fn value(&mut self, value: &[u8]) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        self.bytes
            .extend_from_slice(&value[..value.len().min(MAX_PARAMETER)]);
        self.seal(at, value.len());
    }

    /// A value written by `write` (a front end that shows a binary value as text, say), cut
    /// like `value`.
    pub fn value_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        write(self.bytes);
        let length = self.bytes.len() - at - 4;
        self.seal(at, length);
    }

    /// Writes the length of the value that starts at `at`, first cutting it past
    /// `MAX_PARAMETER` bytes with its whole `length` noted.
    fn seal(&mut self, at: usize, length: usize) {
        if length > MAX_PARAMETER {
            self.bytes.truncate(at + 4 + MAX_PARAMETER);
            let kept = String::from_utf8_lossy(&self.bytes[at + 4..]).into_owned();
            self.bytes.truncate(at + 4);
            self.bytes
                .extend_from_slice(format!("{kept}… ({length} bytes)").as_bytes());
        }
        let written = (self.bytes.len() - at - 4) as u32;
        self.bytes[at..at + 4].copy_from_slice(&written.to_be_bytes());
    }

    pub fn finish(self) -> Parameters {
        if self.bytes.is_empty() {
            Parameters(None)
        } else {
            Parameters(Some(Arc::from(&self.bytes[..])))
        }
    }
}

/// Writes one session's query log.
pub struct QueryLog {
    file: HashedFile,
    started: Instant,
    record_parameters: bool,
    /// The line being serialized, reused.
    line: Vec<u8>,
    /// The running hash of the lines written so far (issue #18).
    chain: LineChain,
}

/// The running hash of a query log's lines (issue #18): each line ends with `"h"`, the SHA-256
/// (hex) of the previous line's `h` (its 64 hex characters) followed by this line's bytes without
/// its `h` field, that is, the line up to its closing brace with `}` in place of
/// `,"h":"…"}`. The first line chains to the SHA-256 (hex) of the session id. `h` is always the
/// last field, so a verifier removes the last 72 bytes before the closing brace and hashes the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineChain {
    /// `h` of the last line (or the seed).
    pub h: String,
    /// Lines chained so far.
    pub lines: u64,
}

/// The bytes `,"h":"` + 64 hex digits + `"` that end every line before its `}`.
const H_FIELD: usize = 6 + 64 + 1;

impl LineChain {
    /// The chain of a log with no line yet.
    pub fn start(session_id: &str) -> LineChain {
        LineChain {
            h: hex::encode(sha2::Sha256::digest(session_id.as_bytes())),
            lines: 0,
        }
    }

    /// The `h` of `record` (a JSON object without its `h` field, without a line end) following
    /// this chain's last line.
    pub fn next(&self, record: &[u8]) -> String {
        let mut hasher = sha2::Sha256::new();
        hasher.update(self.h.as_bytes());
        hasher.update(record);
        hex::encode(hasher.finalize())
    }

    /// Checks one line as written (without its line end) against the chain and advances it.
    /// `Err` when the line is not an object ending in an `h` field, or its `h` is not the one
    /// the chain gives.
    pub fn verify_line(&mut self, line: &[u8]) -> Result<(), LineError> {
        let Some(body) = line.strip_suffix(b"}") else {
            return Err(LineError::Shape);
        };
        let Some(split) = body.len().checked_sub(H_FIELD) else {
            return Err(LineError::Shape);
        };
        let (record, field) = body.split_at(split);
        let Some(stored) = field
            .strip_prefix(b",\"h\":\"")
            .and_then(|rest| rest.strip_suffix(b"\""))
        else {
            return Err(LineError::Shape);
        };
        let mut unsigned = Vec::with_capacity(record.len() + 1);
        unsigned.extend_from_slice(record);
        unsigned.push(b'}');
        let expected = self.next(&unsigned);
        if stored != expected.as_bytes() {
            return Err(LineError::Hash);
        }
        self.h = expected;
        self.lines += 1;
        Ok(())
    }
}

/// Why a query-log line does not fit its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not a record ending in its \"h\" field")]
    Shape,
    #[error("its \"h\" does not follow from the line before")]
    Hash,
}

/// One record, borrowed from the statement.
#[derive(Serialize)]
struct Record<'a> {
    t: f64,
    protocol: &'static str,
    sql: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sql_sha256: Option<&'a str>,
    params: Option<RecordParams<'a>>,
    duration_ms: f64,
    tags: &'a [String],
    rows: Option<u64>,
    error: Option<RecordError<'a>>,
    copy_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_oid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Option<RecordResult<'a>>>,
    /// A `prepare` record's statement name.
    #[serde(skip_serializing_if = "Option::is_none")]
    statement: Option<&'a str>,
    /// A `bind` record's portal name.
    #[serde(skip_serializing_if = "Option::is_none")]
    portal: Option<&'a str>,
}

/// A function call's result in its record: `null` for a call that failed or never finished.
#[derive(Serialize)]
struct RecordResult<'a> {
    length: Option<u64>,
    head: &'a str,
}

/// `params`: bound values in order, or the startup parameters as one object.
enum RecordParams<'a> {
    Values(Params<'a>),
    Startup(NameValues<'a>),
}

impl Serialize for RecordParams<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RecordParams::Values(values) => values.serialize(serializer),
            RecordParams::Startup(pairs) => pairs.serialize(serializer),
        }
    }
}

/// A statement's parameters as the record shows them, serialized straight from the shared
/// values (no list built a statement).
struct Params<'a> {
    parameters: &'a Parameters,
    /// False when the target says `record_parameters = false`: each value is `"<redacted>"`.
    recorded: bool,
}

impl Serialize for Params<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.parameters.iter().map(|value| {
            if self.recorded {
                value.map(parameter)
            } else {
                Some(Cow::Borrowed("<redacted>"))
            }
        }))
    }
}

#[derive(Serialize)]
struct RecordError<'a> {
    sqlstate: &'a str,
    message: &'a str,
}

impl QueryLog {
    /// Creates the log of session `session_id`, whose id seeds its line chain.
    pub fn create(
        path: PathBuf,
        session_id: &str,
        record_parameters: bool,
    ) -> Result<QueryLog, RecordingError> {
        Ok(QueryLog {
            file: HashedFile::create(path)?,
            started: Instant::now(),
            record_parameters,
            line: Vec::with_capacity(512),
            chain: LineChain::start(session_id),
        })
    }

    /// Where the line chain stands: what a `pg.checkpoint` records.
    pub fn chain(&self) -> &LineChain {
        &self.chain
    }

    pub fn path(&self) -> &std::path::Path {
        self.file.path()
    }

    pub fn write(&mut self, statement: &Statement) -> Result<(), RecordingError> {
        let at = statement
            .started
            .map(|at| at.saturating_duration_since(self.started))
            .unwrap_or_else(|| self.started.elapsed());
        let (mut function_oid, mut result) = (None, None);
        let (mut statement_name, mut portal_name) = (None, None);
        let params = match statement.detail.as_deref() {
            Some(StatementDetail::Startup { parameters }) => {
                Some(RecordParams::Startup(NameValues(parameters)))
            }
            Some(StatementDetail::Function {
                oid,
                result: answer,
                ..
            }) => {
                function_oid = Some(*oid);
                result = Some(answer.as_ref().map(|answer| RecordResult {
                    length: answer.length,
                    head: if self.record_parameters {
                        &answer.head
                    } else {
                        "<redacted>"
                    },
                }));
                None
            }
            Some(StatementDetail::Prepare { name }) => {
                statement_name = Some(name.as_str());
                None
            }
            Some(StatementDetail::Bind { portal }) => {
                portal_name = Some(portal.as_str());
                None
            }
            None => None,
        }
        .or_else(|| {
            statement
                .protocol
                .has_parameters()
                .then_some(RecordParams::Values(Params {
                    parameters: &statement.parameters,
                    recorded: self.record_parameters,
                }))
        });
        let error = match (&statement.sqlstate, &statement.error) {
            (None, None) => None,
            (sqlstate, message) => Some(RecordError {
                sqlstate: sqlstate.as_deref().unwrap_or_default(),
                message: message.as_deref().unwrap_or_default(),
            }),
        };
        let record = Record {
            t: round_millis(at.as_secs_f64()),
            protocol: statement.protocol.as_str(),
            sql: &statement.sql,
            sql_sha256: statement.sql_sha256.as_deref(),
            params,
            duration_ms: round_millis(statement.duration().as_secs_f64() * 1000.0),
            tags: &statement.tags,
            rows: statement.rows,
            error,
            copy_bytes: statement.copy_bytes,
            function_oid,
            result,
            statement: statement_name,
            portal: portal_name,
        };
        self.line.clear();
        serde_json::to_writer(&mut self.line, &record).map_err(|error| RecordingError::Write {
            path: self.file.path().to_path_buf(),
            source: std::io::Error::other(error),
        })?;
        let h = self.chain.next(&self.line);
        // The object's closing brace gives way to the `h` field, then comes back.
        self.line.pop();
        self.line.extend_from_slice(b",\"h\":\"");
        self.line.extend_from_slice(h.as_bytes());
        self.line.extend_from_slice(b"\"}\n");
        self.file.write_bytes(&self.line)?;
        self.chain = LineChain {
            h,
            lines: self.chain.lines + 1,
        };
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), RecordingError> {
        self.file.flush()
    }

    /// Flushes and syncs the file's data to disk.
    pub fn sync(&mut self) -> Result<(), RecordingError> {
        self.file.sync()
    }

    pub fn finalize(self) -> Result<Finalized, RecordingError> {
        self.file.finalize()
    }
}

/// Three decimals.
fn round_millis(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// A parameter as kept: already cut by `ParametersBuilder`.
fn parameter(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn statements_are_lines_with_parameters_cut_or_redacted()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        for record in [true, false] {
            let path = dir.path().join(format!("{record}.pg.jsonl"));
            let mut log = QueryLog::create(path.clone(), "s-test", record)?;
            log.write(&Statement {
                protocol: StatementProtocol::Extended,
                sql: "select $1, $2, $3".into(),
                parameters: vec![Some(b"42".to_vec()), None, Some(vec![b'x'; 1000])].into(),
                tags: vec!["SELECT 1".into()],
                rows: Some(1),
                ..Statement::default()
            })?;
            let finalized = log.finalize()?;
            let text = std::fs::read_to_string(&path)?;
            assert_eq!(finalized.size, text.len() as u64);
            let line: Value = serde_json::from_str(text.trim())?;
            assert_eq!(line["sql"], "select $1, $2, $3");
            assert_eq!(line["tags"], serde_json::json!(["SELECT 1"]));
            assert_eq!(line["rows"], 1);
            assert!(line["error"].is_null());
            assert!(line["t"].is_number());
            if record {
                assert_eq!(line["params"][0], "42");
                assert!(line["params"][1].is_null());
                assert!(
                    line["params"][2]
                        .as_str()
                        .unwrap_or_default()
                        .ends_with("(1000 bytes)")
                );
            } else {
                assert_eq!(line["params"][0], "<redacted>");
            }
        }
        Ok(())
    }

    #[test]
    fn parameters_keep_nulls_empty_values_and_bytes_in_order() {
        let mut scratch = Vec::new();
        let mut list = Parameters::build(&mut scratch);
        list.value(b"42");
        list.null();
        list.value(b"");
        list.value_with(|out| out.extend_from_slice(&[0xff, 0]));
        let parameters = list.finish();
        let values: Vec<_> = parameters.iter().collect();
        assert_eq!(
            values,
            [Some(&b"42"[..]), None, Some(&b""[..]), Some(&[0xff, 0][..])]
        );
        assert!(!parameters.is_empty());
        // The scratch buffer is reused, and what was built does not change with it.
        let mut again = Parameters::build(&mut scratch);
        again.null();
        assert_eq!(again.finish().iter().collect::<Vec<_>>(), [None]);
        assert_eq!(parameters.iter().count(), 4);
        assert!(Parameters::build(&mut scratch).finish().is_empty());
        assert_eq!(Parameters::default().iter().count(), 0);
        let from: Parameters = vec![None, Some(b"x".to_vec())].into();
        assert_eq!(format!("{from:?}"), r#"[None, Some("x")]"#);
    }

    #[test]
    fn errors_carry_their_sqlstate_and_simple_queries_no_parameters()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("e.pg.jsonl");
        let mut log = QueryLog::create(path.clone(), "s-test", true)?;
        log.write(&Statement {
            protocol: StatementProtocol::Simple,
            sql: "select 1/0".into(),
            sqlstate: Some("22012".into()),
            error: Some("division by zero".into()),
            ..Statement::default()
        })?;
        log.finalize()?;
        let line: Value = serde_json::from_str(std::fs::read_to_string(&path)?.trim())?;
        assert!(
            line["params"].is_null(),
            "a simple query has no bind parameters"
        );
        assert_eq!(line["tags"], serde_json::json!([]));
        assert!(line["rows"].is_null());
        assert_eq!(line["error"]["sqlstate"], "22012");
        assert_eq!(line["error"]["message"], "division by zero");
        Ok(())
    }

    /// Issue #18: each line carries the running hash; a changed, removed or reordered line is
    /// the first that fails `verify_line`.
    #[test]
    fn lines_chain_and_a_changed_removed_or_moved_line_breaks_the_chain()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("chain.pg.jsonl");
        let mut log = QueryLog::create(path.clone(), "s-chain", true)?;
        for number in 0..5 {
            log.write(&Statement {
                sql: format!("select {number}").into(),
                ..Statement::default()
            })?;
        }
        let head = log.chain().clone();
        assert_eq!(head.lines, 5);
        log.finalize()?;
        let text = std::fs::read_to_string(&path)?;
        let lines: Vec<&str> = text.lines().collect();
        let first_bad = |lines: &[&str]| {
            let mut chain = LineChain::start("s-chain");
            for (index, line) in lines.iter().enumerate() {
                if chain.verify_line(line.as_bytes()).is_err() {
                    return Some(index + 1);
                }
            }
            (chain != head).then_some(0)
        };
        assert_eq!(first_bad(&lines), None);
        // The first line is the documented hash: of the seed followed by the line without `h`.
        let first: Value = serde_json::from_str(lines[0])?;
        let seed = hex::encode(sha2::Sha256::digest(b"s-chain"));
        let unsigned = format!("{}}}", &lines[0][..lines[0].len() - 1 - H_FIELD]);
        let expected = hex::encode(sha2::Sha256::digest(format!("{seed}{unsigned}").as_bytes()));
        assert_eq!(first["h"], expected.as_str());
        let changed: Vec<String> = lines
            .iter()
            .map(|line| line.replace("select 2", "select 9"))
            .collect();
        let changed: Vec<&str> = changed.iter().map(String::as_str).collect();
        assert_eq!(first_bad(&changed), Some(3));
        let removed = [lines[0], lines[1], lines[3], lines[4]];
        assert_eq!(first_bad(&removed), Some(3));
        let moved = [lines[0], lines[2], lines[1], lines[3], lines[4]];
        assert_eq!(first_bad(&moved), Some(2));
        let cut = &lines[..4];
        assert_eq!(
            first_bad(cut),
            Some(0),
            "a cut log ends short of its checkpoint"
        );
        // Another session's seed does not verify this log.
        let mut other = LineChain::start("s-other");
        assert_eq!(other.verify_line(lines[0].as_bytes()), Err(LineError::Hash));
        Ok(())
    }
}
