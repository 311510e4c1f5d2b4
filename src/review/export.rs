//! `export SESSION --format cast|json|txt` (issue #19): a session as evidence that leaves the
//! bastion.
//!
//! `cast` is a standalone asciicast v2 file that asciinema's own player plays: our extension
//! events (`O`/`I`, bytes that are not text) become one line of output saying what passed, and
//! keystrokes stay. `json` is the session's timeline (its control events, commands, statements,
//! file operations, and its recordings with their hashes). `txt` is what the screen showed, as
//! plain text, or a database session's transcript.

use serde_json::{Value, json};

use super::replay::{Cast, Code, ReviewError, read_checked, transcript};
use crate::audit::AuditRecord;
use crate::recording::screen::Screen;
use crate::store::{RecordingRow, SessionSummary};

/// The formats `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Cast,
    Json,
    Txt,
}

/// One recording as a standalone `.cast`.
pub fn cast(row: &RecordingRow) -> Result<String, ReviewError> {
    let recording = Cast::read(row)?;
    let mut out = format!("{}\n", recording.header);
    for event in &recording.events {
        let (code, data) = match event.code {
            Code::Output => ("o", event.data.clone()),
            Code::Input => ("i", event.data.clone()),
            Code::Resize => ("r", event.data.clone()),
            Code::Marker => ("m", event.data.clone()),
            Code::OutputBytes | Code::InputBytes => {
                let stream = if event.code == Code::OutputBytes {
                    "stdout"
                } else {
                    "stdin"
                };
                let size = super::replay::human_bytes((event.data.len() / 4 * 3) as u64);
                let line = format!("[{stream}: {size} binary]\r\n");
                if event.code == Code::InputBytes {
                    continue;
                }
                ("o", line)
            }
        };
        out.push_str(&format!("{}\n", json!([round(event.at), code, data])));
    }
    Ok(out)
}

/// What the screens of a session's terminal recordings showed, or its query log's transcript.
pub fn text(found: &SessionSummary, rows: &[RecordingRow]) -> Result<String, ReviewError> {
    let mut out = String::new();
    for row in rows {
        out.push_str(&format!(
            "== {}/{} ({}) ==\n",
            row.session_id, row.channel, row.kind
        ));
        if row.kind == crate::recording::QUERY_LOG_KIND {
            out.push_str(&transcript(&found.session.target, row)?);
            continue;
        }
        let recording = Cast::read(row)?;
        let mut screen = Screen::new(recording.width, recording.height, true);
        let mut lines = Vec::new();
        for event in &recording.events {
            if event.code == Code::Resize {
                let (width, height) = event.data.split_once('x').unwrap_or(("80", "24"));
                lines.extend(
                    screen.resize(width.parse().unwrap_or(80), height.parse().unwrap_or(24)),
                );
            } else if let Some(shown) = recording.shown(event, true) {
                lines.extend(screen.feed(&shown));
            }
        }
        lines.extend(screen.finish());
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// The session's timeline for evidence: who, what grant, every control event (with its hash),
/// commands from the markers, statements from the query log, file operations, recordings.
pub fn timeline(
    found: &SessionSummary,
    rows: &[RecordingRow],
    events: &[AuditRecord],
) -> Result<Value, ReviewError> {
    let mut commands = Vec::new();
    let mut statements = Vec::new();
    for row in rows {
        if row.kind == crate::recording::QUERY_LOG_KIND {
            let bytes = read_checked(row)?;
            for line in bytes.split(|byte| *byte == b'\n') {
                if let Ok(record) = serde_json::from_slice::<Value>(line)
                    && record["sql"].is_string()
                {
                    statements.push(record);
                }
            }
            continue;
        }
        let recording = Cast::read(row)?;
        for event in recording
            .events
            .iter()
            .filter(|event| event.code == Code::Marker)
        {
            commands.push(json!({
                "recording": format!("{}/{}", row.session_id, row.channel),
                "t": round(event.at),
                "command": event.data,
            }));
        }
    }
    let file_operations: Vec<Value> = events
        .iter()
        .filter(|record| record.event_type == "file.operation")
        .map(crate::views::audit_json)
        .collect();
    Ok(json!({
        "session": crate::views::session_json(found),
        "control_events": events.iter().map(crate::views::audit_json).collect::<Vec<_>>(),
        "commands": commands,
        "statements": statements,
        "file_operations": file_operations,
        "recordings": rows.iter().map(|row| json!({
            "id": format!("{}/{}", row.session_id, row.channel),
            "kind": row.kind,
            "path": row.path,
            "sha256": row.sha256,
            "size": row.size,
        })).collect::<Vec<_>>(),
    }))
}

/// Seconds with microseconds, as asciinema writes them.
fn round(at: f64) -> f64 {
    (at * 1_000_000.0).round() / 1_000_000.0
}
