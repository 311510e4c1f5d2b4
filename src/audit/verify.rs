//! `audit verify` past the chain (issue #18): every query log against its `pg.checkpoint`s, and
//! every terminal recording against its `recording.checkpoint`s and its `recording.finalized`
//! hash, naming the first line or byte range that does not fit.
//!
//! The chain anchors the files: a query log's lines chain to each other (`querylog::LineChain`)
//! and the checkpoints record where that chain stood, so a line changed, removed or reordered
//! before a checkpoint is found, and the first line whose `h` does not follow is named. A
//! rewritten log whose `h` fields were all recomputed is still found, at the checkpoint it no
//! longer reaches. A recording's checkpoints are the SHA-256 of its first bytes, so a recording a
//! crash cut short verifies up to its last checkpoint.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::AuditRecord;
use super::types::{PG_CHECKPOINT, RECORDING_CHECKPOINT, RECORDING_FINALIZED};
use crate::recording::querylog::LineChain;

/// The anchors of the files, gathered from the chain as it is walked.
#[derive(Debug, Default)]
pub struct Anchors {
    /// Per session: its query log's checkpoints, in chain order.
    query_logs: BTreeMap<String, Vec<LineCheckpoint>>,
    /// Per (session, channel): a recording's checkpoints and its final hash.
    recordings: BTreeMap<(String, u32), FileAnchors>,
}

#[derive(Debug, Clone)]
struct LineCheckpoint {
    seq: i64,
    lines: u64,
    h: String,
}

#[derive(Debug, Default)]
struct FileAnchors {
    checkpoints: Vec<ByteCheckpoint>,
    finalized: Option<ByteCheckpoint>,
}

#[derive(Debug, Clone)]
struct ByteCheckpoint {
    seq: i64,
    offset: u64,
    sha256: String,
}

/// A recorded file to check, as the store knows it.
#[derive(Debug, Clone)]
pub struct RecordedFile {
    pub session_id: String,
    pub channel: u32,
    /// `pg-query-log` or a terminal recording's kind.
    pub query_log: bool,
    pub path: PathBuf,
}

/// What the files held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FilesVerified {
    pub query_logs: u64,
    pub lines: u64,
    pub recordings: u64,
}

/// The first thing in a file that does not fit its anchors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error(
        "session {session}: its {what} is anchored in the chain (seq {seq}) but the store \
         lists no such file (its row was removed or changed)"
    )]
    Unlisted {
        session: String,
        what: String,
        seq: i64,
    },
    #[error("{path}: cannot read it ({why}); its audit events say it exists")]
    Unreadable { path: String, why: String },
    #[error("{path}: line {line} {why} (changed, removed or moved: the first bad line)")]
    Line {
        path: String,
        line: u64,
        why: crate::recording::querylog::LineError,
    },
    #[error(
        "{path}: lines {from} to {to} no longer lead to pg.checkpoint seq {seq} (rewritten with \
         their hashes recomputed)"
    )]
    Rewritten {
        path: String,
        from: u64,
        to: u64,
        seq: i64,
    },
    #[error(
        "{path}: ends after line {lines}, but pg.checkpoint seq {seq} counts {expected} \
         (lines removed at the end)"
    )]
    Short {
        path: String,
        lines: u64,
        expected: u64,
        seq: i64,
    },
    #[error(
        "{path}: bytes {from} to {to} (lines {first_line} to {last_line}) do not match \
         {event} seq {seq}"
    )]
    Bytes {
        path: String,
        from: u64,
        to: u64,
        first_line: u64,
        last_line: u64,
        event: &'static str,
        seq: i64,
    },
    #[error("{path}: {size} bytes, but {event} seq {seq} covers {expected} (cut short)")]
    Cut {
        path: String,
        size: u64,
        expected: u64,
        event: &'static str,
        seq: i64,
    },
}

