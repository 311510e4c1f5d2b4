//! The query log of a PostgreSQL session (issue #4): one JSON object a line, one line a
//! statement, in `recordings_dir/YYYY/MM/DD/<session>.pg.jsonl`.
//!
//! Each line has the time offset from the session start, the protocol (`simple`, `extended`), the
//! SQL text, the bind parameters (cut past `MAX_PARAMETER`, or `"<redacted>"` when the target says
//! `record_parameters = false`), the duration, the CommandComplete tag, the error's SQLSTATE and
//! message, and the bytes of COPY data (counted, never stored). Written through a `HashedFile`,
//! so it is flushed every second and finalized with its SHA-256 like a terminal recording.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Finalized, HashedFile, RecordingError};

/// Bind parameters longer than this are cut, with the original length noted.
pub const MAX_PARAMETER: usize = 256;

/// One finished statement.
#[derive(Debug, Clone, Default)]
pub struct Statement {
    /// `simple` or `extended`.
    pub protocol: &'static str,
    pub sql: String,
    /// Text forms of the bind parameters (`None` for SQL NULL), as sent.
    pub parameters: Vec<Option<Vec<u8>>>,
    pub started: Option<Instant>,
    /// When its outcome arrived (`None` while it runs, or if it never finished).
    pub finished: Option<Instant>,
    pub tag: Option<String>,
    pub sqlstate: Option<String>,
    pub error: Option<String>,
    pub copy_bytes: u64,
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

/// Writes one session's query log.
pub struct QueryLog {
    file: HashedFile,
    started: Instant,
    record_parameters: bool,
}

impl QueryLog {
    pub fn create(path: PathBuf, record_parameters: bool) -> Result<QueryLog, RecordingError> {
        Ok(QueryLog {
            file: HashedFile::create(path)?,
            started: Instant::now(),
            record_parameters,
        })
    }

    pub fn path(&self) -> &std::path::Path {
        self.file.path()
    }

    pub fn write(&mut self, statement: &Statement) -> Result<(), RecordingError> {
        let at = statement
            .started
            .map(|at| at.saturating_duration_since(self.started))
            .unwrap_or_else(|| self.started.elapsed());
        let parameters: Vec<Value> = if self.record_parameters {
            statement
                .parameters
                .iter()
                .map(|value| parameter(value.as_deref()))
                .collect()
        } else {
            statement
                .parameters
                .iter()
                .map(|_| Value::from("<redacted>"))
                .collect()
        };
        let line = json!({
            "time": round_millis(at),
            "protocol": statement.protocol,
            "sql": statement.sql,
            "parameters": parameters,
            "duration_ms": round_millis(statement.duration()) * 1000.0,
            "tag": statement.tag,
            "sqlstate": statement.sqlstate,
            "error": statement.error,
            "copy_bytes": statement.copy_bytes,
        });
        self.file.write_line(&format!("{line}\n"))
    }

    pub fn flush(&mut self) -> Result<(), RecordingError> {
        self.file.flush()
    }

    pub fn finalize(self) -> Result<Finalized, RecordingError> {
        self.file.finalize()
    }
}

/// Seconds with millisecond precision.
fn round_millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

fn parameter(value: Option<&[u8]>) -> Value {
    let Some(bytes) = value else {
        return Value::Null;
    };
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_PARAMETER)]).into_owned();
    if bytes.len() > MAX_PARAMETER {
        Value::from(format!("{text}… ({} bytes)", bytes.len()))
    } else {
        Value::from(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_lines_with_parameters_cut_or_redacted()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        for record in [true, false] {
            let path = dir.path().join(format!("{record}.pg.jsonl"));
            let mut log = QueryLog::create(path.clone(), record)?;
            log.write(&Statement {
                protocol: "extended",
                sql: "select $1, $2, $3".into(),
                parameters: vec![Some(b"42".to_vec()), None, Some(vec![b'x'; 1000])],
                tag: Some("SELECT 1".into()),
                ..Statement::default()
            })?;
            let finalized = log.finalize()?;
            let text = std::fs::read_to_string(&path)?;
            assert_eq!(finalized.size, text.len() as u64);
            let line: Value = serde_json::from_str(text.trim())?;
            assert_eq!(line["sql"], "select $1, $2, $3");
            assert_eq!(line["tag"], "SELECT 1");
            if record {
                assert_eq!(line["parameters"][0], "42");
                assert!(line["parameters"][1].is_null());
                assert!(
                    line["parameters"][2]
                        .as_str()
                        .unwrap_or_default()
                        .ends_with("(1000 bytes)")
                );
            } else {
                assert_eq!(line["parameters"][0], "<redacted>");
            }
        }
        Ok(())
    }
}
