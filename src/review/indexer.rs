//! The search indexer (issue #19): a background task that reads the recordings and the audit
//! log as they are written and fills the search index (`store::search`).
//!
//! It reads the files, not the relay: a session never waits for it, and whatever it misses (a
//! crash, a restart) it reads again from the offset it committed with its last batch. Terminal
//! recordings go through asciinema's emulator (`recording::screen`), so the index holds the text
//! a reviewer would have seen (lines as they scroll off, then the final screen), and their `m`
//! markers as commands; query logs give their statements; `file.operation` records their paths.
//! Recordings are flushed each second and indexed each second, so a session is searchable
//! within about two seconds of its output.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::access::Access;
use crate::recording::screen::Screen;
use crate::store::search::{Batch, Entry, EntryKind, SearchIndex, Source};
use crate::store::{Store, StoreError};

/// How often the indexer looks for new output when it has caught up.
const INTERVAL: Duration = Duration::from_secs(1);

/// Bytes read from one file in one pass, and from all files: a batch stays a short
/// transaction, and a pass that hit the budget runs again at once.
const FILE_BUDGET: u64 = 8 << 20;
const PASS_BUDGET: u64 = 32 << 20;

/// Text of one entry, at most; longer lines become several entries that overlap by `OVERLAP`,
/// so a searched string up to that long is found across a cut.
const MAX_ENTRY: usize = 4096;
const OVERLAP: usize = 256;

const RECORDINGS_CURSOR: &str = "recordings";
const FILE_OPERATIONS_CURSOR: &str = "file-operations";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// Runs passes until shutdown; errors are logged and retried on the next pass.
pub async fn run(access: Access, index: SearchIndex, mut shutdown: watch::Receiver<bool>) {
    let mut indexer = Some(Indexer::new(access.store().clone(), index));
    loop {
        let Some(mut worker) = indexer.take() else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || {
            let result = worker.pass();
            (worker, result)
        })
        .await;
        let more = match done {
            Ok((worker, result)) => {
                indexer = Some(worker);
                match result {
                    Ok(more) => more,
                    Err(error) => {
                        tracing::warn!(%error, "search indexing failed; retrying");
                        false
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "the search indexer stopped");
                return;
            }
        };
        if *shutdown.borrow() {
            return;
        }
        if !more {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = tokio::time::sleep(INTERVAL) => {}
            }
        }
    }
}

/// The indexer's state between passes: the emulator of each terminal recording being read.
pub struct Indexer {
    store: Store,
    index: SearchIndex,
    open: Option<BTreeMap<(String, u32), Source>>,
    screens: BTreeMap<(String, u32), CastReader>,
}

impl Indexer {
    pub fn new(store: Store, index: SearchIndex) -> Indexer {
        Indexer {
            store,
            index,
            open: None,
            screens: BTreeMap::new(),
        }
    }

    /// One pass over new recordings, grown files and new file operations, committed as one
    /// batch. True when a budget cut it short, so another pass should follow at once.
    pub fn pass(&mut self) -> Result<bool, IndexError> {
        let result = self.pass_once();
        if result.is_err() {
            // Nothing of the pass was committed, but emulators moved on: start again from the
            // committed offsets, or lines would be indexed twice.
            self.open = None;
            self.screens.clear();
        }
        result
    }

