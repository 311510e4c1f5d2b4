//! Audit sinks (issue #18): the activity log leaves the box.
//!
//! Each configured sink has a task and a durable cursor in the store: the seq of the last audit
//! record it holds. The task reads the chain after its cursor in batches, turns each record into
//! what the sink gets (a control event; for a `pg.checkpoint`, the query-log lines it anchors,
//! one statement event each), hands the batch to the sink, and only once the sink has it moves
//! the cursor. So delivery is in order, survives restarts and `kill -9` (a batch cut short is
//! sent again: at least once, every event with a stable id), and a sink that is down holds only
//! its own cursor: sessions, approvals and the relay never wait for it. A failing batch is
//! retried with backoff and jitter, its error kept for `portcullis audit sinks`.
//!
//! Statements are read from the query logs, not from the chain: the checkpoint says which lines
//! are anchored, and those lines were flushed before it was committed.

mod archive;
mod file;
mod ocsf;
pub mod postgres;
mod webhook;

use std::collections::HashMap;
use std::io::{BufRead, Seek};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::access::Access;
use crate::audit::AuditRecord;
use crate::clock::rfc3339;
use crate::config::{SinkConfig, SinkFormat, SinkKind};
use crate::store::StoreError;

/// Audit records read a batch.
const BATCH: u32 = 256;
/// Statement text a batch takes before it ends early (one checkpoint's lines always go whole).
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How often a sink with nothing to send looks again.
const POLL: Duration = Duration::from_millis(500);
/// How long a sink may take with one batch before it counts as failed (and is retried).
const DELIVER_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest wait between retries of a failing batch.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One event as a sink gets it.
#[derive(Debug, Clone)]
pub enum SinkEvent {
    /// A record of the audit chain.
    Control(AuditRecord),
    /// A line of a query log.
    Statement(StatementEvent),
}

/// A query-log line with the session it belongs to.
#[derive(Debug, Clone)]
pub struct StatementEvent {
    pub session_id: String,
    /// 1-based line number in the session's query log.
    pub line: u64,
    pub user: String,
    pub target: String,
    /// When it started: the session's start plus the line's `t`.
    pub at: OffsetDateTime,
    /// The line as written, without its line end. Parsed only by the sinks that need the
    /// fields (a parsed copy per statement cost most of a batch's memory).
    pub text: String,
}

impl StatementEvent {
    /// The line as written, parsed (it was checked against its chain, so it parses).
    pub fn record(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| Value::String(self.text.clone()))
    }
}

/// The one field of a query-log line the runner reads.
#[derive(serde::Deserialize)]
struct LineTime {
    t: Option<f64>,
}

impl SinkEvent {
    /// A stable id: the audit record's, or `<session>:<line>`; a redelivered event has the same.
    pub fn id(&self) -> String {
        match self {
            SinkEvent::Control(record) => record.id.clone(),
            SinkEvent::Statement(statement) => {
                format!("{}:{}", statement.session_id, statement.line)
            }
        }
    }

    pub fn at(&self) -> OffsetDateTime {
        match self {
            SinkEvent::Control(record) => record.ts,
            SinkEvent::Statement(statement) => statement.at,
        }
    }

    /// The event as a sink of `format` writes it.
    pub fn render(&self, format: SinkFormat) -> Value {
        match format {
            SinkFormat::Json => self.to_json(),
            SinkFormat::Ocsf => ocsf::event(self),
        }
    }

    /// The documented JSON form (docs/AUDIT-FORMAT.md, "Sinks").
    pub fn to_json(&self) -> Value {
        match self {
            SinkEvent::Control(record) => crate::views::audit_json(record),
            SinkEvent::Statement(statement) => json!({
                "type": "pg.statement",
                "id": self.id(),
                "ts": rfc3339(statement.at),
                "session_id": statement.session_id,
                "line": statement.line,
                "actor": statement.user,
                "target": statement.target,
                "statement": statement.record(),
            }),
        }
    }
}

