//! The PostgreSQL sink: control events and statements in two tables of an outside database,
//! written a batch a transaction, idempotently (`ON CONFLICT DO NOTHING` on each table's key), so
//! a batch sent again after a crash adds nothing: exactly once in the tables.
//!
//! The bastion creates the tables if they are absent; an operator may instead create them from
//! `portcullis audit sink-schema` and give the bastion a role that may only INSERT and SELECT.
//! The events table keeps, beside each field, the exact canonical text the record's hash is over
//! (`canonical`), so anyone with the table alone can recompute every hash and walk the chain.
//!
//! SQL lives here and in `store/` only (`tests/tidy.rs`): this is the outside database's.

use std::sync::Arc;

use tokio_postgres::Client;

use super::{Batch, SinkError, SinkEvent};
use crate::clock::rfc3339;
use crate::secret::SecretSource;

/// The tables, as `audit sink-schema` prints them.
pub const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS portcullis_events (
    seq        BIGINT PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    ts         TIMESTAMPTZ NOT NULL,
    type       TEXT NOT NULL,
    actor      TEXT,
    target     TEXT,
    request_id TEXT,
    grant_id   TEXT,
    session_id TEXT,
    detail     JSONB NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    canonical  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS portcullis_events_session ON portcullis_events (session_id);
CREATE INDEX IF NOT EXISTS portcullis_events_type_ts ON portcullis_events (type, ts);
CREATE TABLE IF NOT EXISTS portcullis_statements (
    session_id   TEXT NOT NULL,
    line         BIGINT NOT NULL,
    ts           TIMESTAMPTZ NOT NULL,
    actor        TEXT NOT NULL,
    target       TEXT NOT NULL,
    protocol     TEXT NOT NULL,
    sql          TEXT NOT NULL,
    params       JSONB,
    tags         JSONB,
    rows         BIGINT,
    error        JSONB,
    duration_ms  DOUBLE PRECISION,
    copy_bytes   BIGINT,
    function_oid BIGINT,
    record       TEXT NOT NULL,
    h            TEXT NOT NULL,
    PRIMARY KEY (session_id, line)
);
CREATE INDEX IF NOT EXISTS portcullis_statements_target_ts ON portcullis_statements (target, ts);
";

const INSERT_EVENTS: &str = "\
INSERT INTO portcullis_events
    (seq, id, ts, type, actor, target, request_id, grant_id, session_id, detail, prev_hash,
     hash, canonical)
SELECT seq, id, ts::timestamptz, type, actor, target, request_id, grant_id, session_id,
       detail::jsonb, prev_hash, hash, canonical
FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
            $13::text[])
     AS batch (seq, id, ts, type, actor, target, request_id, grant_id, session_id, detail,
               prev_hash, hash, canonical)
ON CONFLICT DO NOTHING";

const INSERT_STATEMENTS: &str = "\
INSERT INTO portcullis_statements
    (session_id, line, ts, actor, target, protocol, sql, params, tags, rows, error,
     duration_ms, copy_bytes, function_oid, record, h)
SELECT session_id, line, ts::timestamptz, actor, target, fields::jsonb ->> 'protocol',
       fields::jsonb ->> 'sql', fields::jsonb -> 'params', fields::jsonb -> 'tags',
       (fields::jsonb ->> 'rows')::bigint, fields::jsonb -> 'error',
       (fields::jsonb ->> 'duration_ms')::double precision,
       (fields::jsonb ->> 'copy_bytes')::bigint, (fields::jsonb ->> 'function_oid')::bigint,
       record, fields::jsonb ->> 'h'
FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[])
     AS batch (session_id, line, ts, actor, target, record, fields)
ON CONFLICT DO NOTHING";

/// Reads the sink's events back, for `audit verify --sink`.
pub const SELECT_EVENTS: &str = "SELECT seq, hash, canonical FROM portcullis_events \
     WHERE seq > $1 ORDER BY seq LIMIT $2";

