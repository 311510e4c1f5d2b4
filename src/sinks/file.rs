//! The file sink: JSON lines, one event a line, in `audit-YYYY-MM-DD.jsonl` by the event's UTC
//! date (so a file rotates at UTC midnight), synced to disk before the cursor moves past a
//! batch. For log shippers (Vector, Fluent Bit, Filebeat), which tail such files.
//!
//! At least once: a crash between the sync and the cursor's move sends the batch again, and its
//! lines appear twice with the same `id`. The chain head (`{"type": "chain.head", "seq",
//! "hash", "ts"}`) is written with the first batch after a start and then at least hourly, so
//! someone who trusts only these files can tell that the bastion's store was cut or rewritten.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::{Date, OffsetDateTime};

use super::{Batch, SinkError};
use crate::config::SinkFormat;

/// How often the chain head is written at the least.
const HEAD_EVERY: Duration = Duration::from_secs(3600);

pub(super) struct FileSink {
    state: Arc<Mutex<State>>,
}

struct State {
    dir: PathBuf,
    format: SinkFormat,
    /// The day file open for appending.
    open: Option<(Date, std::fs::File)>,
    /// When the chain head was last written (bastion clock).
    head_written: Option<OffsetDateTime>,
}

impl FileSink {
    pub(super) fn new(dir: PathBuf, format: SinkFormat) -> FileSink {
        FileSink {
            state: Arc::new(Mutex::new(State {
                dir,
                format,
                open: None,
                head_written: None,
            })),
        }
    }

    /// Appends the batch and syncs what it touched.
    pub(super) async fn deliver(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let state = self.state.clone();
        let batch = batch.clone();
        tokio::task::spawn_blocking(move || {
            let mut state = state
                .lock()
                .map_err(|_| SinkError::Io("the file sink's state is poisoned".to_string()))?;
            state.write(&batch)
        })
        .await
        .map_err(|error| SinkError::Io(error.to_string()))?
    }
}

impl State {
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let mut lines: Vec<(Date, Vec<u8>)> = Vec::with_capacity(batch.events.len() + 1);
        for event in &batch.events {
            let mut line = serde_json::to_vec(&event.render(self.format))
                .map_err(|error| SinkError::Io(error.to_string()))?;
            line.push(b'\n');
            lines.push((event.at().date(), line));
        }
        let head_due = self
            .head_written
            .is_none_or(|written| batch.now - written >= HEAD_EVERY);
        if head_due && let Some(head) = &batch.head {
            let mut line = serde_json::to_vec(&head.render(self.format, batch.now))
                .map_err(|error| SinkError::Io(error.to_string()))?;
            line.push(b'\n');
            lines.push((batch.now.date(), line));
        }
        for (day, line) in &lines {
            let file = self.file(*day)?;
            // A write that fails partway is cut back, so the batch sent again starts on a line
            // of its own (issue #18 review: a torn line swallowed the resent one).
            let before = file.metadata().map(|metadata| metadata.len());
            if let Err(error) = file.write_all(line) {
                if let Ok(length) = before {
                    let _ = file.set_len(length);
                }
                return Err(self.io("write to", *day, error));
            }
        }
        if let Some((day, file)) = &self.open {
            let day = *day;
            file.sync_data()
                .map_err(|error| self.io("sync", day, error))?;
        }
        if head_due && batch.head.is_some() {
            self.head_written = Some(batch.now);
        }
        Ok(())
    }

    /// The file of `day`, open for appending; the previous day's is synced and closed.
    fn file(&mut self, day: Date) -> Result<&mut std::fs::File, SinkError> {
        if self.open.as_ref().is_none_or(|(open, _)| *open != day) {
            if let Some((previous, file)) = self.open.take() {
                file.sync_data()
                    .map_err(|error| self.io("sync", previous, error))?;
            }
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|error| {
                    SinkError::Io(format!("cannot create {}: {error}", self.dir.display()))
                })?;
            // Readable by the bastion's user only, like recordings: they hold SQL and paths.
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(self.path(day))
                .map_err(|error| self.io("open", day, error))?;
            self.open = Some((day, file));
        }
        match &mut self.open {
            Some((_, file)) => Ok(file),
            None => Err(SinkError::Io("no file open".to_string())),
        }
    }

    fn path(&self, day: Date) -> PathBuf {
        self.dir.join(format!(
            "audit-{:04}-{:02}-{:02}.jsonl",
            day.year(),
            u8::from(day.month()),
            day.day()
        ))
    }

    fn io(&self, what: &str, day: Date, error: std::io::Error) -> SinkError {
        SinkError::Io(format!(
            "cannot {what} {}: {error}",
            self.path(day).display()
        ))
    }
}