/// The chain head when a batch was read, sent along so an outside reader can tell that the
/// local store was cut or rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
}

impl ChainHead {
    /// The file sink's `chain.head` line, stamped `now`.
    pub fn render(&self, format: SinkFormat, now: OffsetDateTime) -> Value {
        match format {
            SinkFormat::Json => json!({
                "type": "chain.head",
                "seq": self.seq,
                "hash": self.hash,
                "ts": rfc3339(now),
            }),
            SinkFormat::Ocsf => ocsf::chain_head(self, now),
        }
    }
}

/// What a batch carries: the events, the seq the cursor moves to once they are held, the head.
#[derive(Debug, Clone)]
pub struct Batch {
    pub events: Vec<SinkEvent>,
    /// The first audit seq of the batch, and the last.
    pub from: i64,
    pub up_to: i64,
    pub head: Option<ChainHead>,
    /// The bastion's clock when it was read.
    pub now: OffsetDateTime,
}

/// Why a sink could not take a batch; kept as its last error.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Io(String),
    #[error("cannot read the audit store: {0}")]
    Store(#[from] StoreError),
    #[error("query log of {session}: {why}")]
    QueryLog { session: String, why: String },
    /// The sink refuses this batch for good (a webhook's 4xx): not retried.
    #[error("{0}; not retried: the sink holds at this batch")]
    Refused(String),
}

/// Starts one task per configured sink; each stops when `shutdown` turns true.
pub fn start(access: &Access, shutdown: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
    access
        .config()
        .audit
        .sinks
        .iter()
        .map(|config| {
            let runner = Runner {
                access: access.clone(),
                sink: Sink::new(access, config),
                config: config.clone(),
                logs: HashMap::new(),
                pending: None,
            };
            tokio::spawn(runner.run(shutdown.clone()))
        })
        .collect()
}

/// A sink's destination.
enum Sink {
    Archive(Box<archive::ArchiveSink>),
    File(file::FileSink),
    Postgres(Box<postgres::PostgresSink>),
    Webhook(Box<webhook::WebhookSink>),
}

impl Sink {
    fn new(access: &Access, config: &SinkConfig) -> Sink {
        match &config.kind {
            SinkKind::Archive(target) => {
                Sink::Archive(Box::new(archive::ArchiveSink::new(access, target)))
            }
            SinkKind::File { dir } => Sink::File(file::FileSink::new(dir.clone(), config.format)),
            SinkKind::Webhook {
                url,
                secret,
                headers,
                authorization,
            } => Sink::Webhook(Box::new(webhook::WebhookSink::new(
                &config.name,
                config.format,
                url,
                secret,
                headers,
                authorization.as_ref(),
            ))),
            SinkKind::Postgres { url, ca_file } => Sink::Postgres(Box::new(
                postgres::PostgresSink::new(url.clone(), ca_file.clone()),
            )),
        }
    }

    async fn deliver(&mut self, batch: &Batch) -> Result<(), SinkError> {
        match self {
            Sink::Archive(archive) => archive.deliver(batch).await,
            Sink::File(file) => file.deliver(batch).await,
            Sink::Postgres(database) => database.deliver(batch).await,
            Sink::Webhook(webhook) => webhook.deliver(batch).await,
        }
    }
}

/// Where the runner last stopped reading a session's query log, so the next checkpoint's lines
/// are read from there.
#[derive(Debug, Clone)]
struct LogPosition {
    lines: u64,
    offset: u64,
    /// The line chain up to here: lines are checked before they are sent, so a log changed on
    /// disk while a sink lagged is not shipped as if it were the record (issue #18 review).
    chain: crate::recording::querylog::LineChain,
}

struct Runner {
    access: Access,
    config: SinkConfig,
    sink: Sink,
    logs: HashMap<String, LogPosition>,
    /// The batch being delivered: a retry sends the same batch (same events, same id), not
    /// whatever the chain holds by then.
    pending: Option<Batch>,
}