    fn pass_once(&mut self) -> Result<bool, IndexError> {
        let mut batch = Batch::default();
        let open = match self.open.take() {
            Some(open) => open,
            None => self
                .index
                .open_sources()?
                .into_iter()
                .map(|source| ((source.session_id.clone(), source.channel), source))
                .collect(),
        };
        let mut open = open;

        let cursor = self.index.cursor(RECORDINGS_CURSOR)?;
        let new = self.store.read(|tx| tx.recordings_after(cursor, 1000))?;
        if let Some((last, _)) = new.last() {
            batch.cursors.push((RECORDINGS_CURSOR, *last));
        }
        let mut added = std::collections::BTreeSet::new();
        for (_, row) in new {
            added.insert((row.session_id.clone(), row.channel));
            let source = Source {
                session_id: row.session_id,
                channel: row.channel,
                path: row.path.into(),
                offset: 0,
                done: false,
            };
            open.insert((source.session_id.clone(), source.channel), source);
        }

        let mut budget = PASS_BUDGET;
        let mut more = false;
        let keys: Vec<(String, u32)> = open.keys().cloned().collect();
        for key in keys {
            if budget == 0 {
                more = true;
                break;
            }
            let Some(source) = open.get_mut(&key) else {
                continue;
            };
            let before = source.clone();
            let read = self.read_source(source, budget.min(FILE_BUDGET), &mut batch.entries)?;
            budget = budget.saturating_sub(read);
            if read == FILE_BUDGET {
                more = true;
            }
            if *source != before || added.contains(&key) {
                batch.sources.push(source.clone());
            }
            if source.done {
                open.remove(&key);
                self.screens.remove(&key);
            }
        }

        let seq = self.index.cursor(FILE_OPERATIONS_CURSOR)?;
        let operations = self.store.read(|tx| tx.file_operations_after(seq, 1000))?;
        if let Some((last, ..)) = operations.last() {
            batch.cursors.push((FILE_OPERATIONS_CURSOR, *last));
            more |= operations.len() == 1000;
        }
        for (_, session_id, seconds, detail) in operations {
            let Ok(detail) = serde_json::from_str::<Value>(&detail) else {
                continue;
            };
            for field in ["path", "to"] {
                if let Some(path) = detail[field].as_str() {
                    push_entries(
                        &mut batch.entries,
                        &session_id,
                        0,
                        EntryKind::File,
                        seconds.saturating_mul(1000),
                        path,
                    );
                }
            }
        }

        self.index.commit(&batch)?;
        self.open = Some(open);
        Ok(more)
    }

    /// Reads what `source` gained (whole lines only, at most `budget` bytes) into entries;
    /// marks it done once its recording is finalized and wholly read. Returns the bytes read.
    fn read_source(
        &mut self,
        source: &mut Source,
        budget: u64,
        entries: &mut Vec<Entry>,
    ) -> Result<u64, IndexError> {
        let finalized = self
            .store
            .read(|tx| tx.recordings(&source.session_id))?
            .into_iter()
            .any(|row| row.channel == source.channel && row.sha256.is_some());
        let key = (source.session_id.clone(), source.channel);
        let cast = source.path.extension().is_some_and(|ext| ext == "cast");
        if cast && !self.screens.contains_key(&key) {
            // A restart: the emulator state is rebuilt from what was indexed before, a chunk at
            // a time.
            let mut reader = CastReader::default();
            let mut at = 0;
            while at < source.offset {
                let end = source.offset.min(at + FILE_BUDGET);
                let chunk = read_range(&source.path, at, end)?;
                let whole = match chunk.iter().rposition(|byte| *byte == b'\n') {
                    Some(last) => last + 1,
                    None => chunk.len(),
                };
                for line in chunk[..whole].split(|byte| *byte == b'\n') {
                    reader.line(line, &mut Vec::new(), source);
                }
                at += whole.max(1) as u64;
            }
            // Those lines were indexed before the restart.
            reader.block.clear();
            self.screens.insert(key.clone(), reader);
        }
        let size = match std::fs::metadata(&source.path) {
            Ok(metadata) => metadata.len(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // Removed (retention, or by hand): nothing more to read.
                source.done = finalized;
                return Ok(0);
            }
            Err(source_error) => {
                return Err(IndexError::Read {
                    path: source.path.display().to_string(),
                    source: source_error,
                });
            }
        };
        let end = size.min(source.offset.saturating_add(budget));
        let bytes = if end > source.offset {
            read_range(&source.path, source.offset, end)?
        } else {
            Vec::new()
        };
        // Only whole lines: the writer may have flushed half of one.
        let whole = bytes
            .iter()
            .rposition(|byte| *byte == b'\n')
            .map_or(0, |last| last + 1);
        if whole == 0 && bytes.len() as u64 == budget && budget == FILE_BUDGET {
            // One line longer than a pass reads (a huge statement): skipped, not stuck on.
            let skipped = skip_line(&source.path, source.offset + budget, size)?;
            tracing::warn!(session = %source.session_id, bytes = skipped - source.offset,
                "search index: a recording line too long to index was skipped");
            source.offset = skipped;
            return Ok(budget);
        }
        let mut statements = Block::of(EntryKind::Statement);
        for line in bytes[..whole].split(|byte| *byte == b'\n') {
            if line.is_empty() {
                continue;
            }
            if cast {
                if let Some(reader) = self.screens.get_mut(&key) {
                    reader.line(line, entries, source);
                }
            } else {
                statement(line, &mut statements, entries, source);
            }
        }
        // Every pass ends its blocks: the offset is committed past their lines.
        statements.flush(entries, source);
        source.offset += whole as u64;
        if finalized && source.offset >= size {
            if let Some(reader) = self.screens.remove(&key) {
                reader.finish(entries, source);
            }
            source.done = true;
        } else if let Some(reader) = self.screens.get_mut(&key) {
            reader.flush(entries, source);
        }
        Ok(whole as u64)
    }
}