/// The first event whose queryable columns say something else than its canonical text, the
/// text the hash is over (issue #18 review: a reviewer queries `actor` and `detail`, not
/// `canonical`). `\u0000` is read as U+FFFD, as the sink wrote the columns.
pub const DIFFERENT_EVENT: &str = "\
WITH c AS (SELECT e.*, replace(canonical, '\\u0000', '\\ufffd')::jsonb AS j
           FROM portcullis_events AS e)
SELECT seq FROM c
WHERE (j ->> 0)::bigint IS DISTINCT FROM seq OR j ->> 1 IS DISTINCT FROM id
   OR (j ->> 2)::timestamptz IS DISTINCT FROM ts OR j ->> 3 IS DISTINCT FROM type
   OR j ->> 4 IS DISTINCT FROM actor OR j ->> 5 IS DISTINCT FROM target
   OR j ->> 6 IS DISTINCT FROM request_id OR j ->> 7 IS DISTINCT FROM grant_id
   OR j ->> 8 IS DISTINCT FROM session_id
   OR replace(j ->> 9, '\\u0000', '\\ufffd')::jsonb IS DISTINCT FROM detail
   OR j ->> 10 IS DISTINCT FROM prev_hash
ORDER BY seq LIMIT 1";

/// The first statement whose columns say something else than its line as written.
pub const DIFFERENT_STATEMENT: &str = "\
WITH r AS (SELECT s.*, replace(record, '\\u0000', '\\ufffd')::jsonb AS j
           FROM portcullis_statements AS s)
SELECT session_id, line FROM r
WHERE j ->> 'protocol' IS DISTINCT FROM protocol OR j ->> 'sql' IS DISTINCT FROM sql
   OR j -> 'params' IS DISTINCT FROM params OR j -> 'tags' IS DISTINCT FROM tags
   OR (j ->> 'rows')::bigint IS DISTINCT FROM rows OR j -> 'error' IS DISTINCT FROM error
   OR (j ->> 'duration_ms')::double precision IS DISTINCT FROM duration_ms
   OR (j ->> 'copy_bytes')::bigint IS DISTINCT FROM copy_bytes
   OR (j ->> 'function_oid')::bigint IS DISTINCT FROM function_oid
   OR j ->> 'h' IS DISTINCT FROM h
ORDER BY session_id, line LIMIT 1";

/// A session's statements as the sink holds them, for `audit verify --sink`.
pub const SELECT_STATEMENTS: &str = "SELECT line, record, h FROM portcullis_statements \
     WHERE session_id = $1 ORDER BY line";

pub(super) struct PostgresSink {
    url: SecretSource,
    ca_file: Option<std::path::PathBuf>,
    client: Option<Client>,
    schema_ready: bool,
}

impl PostgresSink {
    pub(super) fn new(url: SecretSource, ca_file: Option<std::path::PathBuf>) -> PostgresSink {
        PostgresSink {
            url,
            ca_file,
            client: None,
            schema_ready: false,
        }
    }