impl Runner {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let wait = match self.step().await {
                Ok(true) => {
                    failures = 0;
                    continue;
                }
                Ok(false) => {
                    failures = 0;
                    POLL
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let refused = matches!(error, SinkError::Refused(_));
                    let why = error.to_string();
                    tracing::warn!(sink = %self.config.name, error = %why, "audit sink failed");
                    let (access, name) = (self.access.clone(), self.config.name.clone());
                    let _ = tokio::task::spawn_blocking(move || {
                        let now = access.now();
                        if refused && let Err(error) = access.sink_refused(&name, &why) {
                            tracing::error!(%error, "cannot audit a refused sink batch");
                        }
                        access.store().write(|tx| tx.sink_failed(&name, &why, now))
                    })
                    .await;
                    if refused {
                        // Held until a restart: sending it again would be refused again.
                        let _ = shutdown.wait_for(|stop| *stop).await;
                        return;
                    }
                    backoff(failures)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Reads and delivers one batch; `Ok(true)` when there may be more right away.
    async fn step(&mut self) -> Result<bool, SinkError> {
        if self.pending.is_none() {
            self.pending = self.read_batch().await?;
        }
        let Some(batch) = &self.pending else {
            return Ok(false);
        };
        match tokio::time::timeout(DELIVER_TIMEOUT, self.sink.deliver(batch)).await {
            Ok(delivered) => delivered?,
            Err(_) => {
                return Err(SinkError::Io(
                    "the sink took too long; retrying".to_string(),
                ));
            }
        }
        let Some(batch) = self.pending.take() else {
            return Ok(false);
        };
        let (access, name, up_to) = (self.access.clone(), self.config.name.clone(), batch.up_to);
        tokio::task::spawn_blocking(move || {
            let now = access.now();
            access
                .store()
                .write(|tx| tx.advance_sink(&name, up_to, now))
        })
        .await
        .map_err(|error| SinkError::Io(error.to_string()))??;
        Ok(true)
    }

    /// The next batch after the sink's cursor, `None` when it holds everything.
    async fn read_batch(&mut self) -> Result<Option<Batch>, SinkError> {
        let access = self.access.clone();
        let name = self.config.name.clone();
        let events = self.config.events;
        let mut logs = std::mem::take(&mut self.logs);
        let read = tokio::task::spawn_blocking(move || {
            let batch = read_batch(&access, &name, events, &mut logs);
            (batch, logs)
        })
        .await
        .map_err(|error| SinkError::Io(error.to_string()))?;
        self.logs = read.1;
        read.0
    }
}

/// Reads the records after the sink's cursor and expands checkpoints into their statements.
fn read_batch(
    access: &Access,
    name: &str,
    streams: crate::config::SinkEvents,
    logs: &mut HashMap<String, LogPosition>,
) -> Result<Option<Batch>, SinkError> {
    let store = access.store();
    let (records, head) = store.read(|tx| {
        let cursor = tx.sink_cursor(name)?;
        Ok((tx.audit_after(cursor.seq, BATCH)?, tx.audit_head()?))
    })?;
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(None);
    };
    let from = first.seq;
    let mut up_to = last.seq;
    let (mut events, mut bytes) = (Vec::new(), 0usize);
    for record in records {
        // A batch ends once its statements pass the budget (issue #18 review: 256 checkpoints
        // of large statements held in memory at once); the rest comes in the next batch.
        if bytes > BATCH_BYTES {
            break;
        }
        up_to = record.seq;
        if streams.statements && record.event_type == crate::audit::types::PG_CHECKPOINT {
            let lines = statements(access, &record, logs)?;
            bytes += lines
                .iter()
                .map(|event| match event {
                    SinkEvent::Statement(statement) => statement.text.len(),
                    SinkEvent::Control(_) => 0,
                })
                .sum::<usize>();
            events.extend(lines);
        }
        // A finished session's place in its query log is not needed again (a checkpoint after
        // this would only read the log from the start): the map does not grow without bound.
        if record.event_type == crate::audit::types::SESSION_ENDED
            && let Some(session) = &record.session_id
        {
            logs.remove(session);
        }
        if streams.control {
            events.push(SinkEvent::Control(record));
        }
    }
    Ok(Some(Batch {
        events,
        from,
        up_to,
        head: head.map(|(seq, hash)| ChainHead { seq, hash }),
        now: access.now(),
    }))
}

/// The query-log lines a `pg.checkpoint` anchors that the one before it did not.
fn statements(
    access: &Access,
    checkpoint: &AuditRecord,
    logs: &mut HashMap<String, LogPosition>,
) -> Result<Vec<SinkEvent>, SinkError> {
    let Some(session_id) = checkpoint.session_id.clone() else {
        return Ok(Vec::new());
    };
    let broken = |why: String| SinkError::QueryLog {
        session: session_id.clone(),
        why,
    };
    let lines = |detail: &str| -> Option<u64> {
        serde_json::from_str::<Value>(detail).ok()?["lines"].as_u64()
    };
    let upto =
        lines(&checkpoint.detail).ok_or_else(|| broken("checkpoint without lines".into()))?;
    let anchored_h = serde_json::from_str::<Value>(&checkpoint.detail)
        .ok()
        .and_then(|detail| detail["h"].as_str().map(str::to_string))
        .ok_or_else(|| broken("checkpoint without h".into()))?;
    let (previous, session, path) = access.store().read(|tx| {
        let previous = tx
            .checkpoint_before(&session_id, checkpoint.seq)?
            .and_then(|detail| lines(&detail))
            .unwrap_or(0);
        let path = tx
            .recordings(&session_id)?
            .into_iter()
            .find(|row| row.kind == crate::recording::QUERY_LOG_KIND)
            .map(|row| PathBuf::from(row.path));
        Ok((previous, tx.session(&session_id)?, path))
    })?;
    let session = session.ok_or_else(|| broken("no such session".into()))?;
    let path = path.ok_or_else(|| broken("no query log recorded".into()))?;
    if upto <= previous {
        return Ok(Vec::new());
    }
    let file = std::fs::File::open(&path).map_err(|error| broken(error.to_string()))?;
    let mut reader = std::io::BufReader::new(file);
    let mut position = match logs.get(&session_id) {
        Some(known) if known.lines == previous => known.clone(),
        _ => LogPosition {
            lines: 0,
            offset: 0,
            chain: crate::recording::querylog::LineChain::start(&session_id),
        },
    };
    reader
        .seek(std::io::SeekFrom::Start(position.offset))
        .map_err(|error| broken(error.to_string()))?;
    let mut events = Vec::new();
    let mut line = Vec::new();
    while position.lines < upto {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|error| broken(error.to_string()))?;
        if read == 0 || line.last() != Some(&b'\n') {
            return Err(broken(format!(
                "ends at line {}, its checkpoint counts {upto}",
                position.lines
            )));
        }
        position
            .chain
            .verify_line(&line[..line.len() - 1])
            .map_err(|why| {
                broken(format!(
                    "line {} {why}: the query log was changed; run portcullis audit verify",
                    position.lines + 1
                ))
            })?;
        position.lines += 1;
        position.offset += read as u64;
        if position.lines <= previous {
            continue;
        }
        let timing: LineTime = serde_json::from_slice(&line[..line.len() - 1])
            .map_err(|error| broken(format!("line {}: {error}", position.lines)))?;
        // A `t` no session reaches (an edited log) must not stop the sink: the session's start.
        let offset = Duration::try_from_secs_f64(timing.t.unwrap_or(0.0)).unwrap_or_default();
        let at = session
            .started_at
            .checked_add(time::Duration::try_from(offset).unwrap_or_default())
            .unwrap_or(session.started_at);
        events.push(SinkEvent::Statement(StatementEvent {
            session_id: session_id.clone(),
            line: position.lines,
            user: session.user.clone(),
            target: session.target.clone(),
            at,
            text: String::from_utf8_lossy(&line[..line.len() - 1]).into_owned(),
        }));
    }
    if position.chain.h != anchored_h {
        return Err(broken(format!(
            "lines up to {upto} do not lead to pg.checkpoint seq {}: the query log was \
             rewritten; run portcullis audit verify",
            checkpoint.seq
        )));
    }
    logs.insert(session_id, position);
    Ok(events)
}