/// One terminal recording read line by line: its emulator, the time of the last event, and
/// the screen lines not yet in an entry.
#[derive(Default)]
struct CastReader {
    screen: Option<Screen>,
    /// The header was read.
    started: bool,
    /// Output bytes fed to the emulator, and bytes of screen text it gave, to tell output
    /// made to be costly: to render, or in text (a few bytes that repaint a whole screen).
    fed: u64,
    emitted: u64,
    /// Prints output's text once it is no longer rendered.
    stripper: crate::recording::screen::Stripper,
    /// Whether the channel had a pty (its header names a terminal type): output without one
    /// ends lines with LF alone, which a terminal needs as CR LF.
    pty: bool,
    at_ms: i64,
    block: Block,
    /// When a full-screen program's screen was last taken, and a hash of what it showed.
    alternate_at: Option<i64>,
    alternate_seen: u64,
}

/// While a full-screen program shows (an editor, `less`, `tmux`), its screen is indexed every
/// this many milliseconds of the recording when it changed: a session lived inside `tmux`
/// scrolls nothing off the primary screen (issue #19 review).
const ALTERNATE_EVERY_MS: i64 = 5_000;

/// Screen lines are indexed in blocks of about this many bytes, each line with its time: with
/// a row per line the index was 6.9 times the size of the output and indexing ran at 1.6 MB/s;
/// blocks of 2 KiB gave 3.4 times and 5.7 MB/s, 8 KiB 1.9 and 7.9 MB/s, 32 KiB 1.7 and
/// 11.2 MB/s (`bench/review.sh`, 50 MB): the words a log repeats share a row's trigrams.
const BLOCK: usize = 32768;

impl CastReader {
    fn line(&mut self, line: &[u8], entries: &mut Vec<Entry>, source: &Source) {
        let Ok(value) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        if !self.started {
            // The header.
            self.started = true;
            let width = value["width"].as_u64().unwrap_or(80) as u32;
            let height = value["height"].as_u64().unwrap_or(24) as u32;
            self.pty = value["env"]["TERM"].is_string();
            self.screen = Some(Screen::new(width, height, true));
            return;
        }
        let (Some(at), Some(code), Some(data)) =
            (value[0].as_f64(), value[1].as_str(), value[2].as_str())
        else {
            return;
        };
        self.at_ms = (at * 1000.0) as i64;
        if code == "m" {
            // A command, rendered or not.
            push_entries(
                entries,
                &source.session_id,
                source.channel,
                EntryKind::Command,
                self.at_ms,
                data,
            );
            return;
        }
        let too_much_text = self.emitted > self.fed.saturating_mul(8) + (4 << 20);
        if self
            .screen
            .as_ref()
            .is_some_and(|screen| too_much_text || screen.too_costly_for(self.fed))
        {
            // From here on its output is indexed as the text it holds, without rendering.
            if let Some(screen) = self.screen.take() {
                let lines = screen.finish();
                self.screen_lines(lines, entries, source);
            }
        }
        let Some(screen) = self.screen.as_mut() else {
            if code == "o" {
                let lines = self
                    .stripper
                    .strip(data)
                    .split('\n')
                    .map(str::to_string)
                    .collect();
                self.screen_lines(lines, entries, source);
            }
            return;
        };
        if code == "o" {
            self.fed += data.len() as u64;
        }
        let lines = match code {
            "o" if self.pty => screen.feed(data),
            "o" => screen.feed(&data.replace("\r\n", "\n").replace('\n', "\r\n")),
            "r" => {
                let (width, height) = crate::review::replay::parse_size(data);
                screen.resize(width, height)
            }
            _ => return,
        };
        self.screen_lines(lines, entries, source);
        self.alternate_snapshot(entries, source);
    }