    pub(super) async fn deliver(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let written = self.write(batch).await;
        if written.is_err() {
            // Connect afresh for the retry: the connection may be what failed.
            self.client = None;
        }
        written
    }

    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(connect(&self.url, self.ca_file.as_deref()).await?);
        }
        let Some(client) = self.client.as_mut() else {
            return Err(SinkError::Io("not connected".to_string()));
        };
        if !self.schema_ready {
            // Tables an operator made (for a role that may only insert and select) are used as
            // they are: the DDL runs only when one is missing.
            let present: bool = client
                .query_one(
                    "SELECT to_regclass('portcullis_events') IS NOT NULL \
                     AND to_regclass('portcullis_statements') IS NOT NULL",
                    &[],
                )
                .await
                .map_err(database)?
                .get(0);
            if !present {
                client.batch_execute(SCHEMA).await.map_err(database)?;
            }
            self.schema_ready = true;
        }
        let mut events = EventColumns::default();
        let mut statements = StatementColumns::default();
        for event in &batch.events {
            match event {
                SinkEvent::Control(record) => events.push(record),
                SinkEvent::Statement(statement) => statements.push(statement),
            }
        }
        let transaction = client.transaction().await.map_err(database)?;
        if !events.seq.is_empty() {
            transaction
                .execute(
                    INSERT_EVENTS,
                    &[
                        &events.seq,
                        &events.id,
                        &events.ts,
                        &events.event_type,
                        &events.actor,
                        &events.target,
                        &events.request_id,
                        &events.grant_id,
                        &events.session_id,
                        &events.detail,
                        &events.prev_hash,
                        &events.hash,
                        &events.canonical,
                    ],
                )
                .await
                .map_err(database)?;
        }
        if !events.seq.is_empty() {
            // `ON CONFLICT DO NOTHING` must not hide another history: a row already there has to
            // be this very record (issue #18 review: a reset store reuses seqs, which were then
            // dropped in silence).
            let clash: Option<i64> = transaction
                .query_one(
                    "SELECT min(e.seq) FROM portcullis_events e \
                     JOIN UNNEST($1::bigint[], $2::text[]) AS batch (seq, hash) \
                     ON e.seq = batch.seq WHERE e.hash <> batch.hash",
                    &[&events.seq, &events.hash],
                )
                .await
                .map_err(database)?
                .get(0);
            if let Some(seq) = clash {
                return Err(SinkError::Refused(format!(
                    "the sink holds seq {seq} with another hash: the bastion's store was reset or \
                     replaced, or the sink was changed"
                )));
            }
        }
        if !statements.line.is_empty() {
            transaction
                .execute(
                    INSERT_STATEMENTS,
                    &[
                        &statements.session_id,
                        &statements.line,
                        &statements.ts,
                        &statements.actor,
                        &statements.target,
                        &statements.record,
                        &statements.fields,
                    ],
                )
                .await
                .map_err(database)?;
        }
        transaction.commit().await.map_err(database)
    }
}

/// Connects to the sink's database, with TLS verified against `ca_file` when given.
pub async fn connect(
    url: &SecretSource,
    ca_file: Option<&std::path::Path>,
) -> Result<Client, SinkError> {
    let url = url
        .read()
        .map_err(|error| SinkError::Io(format!("the sink's URL: {error}")))?;
    let mut config: tokio_postgres::Config = url
        .expose()
        .parse()
        .map_err(|_| SinkError::Io("the sink's URL is not a PostgreSQL URL".to_string()))?;
    if ca_file.is_some() {
        // Never `prefer`: a server (or anyone in between) that declines TLS gets no session
        // (issue #18 review: the URL's default let a man in the middle downgrade it).
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    match ca_file {
        None => open(&config, tokio_postgres::NoTls).await,
        Some(ca_file) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(ca_file)?);
            open(&config, tls).await
        }
    }
}

/// Connects with `tls`, within 10 s, and runs the connection in a task of its own.
async fn open<T>(config: &tokio_postgres::Config, tls: T) -> Result<Client, SinkError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let connecting = config.connect(tls);
    let (client, connection) = tokio::time::timeout(std::time::Duration::from_secs(10), connecting)
        .await
        .map_err(|_| SinkError::Io("connecting to the sink timed out".to_string()))?
        .map_err(database)?;
    tokio::spawn(connection);
    Ok(client)
}