/// 1 s, 2 s, 4 s ... up to a minute, each with up to a fifth of jitter so sinks that failed
/// together do not retry together.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(MAX_BACKOFF);
    let jitter = rand::random::<f64>() * 0.2;
    base.mul_f64(1.0 + jitter)
}

/// Checks that a postgres sink holds the same events as the local chain, up to the sink's
/// cursor, with the same hashes, each the SHA-256 of the canonical text stored beside it.
/// `Ok(Err(why))` names the first difference.
pub async fn verify_postgres(
    access: &Access,
    name: &str,
    url: &crate::secret::SecretSource,
    ca_file: Option<&std::path::Path>,
) -> Result<Result<u64, String>, SinkError> {
    let streams = access
        .config()
        .audit
        .sinks
        .iter()
        .find(|sink| sink.name == name)
        .map(|sink| sink.events);
    if streams.is_some_and(|streams| !streams.control) {
        return Ok(Err(
            "it takes statements only; there are no control events to compare".to_string(),
        ));
    }
    let client = postgres::connect(url, ca_file).await?;
    let delivered = access.store().read(|tx| tx.sink_cursor(name))?.seq;
    let checked = match verify_events(access, &client, delivered).await? {
        Ok(checked) => checked,
        Err(difference) => return Ok(Err(difference)),
    };
    if streams.is_some_and(|streams| streams.statements)
        && let Err(difference) = verify_statements(access, &client, delivered).await?
    {
        return Ok(Err(difference));
    }
    // The columns reviewers query must say what the hashed text says.
    let failed =
        |error: tokio_postgres::Error| SinkError::Io(format!("the sink's database: {error}"));
    if let Some(row) = client
        .query_opt(postgres::DIFFERENT_EVENT, &[])
        .await
        .map_err(failed)?
    {
        let seq: i64 = row.get(0);
        return Ok(Err(format!(
            "seq {seq}: its columns differ from its canonical text (altered in the sink)"
        )));
    }
    if let Some(row) = client
        .query_opt(postgres::DIFFERENT_STATEMENT, &[])
        .await
        .map_err(failed)?
    {
        let (session, line): (String, i64) = (row.get(0), row.get(1));
        return Ok(Err(format!(
            "session {session}: statement line {line}: its columns differ from the line as \
             written (altered in the sink)"
        )));
    }
    Ok(Ok(checked))
}