    fn alternate_snapshot(&mut self, entries: &mut Vec<Entry>, source: &Source) {
        let due = self
            .alternate_at
            .is_none_or(|at| self.at_ms - at >= ALTERNATE_EVERY_MS);
        if !due {
            return;
        }
        let Some(lines) = self.screen.as_ref().and_then(Screen::alternate_text) else {
            self.alternate_at = None;
            return;
        };
        self.alternate_at = Some(self.at_ms);
        let seen = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            lines.hash(&mut hasher);
            hasher.finish()
        };
        if seen != self.alternate_seen {
            self.alternate_seen = seen;
            self.screen_lines(lines, entries, source);
        }
    }

    fn screen_lines(&mut self, lines: Vec<String>, entries: &mut Vec<Entry>, source: &Source) {
        for line in lines {
            self.emitted += line.len() as u64 + 1;
            if !line.trim().is_empty() {
                self.block.push(self.at_ms, &line, entries, source);
            }
        }
    }

    /// The pending screen lines as one entry. Called at the end of every pass, since the
    /// source's offset is committed past them.
    fn flush(&mut self, entries: &mut Vec<Entry>, source: &Source) {
        self.block.flush(entries, source);
    }

    fn finish(mut self, entries: &mut Vec<Entry>, source: &Source) {
        if let Some(screen) = self.screen.take() {
            let lines = screen.finish();
            self.screen_lines(lines, entries, source);
        }
        self.flush(entries, source);
    }
}

/// Lines of one kind waiting to become one entry: each line with its time, the entry cut at
/// about `BLOCK` bytes.
struct Block {
    kind: EntryKind,
    lines: Vec<(i64, String)>,
    bytes: usize,
}

impl Default for Block {
    fn default() -> Self {
        Block::of(EntryKind::Screen)
    }
}