/// TLS 1.2 and 1.3 with the ring provider the binary uses, trusting only `ca_file`.
fn tls_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, SinkError> {
    let pem = std::fs::read(ca_file)
        .map_err(|error| SinkError::Io(format!("cannot read {}: {error}", ca_file.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let certificate: rustls::pki_types::CertificateDer<'static> =
            certificate.map_err(|_| SinkError::Io(format!("{} is not PEM", ca_file.display())))?;
        roots
            .add(certificate)
            .map_err(|error| SinkError::Io(format!("{}: {error}", ca_file.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| SinkError::Io(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

fn database(error: tokio_postgres::Error) -> SinkError {
    SinkError::Io(format!("the sink's database: {error}"))
}

#[derive(Default)]
struct EventColumns {
    seq: Vec<i64>,
    id: Vec<String>,
    ts: Vec<String>,
    event_type: Vec<String>,
    actor: Vec<Option<String>>,
    target: Vec<Option<String>>,
    request_id: Vec<Option<String>>,
    grant_id: Vec<Option<String>>,
    session_id: Vec<Option<String>>,
    detail: Vec<String>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
    canonical: Vec<String>,
}

impl EventColumns {
    fn push(&mut self, record: &crate::audit::AuditRecord) {
        self.seq.push(record.seq);
        self.id.push(record.id.clone());
        self.ts.push(rfc3339(record.ts));
        self.event_type.push(record.event_type.clone());
        // A failed login's user name is whatever the client sent, NULs included (issue #18
        // review): `text` refuses them, so they become U+FFFD here; `canonical` keeps them.
        self.actor.push(record.actor.as_deref().map(text_safe));
        self.target.push(record.target.as_deref().map(text_safe));
        self.request_id
            .push(record.request_id.as_deref().map(text_safe));
        self.grant_id
            .push(record.grant_id.as_deref().map(text_safe));
        self.session_id
            .push(record.session_id.as_deref().map(text_safe));
        self.detail.push(jsonb_safe(&record.detail));
        self.prev_hash.push(record.prev_hash.clone());
        self.hash.push(record.hash.clone());
        self.canonical.push(record.canonical());
    }
}

#[derive(Default)]
struct StatementColumns {
    session_id: Vec<String>,
    line: Vec<i64>,
    ts: Vec<String>,
    actor: Vec<String>,
    target: Vec<String>,
    /// The line exactly as written.
    record: Vec<String>,
    /// The same for `jsonb` (which refuses `\u0000`).
    fields: Vec<String>,
}

impl StatementColumns {
    fn push(&mut self, statement: &super::StatementEvent) {
        self.session_id.push(text_safe(&statement.session_id));
        self.line.push(statement.line as i64);
        self.ts.push(rfc3339(statement.at));
        self.actor.push(text_safe(&statement.user));
        self.target.push(text_safe(&statement.target));
        self.record.push(statement.text.clone());
        self.fields.push(jsonb_safe(&statement.text));
    }
}

/// JSON text `jsonb` accepts: `jsonb` refuses the escape `\u0000`, and one NUL in an SFTP path
/// or a function argument must not stop the sink for good (issue #18 review), so NULs become
/// U+FFFD in the `jsonb` copy. The exact text is kept beside it (`canonical`, `record`).
fn jsonb_safe(text: &str) -> String {
    if !text.contains("\\u0000") {
        return text.to_string();
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(mut value) => {
            replace_nul(&mut value);
            value.to_string()
        }
        Err(_) => serde_json::Value::String(text.replace('\0', "\u{fffd}")).to_string(),
    }
}

/// Text PostgreSQL's `text` accepts: NUL becomes U+FFFD.
fn text_safe(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

fn replace_nul(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) if text.contains('\0') => {
            *text = text.replace('\0', "\u{fffd}");
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(replace_nul),
        serde_json::Value::Object(fields) => {
            let keys: Vec<String> = fields
                .keys()
                .filter(|key| key.contains('\0'))
                .cloned()
                .collect();
            for key in keys {
                if let Some(moved) = fields.remove(&key) {
                    fields.insert(key.replace('\0', "\u{fffd}"), moved);
                }
            }
            fields.values_mut().for_each(replace_nul);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonb_gets_no_nul_and_the_rest_is_untouched() {
        assert_eq!(jsonb_safe(r#"{"a":"b"}"#), r#"{"a":"b"}"#);
        let safe = jsonb_safe(r#"{"path":"x\u0000y","k\u0000":["\u0000"]}"#);
        assert!(!safe.contains("\\u0000"), "{safe}");
        assert!(safe.contains("x\u{fffd}y"), "{safe}");
        // A backslash before the text "u0000" is not a NUL and stays.
        assert_eq!(jsonb_safe(r#"{"a":"\\u0000"}"#), r#"{"a":"\\u0000"}"#);
    }
}