/// The control events: the same seqs with the same hashes, each the SHA-256 of its canonical
/// text.
async fn verify_events(
    access: &Access,
    client: &tokio_postgres::Client,
    delivered: i64,
) -> Result<Result<u64, String>, SinkError> {
    use sha2::Digest;
    // Retention removes the oldest records here once the sink holds them: compare from where
    // the local chain starts.
    let first = access.store().read(|tx| tx.audit_first())?;
    let (mut after, mut checked) = (first.map_or(0, |(seq, _)| seq - 1), 0u64);
    loop {
        let local = access.store().read(|tx| tx.audit_after(after, 1000))?;
        let rows = client
            .query(postgres::SELECT_EVENTS, &[&after, &1000i64])
            .await
            .map_err(|error| SinkError::Io(format!("the sink's database: {error}")))?;
        if local.is_empty() && rows.is_empty() {
            return Ok(Ok(checked));
        }
        let mut remote = rows.iter();
        for record in &local {
            let row = remote.next();
            let Some(row) = row else {
                if record.seq <= delivered {
                    return Ok(Err(format!(
                        "seq {} is missing (the sink's cursor says it was delivered)",
                        record.seq
                    )));
                }
                return Ok(Ok(checked));
            };
            let (seq, hash, canonical): (i64, String, String) =
                (row.get(0), row.get(1), row.get(2));
            if seq != record.seq {
                return Ok(Err(format!(
                    "seq {} is missing; the next it holds is {seq}",
                    record.seq
                )));
            }
            if hash != record.hash {
                return Ok(Err(format!(
                    "seq {seq} has another hash than the bastion's"
                )));
            }
            if hex::encode(sha2::Sha256::digest(canonical.as_bytes())) != hash {
                return Ok(Err(format!(
                    "seq {seq}: its stored canonical text does not hash to its hash (altered)"
                )));
            }
            checked += 1;
            after = seq;
        }
        if let Some(row) = remote.next() {
            let seq: i64 = row.get(0);
            return Ok(Err(format!(
                "it holds seq {seq}, which the bastion's store does not (cut or rewritten here?)"
            )));
        }
    }
}