impl Anchors {
    /// Takes what a verified record says about a file.
    pub fn collect(&mut self, record: &AuditRecord) {
        let Some(session) = record.session_id.clone() else {
            return;
        };
        let detail: serde_json::Value = match serde_json::from_str(&record.detail) {
            Ok(detail) => detail,
            Err(_) => return,
        };
        let text = |key: &str| detail[key].as_str().map(str::to_string);
        let number = |key: &str| detail[key].as_u64();
        match record.event_type.as_str() {
            PG_CHECKPOINT => {
                if let (Some(lines), Some(h)) = (number("lines"), text("h")) {
                    let checkpoint = LineCheckpoint {
                        seq: record.seq,
                        lines,
                        h,
                    };
                    self.query_logs.entry(session).or_default().push(checkpoint);
                }
            }
            RECORDING_CHECKPOINT | RECORDING_FINALIZED => {
                let offset = number("offset").or_else(|| number("size"));
                let (Some(channel), Some(offset), Some(sha256)) =
                    (number("channel"), offset, text("sha256"))
                else {
                    return;
                };
                let checkpoint = ByteCheckpoint {
                    seq: record.seq,
                    offset,
                    sha256,
                };
                let anchors = self
                    .recordings
                    .entry((session, channel as u32))
                    .or_default();
                if record.event_type == RECORDING_FINALIZED {
                    anchors.finalized = Some(checkpoint);
                } else {
                    anchors.checkpoints.push(checkpoint);
                }
            }
            _ => {}
        }
    }

    /// The sessions whose files have anchors, for the store to list their files.
    pub fn sessions(&self) -> Vec<String> {
        let mut sessions: Vec<String> = self.query_logs.keys().cloned().collect();
        sessions.extend(self.recordings.keys().map(|(session, _)| session.clone()));
        sessions.sort();
        sessions.dedup();
        sessions
    }

    /// Checks every file against its anchors, in order; stops at the first that does not fit.
    pub fn verify(&self, files: &[RecordedFile]) -> Result<FilesVerified, FileError> {
        // Every anchored file must be listed (issue #18 review: a removed row hid its file).
        for (session, checkpoints) in &self.query_logs {
            let listed = files
                .iter()
                .any(|file| file.query_log && &file.session_id == session);
            if !listed {
                return Err(FileError::Unlisted {
                    session: session.clone(),
                    what: "query log".to_string(),
                    seq: checkpoints.first().map_or(0, |checkpoint| checkpoint.seq),
                });
            }
        }
        for ((session, channel), anchors) in &self.recordings {
            let listed = files
                .iter()
                .any(|file| &file.session_id == session && file.channel == *channel);
            if !listed {
                let seq = anchors
                    .checkpoints
                    .first()
                    .or(anchors.finalized.as_ref())
                    .map_or(0, |checkpoint| checkpoint.seq);
                return Err(FileError::Unlisted {
                    session: session.clone(),
                    what: format!("recording of channel {channel}"),
                    seq,
                });
            }
        }
        let mut verified = FilesVerified::default();
        for file in files {
            let key = (file.session_id.clone(), file.channel);
            let bytes = self.recordings.get(&key);
            if file.query_log {
                let checkpoints = self
                    .query_logs
                    .get(&file.session_id)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                verified.lines += verify_query_log(&file.path, &file.session_id, checkpoints)?;
                verified.query_logs += 1;
            }
            if let Some(anchors) = bytes {
                verify_bytes(&file.path, anchors)?;
                if !file.query_log {
                    verified.recordings += 1;
                }
            }
        }
        Ok(verified)
    }
}

