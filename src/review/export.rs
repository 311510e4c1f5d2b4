//! `export SESSION --format cast|json|txt` (issue #19): a session as evidence that leaves the
//! bastion.
//!
//! `cast` is a standalone asciicast v2 file that asciinema's own player plays: our extension
//! events (`O`/`I`, bytes that are not text) become one line of output saying what passed, and
//! keystrokes stay. `json` is the session's timeline (its control events, commands, statements,
//! file operations, and its recordings with their hashes). `txt` is what the screen showed, as
//! plain text, or a database session's transcript.

use serde_json::{Value, json};

use super::replay::{Cast, ReviewError, read_checked, transcript};
use crate::audit::AuditRecord;
use crate::recording::asciicast::Code;
use crate::recording::screen::{Screen, Stripper};
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
            Code::Output | Code::Input | Code::Resize | Code::Marker => {
                (event.code.as_str(), event.data.clone())
            }
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
        // Rendering is bounded as the recorder's is: output made to be costly is written as
        // its printed text from there on, and the text as a whole is cut at a multiple of the
        // recording's size (sequences that repaint a screen for a few bytes).
        let mut screen = Some(Screen::new(recording.width, recording.height, true));
        let mut stripper = Stripper::default();
        let mut lines = Vec::new();
        let (mut fed, mut written) = (0u64, 0usize);
        let most = row.size.unwrap_or(0).saturating_mul(4) as usize + (1 << 20);
        for event in &recording.events {
            if written > most {
                lines.push("[portcullis: the text is cut here: it renders to far more than the recording holds]".to_string());
                break;
            }
            let new = match (&mut screen, event.code) {
                (Some(screen), Code::Resize) => {
                    let (width, height) = super::replay::parse_size(&event.data);
                    screen.resize(width, height)
                }
                (Some(emulated), _) => match recording.shown(event, true) {
                    Some(shown) => {
                        fed += shown.len() as u64;
                        let new = emulated.feed(&shown);
                        if emulated.too_costly_for(fed)
                            && let Some(done) = screen.take()
                        {
                            let mut new = new;
                            new.extend(done.finish());
                            new
                        } else {
                            new
                        }
                    }
                    None => Vec::new(),
                },
                (None, _) => match recording.shown(event, true) {
                    Some(shown) => stripper.strip(&shown).lines().map(str::to_string).collect(),
                    None => Vec::new(),
                },
            };
            written += new.iter().map(|line| line.len() + 1).sum::<usize>();
            lines.extend(new);
        }
        if let Some(screen) = screen {
            lines.extend(screen.finish());
        }
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