impl Block {
    fn of(kind: EntryKind) -> Block {
        Block {
            kind,
            lines: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds a line (in pieces of at most `MAX_ENTRY` when longer), flushing a full block.
    fn push(&mut self, at_ms: i64, line: &str, entries: &mut Vec<Entry>, source: &Source) {
        let mut pieces = Vec::new();
        push_entries(&mut pieces, "", 0, self.kind, at_ms, line);
        for piece in pieces {
            self.bytes += piece.text.len() + 1;
            self.lines.push((at_ms, piece.text));
            if self.bytes >= BLOCK {
                self.flush(entries, source);
            }
        }
    }

    fn flush(&mut self, entries: &mut Vec<Entry>, source: &Source) {
        let lines = std::mem::take(&mut self.lines);
        self.bytes = 0;
        let Some((first, _)) = lines.first() else {
            return;
        };
        let first = *first;
        let line_ms = lines.iter().map(|(at, _)| at - first).collect();
        let text: Vec<String> = lines.into_iter().map(|(_, line)| line).collect();
        entries.push(Entry {
            session_id: source.session_id.clone(),
            channel: source.channel,
            kind: self.kind,
            at_ms: first,
            text: text.join("\n"),
            line_ms,
        });
    }

    fn clear(&mut self) {
        self.lines.clear();
        self.bytes = 0;
    }
}

/// A query log line: its statement, on one line (its line breaks as spaces), into `block`. A
/// session under `pgbench` runs 20,000 statements a second: a row each would be 20,000 rows
/// of the index a second.
fn statement(line: &[u8], block: &mut Block, entries: &mut Vec<Entry>, source: &Source) {
    let Ok(value) = serde_json::from_slice::<Value>(line) else {
        return;
    };
    let (Some(at), Some(sql)) = (value["t"].as_f64(), value["sql"].as_str()) else {
        return;
    };
    let flat: String = sql
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    block.push((at * 1000.0) as i64, &flat, entries, source);
}

/// `text` as one entry, or as overlapping pieces when longer than `MAX_ENTRY`.
fn push_entries(
    entries: &mut Vec<Entry>,
    session_id: &str,
    channel: u32,
    kind: EntryKind,
    at_ms: i64,
    text: &str,
) {
    let mut start = 0;
    loop {
        let mut end = (start + MAX_ENTRY).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        entries.push(Entry {
            session_id: session_id.to_string(),
            channel,
            kind,
            at_ms,
            text: text[start..end].to_string(),
            line_ms: Vec::new(),
        });
        if end >= text.len() {
            return;
        }
        let mut next = end.saturating_sub(OVERLAP).max(start + 1);
        while !text.is_char_boundary(next) {
            next += 1;
        }
        start = next;
    }
}

/// Where the line going on at `from` ends (past its newline), or `size`.
fn skip_line(path: &Path, mut from: u64, size: u64) -> Result<u64, IndexError> {
    while from < size {
        let end = size.min(from + FILE_BUDGET);
        let chunk = read_range(path, from, end)?;
        if let Some(newline) = chunk.iter().position(|byte| *byte == b'\n') {
            return Ok(from + newline as u64 + 1);
        }
        from = end;
    }
    Ok(size)
}

fn read_range(path: &Path, from: u64, to: u64) -> Result<Vec<u8>, IndexError> {
    let error = |source| IndexError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(error)?;
    file.seek(SeekFrom::Start(from)).map_err(error)?;
    let mut bytes = Vec::with_capacity(to.saturating_sub(from) as usize);
    file.take(to.saturating_sub(from))
        .read_to_end(&mut bytes)
        .map_err(error)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_into_overlapping_entries_that_keep_every_substring() {
        let text: String = (0..20_000)
            .map(|n| char::from(b'a' + (n % 26) as u8))
            .collect();
        let text = format!("{text}ключ{text}");
        let mut entries = Vec::new();
        push_entries(&mut entries, "s", 0, EntryKind::Screen, 0, &text);
        assert!(entries.len() > 1);
        assert!(entries.iter().all(|entry| entry.text.len() <= MAX_ENTRY));
        for needle in ["xyzabc", "ключ", &text[MAX_ENTRY - 100..MAX_ENTRY + 100]] {
            assert!(
                entries.iter().any(|entry| entry.text.contains(needle)),
                "{needle}"
            );
        }
    }
}

#[cfg(test)]
mod source_tests {
    use super::*;
    use crate::store::{RecordingRow, SessionRow};

    /// Issue #19 review: a query-log line longer than a pass reads (a huge statement) is
    /// skipped, and what follows it is indexed; the source does not stall on it.
    #[test]
    fn a_line_longer_than_a_pass_is_skipped_not_stuck_on() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("portcullis.db"))?;
        let index = SearchIndex::open(&dir.path().join("index.sqlite"))?;
        let path = dir.path().join("s-aaaaaaaa.pg.jsonl");
        let huge = "x".repeat(FILE_BUDGET as usize + 100);
        let text = format!(
            "{{\"t\":0.1,\"sql\":\"{huge}\"}}\n{{\"t\":0.2,\"sql\":\"select 'after-the-huge-one'\"}}\n"
        );
        std::fs::write(&path, &text)?;
        let now = time::OffsetDateTime::now_utc();
        store.write(|tx| {
            tx.insert_session(&SessionRow {
                id: "s-aaaaaaaa".into(),
                grant_id: None,
                user: "alice".into(),
                target: "prod-db".into(),
                protocol: "postgres".into(),
                client_address: String::new(),
                started_at: now,
                ended_at: None,
                end_reason: None,
                bytes_in: 0,
                bytes_out: 0,
                statements: 0,
            })?;
            tx.insert_recording(
                &RecordingRow {
                    session_id: "s-aaaaaaaa".into(),
                    channel: 0,
                    kind: crate::recording::QUERY_LOG_KIND.into(),
                    path: path.display().to_string(),
                    sha256: None,
                    size: None,
                },
                now,
            )?;
            tx.finalize_recording("s-aaaaaaaa", 0, "00", text.len() as u64, now)
        })?;
        let mut indexer = Indexer::new(store, index.clone());
        for _ in 0..5 {
            indexer.pass()?;
        }
        assert_eq!(index.search("after-the-huge-one", 10, None)?.len(), 1);
        assert!(index.open_sources()?.is_empty(), "the source is done");
        Ok(())
    }
}