/// Walks a query log's line chain and checks it reaches each checkpoint; returns its lines.
fn verify_query_log(
    path: &Path,
    session_id: &str,
    checkpoints: &[LineCheckpoint],
) -> Result<u64, FileError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|error| FileError::Unreadable {
        path: shown.clone(),
        why: error.to_string(),
    })?;
    let mut checkpoints: Vec<&LineCheckpoint> = checkpoints.iter().collect();
    checkpoints.sort_by_key(|checkpoint| (checkpoint.lines, checkpoint.seq));
    let mut next = checkpoints.iter().peekable();
    let mut chain = LineChain::start(session_id);
    let mut anchored = 0;
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.map_err(|error| FileError::Unreadable {
            path: shown.clone(),
            why: error.to_string(),
        })?;
        chain.verify_line(&line).map_err(|why| FileError::Line {
            path: shown.clone(),
            line: chain.lines + 1,
            why,
        })?;
        while let Some(checkpoint) = next.next_if(|checkpoint| checkpoint.lines <= chain.lines) {
            if checkpoint.lines == chain.lines && checkpoint.h != chain.h {
                return Err(FileError::Rewritten {
                    path: shown,
                    from: anchored + 1,
                    to: chain.lines,
                    seq: checkpoint.seq,
                });
            }
            anchored = checkpoint.lines;
        }
    }
    if let Some(checkpoint) = next.next() {
        return Err(FileError::Short {
            path: shown,
            lines: chain.lines,
            expected: checkpoint.lines,
            seq: checkpoint.seq,
        });
    }
    Ok(chain.lines)
}

/// Hashes a file's bytes and checks the hash at each checkpoint's offset and, once finalized,
/// over the whole file.
fn verify_bytes(path: &Path, anchors: &FileAnchors) -> Result<(), FileError> {
    let shown = path.display().to_string();
    let unreadable = |error: std::io::Error| FileError::Unreadable {
        path: path.display().to_string(),
        why: error.to_string(),
    };
    let mut points: Vec<(&ByteCheckpoint, &'static str)> = anchors
        .checkpoints
        .iter()
        .map(|checkpoint| (checkpoint, RECORDING_CHECKPOINT))
        .collect();
    if let Some(finalized) = &anchors.finalized {
        points.push((finalized, RECORDING_FINALIZED));
    }
    points.sort_by_key(|(checkpoint, _)| (checkpoint.offset, checkpoint.seq));
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(unreadable)?);
    let mut hasher = Sha256::new();
    let (mut read, mut lines) = (0u64, 0u64);
    let (mut good_offset, mut good_lines) = (0u64, 0u64);
    let mut buffer = vec![0u8; 64 * 1024];
    for (checkpoint, event) in points {
        while read < checkpoint.offset {
            let want = (checkpoint.offset - read).min(buffer.len() as u64) as usize;
            let got = file.read(&mut buffer[..want]).map_err(unreadable)?;
            if got == 0 {
                return Err(FileError::Cut {
                    path: shown,
                    size: read,
                    expected: checkpoint.offset,
                    event,
                    seq: checkpoint.seq,
                });
            }
            hasher.update(&buffer[..got]);
            lines += buffer[..got].iter().filter(|byte| **byte == b'\n').count() as u64;
            read += got as u64;
        }
        if hex::encode(hasher.clone().finalize()) != checkpoint.sha256 {
            return Err(FileError::Bytes {
                path: shown,
                from: good_offset,
                to: checkpoint.offset,
                first_line: good_lines + 1,
                last_line: lines.max(good_lines + 1),
                event,
                seq: checkpoint.seq,
            });
        }
        (good_offset, good_lines) = (checkpoint.offset, lines);
    }
    if let Some(finalized) = &anchors.finalized {
        // Nothing may follow the final hash.
        let mut rest = Vec::new();
        file.read_to_end(&mut rest).map_err(unreadable)?;
        if !rest.is_empty() {
            return Err(FileError::Bytes {
                path: shown,
                from: finalized.offset,
                to: finalized.offset + rest.len() as u64,
                first_line: lines + 1,
                last_line: lines + rest.iter().filter(|byte| **byte == b'\n').count() as u64,
                event: RECORDING_FINALIZED,
                seq: finalized.seq,
            });
        }
    }
    Ok(())
}