/// The statements: for every session whose `pg.checkpoint`s the sink has, its lines are there
/// from line 1 without a gap, each as written (its `h` chains from the one before, so a
/// changed, removed or reordered line is found), reaching the `h` of every delivered
/// checkpoint.
async fn verify_statements(
    access: &Access,
    client: &tokio_postgres::Client,
    delivered: i64,
) -> Result<Result<(), String>, SinkError> {
    let checkpoints = access
        .store()
        .read(|tx| tx.pg_checkpoints_through(delivered))?;
    let mut by_session: std::collections::BTreeMap<String, Vec<(u64, String)>> =
        std::collections::BTreeMap::new();
    for (session, detail) in checkpoints {
        let detail: Value = serde_json::from_str(&detail).unwrap_or(Value::Null);
        if let (Some(lines), Some(h)) = (detail["lines"].as_u64(), detail["h"].as_str()) {
            by_session
                .entry(session)
                .or_default()
                .push((lines, h.to_string()));
        }
    }
    for (session, checkpoints) in by_session {
        let rows = client
            .query(postgres::SELECT_STATEMENTS, &[&session])
            .await
            .map_err(|error| SinkError::Io(format!("the sink's database: {error}")))?;
        let mut chain = crate::recording::querylog::LineChain::start(&session);
        let mut reached = std::collections::HashMap::new();
        for row in &rows {
            let (line, record, h): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
            let expected = chain.lines + 1;
            if line != expected as i64 {
                return Ok(Err(format!(
                    "session {session}: statement line {expected} is missing; the next it \
                     holds is {line}"
                )));
            }
            if let Err(why) = chain.verify_line(record.as_bytes()) {
                return Ok(Err(format!(
                    "session {session}: statement line {line} {why}"
                )));
            }
            if h != chain.h {
                return Ok(Err(format!(
                    "session {session}: statement line {line}: its h column is not the line's"
                )));
            }
            reached.insert(chain.lines, chain.h.clone());
        }
        for (lines, h) in &checkpoints {
            match reached.get(lines) {
                Some(reached) if reached == h => {}
                Some(_) => {
                    return Ok(Err(format!(
                        "session {session}: statement lines up to {lines} do not lead to their \
                         pg.checkpoint (rewritten)"
                    )));
                }
                None => {
                    return Ok(Err(format!(
                        "session {session}: holds {} statement lines, a delivered \
                         pg.checkpoint counts {lines}",
                        chain.lines
                    )));
                }
            }
        }
    }
    Ok(Ok(()))
}
