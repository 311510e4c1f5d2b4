//! Embedded state in SQLite: the only module that writes SQL.
//!
//! The database runs in WAL mode with `synchronous = FULL`, so a committed transaction survives a
//! crash or `kill -9` and an interrupted one leaves nothing behind. Every state change goes through
//! `Store::write`, one `BEGIN IMMEDIATE` transaction that takes the write lock up front: two
//! processes (the server and an operator's `portcullis revoke`) or two threads deciding the same
//! request are serialized by SQLite itself, so a check-then-write inside the closure cannot race.
//! Schema changes are numbered migrations tracked in `PRAGMA user_version`.

mod migrations;
pub mod search;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use time::OffsetDateTime;

use crate::access::model::{AccessRequest, Approval, Grant, GrantState, RequestState};
use crate::audit::{AuditEntry, AuditEvent, AuditRecord};
use crate::ids::{IdKind, new_id};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database is from a newer portcullis (schema {found}, this build knows {known})")]
    TooNew { found: i64, known: i64 },
    #[error("state database holds an invalid value in {column}: {value:?}")]
    Corrupt { column: &'static str, value: String },
}

/// A handle to the state database; clones share one connection.
#[derive(Clone)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// Whether request changes are queued for a notifier (Slack is configured).
    notify: bool,
    /// Whether security events are queued as alerts (an alerts channel is configured).
    alert: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Store")
            .field("path", &self.path)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        // The database holds who may reach production: readable by the bastion's user only. SQLite
        // gives its -wal and -shm files the same permissions as the database file.
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
        let mut connection = Connection::open(path).map_err(open_error)?;
        connection
            .busy_timeout(Duration::from_secs(10))
            .map_err(open_error)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(open_error)?;
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(open_error)?;
        migrations::apply(&mut connection)?;
        Ok(Store {
            connection: Arc::new(Mutex::new(connection)),
            path: path.to_path_buf(),
            notify: false,
            alert: false,
        })
    }

    /// Queues a notification with every request change from now on (when Slack is configured),
    /// in the change's own transaction.
    pub fn with_notifications(mut self, on: bool) -> Store {
        self.notify = on;
        self
    }

    /// Queues an alert with every security event from now on (when an alerts channel is
    /// configured), in the event's own transaction.
    pub fn with_alerts(mut self, on: bool) -> Store {
        self.alert = on;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-written transaction behind (SQLite
        // rolls back an uncommitted one when its guard drops), so a poisoned lock is safe to reuse.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `work` in one write transaction, committed only if `work` returns `Ok`.
    pub fn write<T>(
        &self,
        work: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut connection = self.lock();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = work(&Tx {
            transaction: &transaction,
            notify: self.notify,
            alert: self.alert,
        })?;
        transaction.commit()?;
        Ok(value)
    }

    /// Runs `work` on one consistent snapshot.
    pub fn read<T>(
        &self,
        work: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut connection = self.lock();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let value = work(&Tx {
            transaction: &transaction,
            notify: self.notify,
            alert: self.alert,
        })?;
        transaction.finish()?;
        Ok(value)
    }

    /// Cheap liveness probe for `/healthz`.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.lock().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }
}

/// Which requests a listing wants.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFilter {
    pub pending_only: bool,
    pub limit: Option<u32>,
}

/// Which grants a listing wants; `active_at` keeps those active at that time.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrantFilter {
    pub active_at: Option<OffsetDateTime>,
    pub limit: Option<u32>,
}

/// The operations of one transaction. Everything takes `&self`: the transaction is the unit.
/// Where a request's Slack message is, and what its requester was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackMessageRow {
    pub channel: String,
    pub ts: String,
    pub requester_told: Option<String>,
}

pub struct Tx<'a> {
    transaction: &'a rusqlite::Transaction<'a>,
    notify: bool,
    alert: bool,
}

/// The audit events that are security alerts. Failed logins alert once per address and minute
/// (`source.refused`), not once each (issue #17).
const ALERTING_EVENTS: [&str; 10] = [
    "source.refused",
    "sources.refused",
    "user.locked",
    "user.targeted",
    "decision_refused",
    "revoke_refused",
    "session_refused",
    "subsystem.refused",
    "recording.failed",
    "webhook.rejected",
];

/// The audit events that change what a request's notification shows.
const NOTIFYING_EVENTS: [&str; 7] = [
    "requested",
    "approved",
    "denied",
    "expired",
    "cancelled",
    "revoked",
    "grant_expired",
];

const REQUEST_COLUMNS: &str = "id, requester, target, duration_seconds, reason, state, created_at, \
     decided_at, decided_by, decision_reason, grant_id";
const GRANT_COLUMNS: &str = "id, request_id, user, target, state, starts_at, ends_at, ended_at, \
     revoked_by, revoke_reason";
const AUDIT_COLUMNS: &str = "seq, id, ts, type, actor, target, request_id, grant_id, session_id, \
     detail, prev_hash, hash";

impl Tx<'_> {
    /// A new id of `kind` not used by any request, grant or session yet.
    pub fn fresh_id(&self, kind: IdKind) -> Result<String, StoreError> {
        let table = match kind {
            IdKind::Request => "requests",
            IdKind::Grant => "grants",
            IdKind::Session => "sessions",
            IdKind::AuditEvent => return Ok(new_id(kind)),
        };
        loop {
            let id = new_id(kind);
            let taken: bool = self.transaction.query_row(
                &format!("SELECT EXISTS(SELECT 1 FROM {table} WHERE id = ?1)"),
                [&id],
                |row| row.get(0),
            )?;
            if !taken {
                return Ok(id);
            }
        }
    }

    pub fn insert_request(&self, request: &AccessRequest) -> Result<(), StoreError> {
        self.transaction.execute(
            "INSERT INTO requests (id, requester, target, duration_seconds, reason, state, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                request.id,
                request.requester,
                request.target,
                request.duration.as_secs() as i64,
                request.reason,
                request.state.as_str(),
                request.created_at.unix_timestamp(),
            ],
        )?;
        for approval in &request.approvals {
            self.add_approval(&request.id, approval)?;
        }
        Ok(())
    }

    pub fn request(&self, id: &str) -> Result<Option<AccessRequest>, StoreError> {
        let row = self
            .transaction
            .query_row(
                &format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"),
                [id],
                RequestRow::read,
            )
            .optional()?;
        row.map(|row| self.finish_request(row)).transpose()
    }

    pub fn requests(&self, filter: RequestFilter) -> Result<Vec<AccessRequest>, StoreError> {
        let mut sql = format!("SELECT {REQUEST_COLUMNS} FROM requests");
        if filter.pending_only {
            sql.push_str(" WHERE state = 'pending'");
        }
        sql.push_str(" ORDER BY created_at DESC, rowid DESC");
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        self.request_rows(&sql, [])
    }

    /// Pending requests created at or before `cutoff`: due to expire.
    pub fn pending_created_before(
        &self,
        cutoff: OffsetDateTime,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        self.request_rows(
            &format!(
                "SELECT {REQUEST_COLUMNS} FROM requests
                 WHERE state = 'pending' AND created_at <= ?1 ORDER BY created_at"
            ),
            [cutoff.unix_timestamp()],
        )
    }

    fn request_rows(
        &self,
        sql: &str,
        parameters: impl rusqlite::Params,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        let mut statement = self.transaction.prepare(sql)?;
        let rows = statement
            .query_map(parameters, RequestRow::read)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|row| self.finish_request(row))
            .collect()
    }

    fn finish_request(&self, row: RequestRow) -> Result<AccessRequest, StoreError> {
        let mut statement = self.transaction.prepare_cached(
            "SELECT approver, at FROM approvals WHERE request_id = ?1 ORDER BY at, rowid",
        )?;
        let approvals = statement
            .query_map([&row.id], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?
            .map(|approval| {
                let (approver, at) = approval?;
                Ok(Approval {
                    approver,
                    at: timestamp(at)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(AccessRequest {
            state: RequestState::parse(&row.state).ok_or(StoreError::Corrupt {
                column: "requests.state",
                value: row.state.clone(),
            })?,
            duration: Duration::from_secs(row.duration_seconds.max(0) as u64),
            created_at: timestamp(row.created_at)?,
            decided_at: row.decided_at.map(timestamp).transpose()?,
            id: row.id,
            requester: row.requester,
            target: row.target,
            reason: row.reason,
            decided_by: row.decided_by,
            decision_reason: row.decision_reason,
            grant_id: row.grant_id,
            approvals,
        })
    }

    pub fn add_approval(&self, request_id: &str, approval: &Approval) -> Result<(), StoreError> {
        self.transaction.execute(
            "INSERT INTO approvals (request_id, approver, at) VALUES (?1, ?2, ?3)",
            params![request_id, approval.approver, approval.at.unix_timestamp()],
        )?;
        Ok(())
    }

    /// Moves a request out of `pending`; refuses (as an SQL no-op) to move any other.
    pub fn decide_request(
        &self,
        id: &str,
        state: RequestState,
        at: OffsetDateTime,
        by: &str,
        reason: Option<&str>,
        grant_id: Option<&str>,
    ) -> Result<bool, StoreError> {
        let changed = self.transaction.execute(
            "UPDATE requests SET state = ?2, decided_at = ?3, decided_by = ?4,
                 decision_reason = ?5, grant_id = ?6
             WHERE id = ?1 AND state = 'pending'",
            params![
                id,
                state.as_str(),
                at.unix_timestamp(),
                by,
                reason,
                grant_id
            ],
        )?;
        Ok(changed == 1)
    }

    pub fn insert_grant(&self, grant: &Grant) -> Result<(), StoreError> {
        self.transaction.execute(
            "INSERT INTO grants (id, request_id, user, target, state, starts_at, ends_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                grant.id,
                grant.request_id,
                grant.user,
                grant.target,
                grant.state.as_str(),
                grant.starts_at.unix_timestamp(),
                grant.ends_at.unix_timestamp(),
            ],
        )?;
        Ok(())
    }

    pub fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        let row = self
            .transaction
            .query_row(
                &format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1"),
                [id],
                GrantRow::read,
            )
            .optional()?;
        row.map(GrantRow::finish).transpose()
    }

    pub fn grants(&self, filter: GrantFilter) -> Result<Vec<Grant>, StoreError> {
        let mut sql = format!("SELECT {GRANT_COLUMNS} FROM grants");
        let now = filter.active_at.map(OffsetDateTime::unix_timestamp);
        if now.is_some() {
            sql.push_str(" WHERE state = 'active' AND starts_at <= ?1 AND ends_at > ?1");
        }
        sql.push_str(" ORDER BY starts_at DESC, rowid DESC");
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        match now {
            Some(now) => self.grant_rows(&sql, [now]),
            None => self.grant_rows(&sql, []),
        }
    }

    /// The grant that lets `user` reach `target` at `now`, the one ending last if several.
    pub fn active_grant(
        &self,
        user: &str,
        target: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Grant>, StoreError> {
        let row = self
            .transaction
            .query_row(
                &format!(
                    "SELECT {GRANT_COLUMNS} FROM grants
                     WHERE user = ?1 AND target = ?2 AND state = 'active'
                       AND starts_at <= ?3 AND ends_at > ?3
                     ORDER BY ends_at DESC LIMIT 1"
                ),
                params![user, target, now.unix_timestamp()],
                GrantRow::read,
            )
            .optional()?;
        row.map(GrantRow::finish).transpose()
    }

    /// Grants still marked active whose end is at or before `now`.
    pub fn grants_due(&self, now: OffsetDateTime) -> Result<Vec<Grant>, StoreError> {
        self.grant_rows(
            &format!(
                "SELECT {GRANT_COLUMNS} FROM grants
                 WHERE state = 'active' AND ends_at <= ?1 ORDER BY ends_at"
            ),
            [now.unix_timestamp()],
        )
    }

    /// Grants that stopped being active at or after `since`, however they ended.
    pub fn grants_ended_since(&self, since: OffsetDateTime) -> Result<Vec<Grant>, StoreError> {
        self.grant_rows(
            &format!(
                "SELECT {GRANT_COLUMNS} FROM grants
                 WHERE state != 'active' AND ended_at >= ?1 ORDER BY ended_at"
            ),
            [since.unix_timestamp()],
        )
    }

    fn grant_rows(
        &self,
        sql: &str,
        parameters: impl rusqlite::Params,
    ) -> Result<Vec<Grant>, StoreError> {
        let mut statement = self.transaction.prepare(sql)?;
        let rows = statement
            .query_map(parameters, GrantRow::read)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(GrantRow::finish).collect()
    }

    /// Ends an active grant; returns false if it was no longer active.
    pub fn end_grant(
        &self,
        id: &str,
        state: GrantState,
        at: OffsetDateTime,
        revoked_by: Option<&str>,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let changed = self.transaction.execute(
            "UPDATE grants SET state = ?2, ended_at = ?3, revoked_by = ?4, revoke_reason = ?5
             WHERE id = ?1 AND state = 'active'",
            params![id, state.as_str(), at.unix_timestamp(), revoked_by, reason],
        )?;
        Ok(changed == 1)
    }

    /// Appends `event` to the hash-chained audit log, inside this transaction.
    pub fn append_audit(
        &self,
        event: &AuditEvent,
        at: OffsetDateTime,
    ) -> Result<AuditRecord, StoreError> {
        self.append_audits(std::slice::from_ref(event), at)?
            .ok_or(StoreError::Corrupt {
                column: "audit_events",
                value: "no record appended".to_string(),
            })
    }

    /// Appends events in order, reading the chain's head once; returns the last record.
    pub fn append_audits(
        &self,
        events: &[AuditEvent],
        at: OffsetDateTime,
    ) -> Result<Option<AuditRecord>, StoreError> {
        self.append_entries(events.iter().map(AuditEvent::entry), at)
    }

    /// Appends flattened events in order, all stamped `at`, reading the chain's head once (a
    /// database session audits its statements in batches); returns the last record.
    pub fn append_entries(
        &self,
        entries: impl IntoIterator<Item = AuditEntry>,
        at: OffsetDateTime,
    ) -> Result<Option<AuditRecord>, StoreError> {
        // Cached statements: a database session appends an event per statement.
        let mut prev: Option<(i64, String)> = self
            .transaction
            .prepare_cached("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let mut insert = self.transaction.prepare_cached(&format!(
            "INSERT INTO audit_events ({AUDIT_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ))?;
        let mut last = None;
        for entry in entries {
            let record = AuditRecord::chain(
                prev.as_ref().map(|(seq, hash)| (*seq, hash.as_str())),
                new_id(IdKind::AuditEvent),
                at,
                entry,
            );
            insert.execute(params![
                record.seq,
                record.id,
                record.ts.unix_timestamp(),
                record.event_type,
                record.actor,
                record.target,
                record.request_id,
                record.grant_id,
                record.session_id,
                record.detail,
                record.prev_hash,
                record.hash,
            ])?;
            if self.alert && ALERTING_EVENTS.contains(&record.event_type.as_str()) {
                self.transaction
                    .prepare_cached("INSERT INTO alerts (audit_seq) VALUES (?1)")?
                    .execute([record.seq])?;
            }
            if self.notify && NOTIFYING_EVENTS.contains(&record.event_type.as_str()) {
                self.enqueue_notification(
                    record.request_id.as_deref(),
                    record.grant_id.as_deref(),
                    at,
                )?;
            }
            prev = Some((record.seq, record.hash.clone()));
            last = Some(record);
        }
        Ok(last)
    }

    /// Queues a notification for the request (or the request behind the grant).
    fn enqueue_notification(
        &self,
        request_id: Option<&str>,
        grant_id: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let request_id = match (request_id, grant_id) {
            (Some(request), _) => Some(request.to_string()),
            (None, Some(grant)) => self
                .transaction
                .prepare_cached("SELECT request_id FROM grants WHERE id = ?1")?
                .query_row([grant], |row| row.get(0))
                .optional()?,
            (None, None) => None,
        };
        if let Some(request_id) = request_id {
            self.transaction
                .prepare_cached(
                    "INSERT INTO notifications (request_id, created_at) VALUES (?1, ?2)",
                )?
                .execute(params![request_id, at.unix_timestamp()])?;
        }
        Ok(())
    }

    /// Requests with queued notifications, oldest first, each with its newest notification id.
    pub fn pending_notifications(&self, limit: u32) -> Result<Vec<(i64, String)>, StoreError> {
        let mut statement = self.transaction.prepare_cached(
            "SELECT MAX(id), request_id FROM notifications
             GROUP BY request_id ORDER BY MIN(id) LIMIT ?1",
        )?;
        let rows = statement
            .query_map([limit], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The oldest queued alerts: (alert id, the audit record it shows).
    pub fn pending_alerts(&self, limit: u32) -> Result<Vec<(i64, AuditRecord)>, StoreError> {
        let mut statement = self.transaction.prepare_cached(&format!(
            "SELECT alerts.id, {} FROM alerts JOIN audit_events ON audit_events.seq = alerts.audit_seq
             ORDER BY alerts.id LIMIT ?1",
            AUDIT_COLUMNS
                .split(", ")
                .map(|column| format!("audit_events.{column}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))?;
        let rows = statement
            .query_map([limit], |row| {
                let id: i64 = row.get(0)?;
                Ok((id, read_audit_from(row, 1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, record)| record.map(|record| (id, record)))
            .collect()
    }

    pub fn clear_alert(&self, id: i64) -> Result<(), StoreError> {
        self.transaction
            .prepare_cached("DELETE FROM alerts WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    /// Drops a request's notifications up to `up_to` (what a delivery showed).
    pub fn clear_notifications(&self, request_id: &str, up_to: i64) -> Result<(), StoreError> {
        self.transaction
            .prepare_cached("DELETE FROM notifications WHERE request_id = ?1 AND id <= ?2")?
            .execute(params![request_id, up_to])?;
        Ok(())
    }

    /// The request's Slack message, once posted.
    pub fn slack_message(&self, request_id: &str) -> Result<Option<SlackMessageRow>, StoreError> {
        Ok(self
            .transaction
            .prepare_cached(
                "SELECT channel, ts, requester_told FROM slack_messages WHERE request_id = ?1",
            )?
            .query_row([request_id], |row| {
                Ok(SlackMessageRow {
                    channel: row.get(0)?,
                    ts: row.get(1)?,
                    requester_told: row.get(2)?,
                })
            })
            .optional()?)
    }

    /// Notes that the requester was told of `state` by direct message.
    pub fn set_requester_told(&self, request_id: &str, state: &str) -> Result<(), StoreError> {
        self.transaction
            .prepare_cached("UPDATE slack_messages SET requester_told = ?2 WHERE request_id = ?1")?
            .execute(params![request_id, state])?;
        Ok(())
    }

    pub fn set_slack_message(
        &self,
        request_id: &str,
        channel: &str,
        ts: &str,
    ) -> Result<(), StoreError> {
        self.transaction
            .prepare_cached(
                "INSERT INTO slack_messages (request_id, channel, ts) VALUES (?1, ?2, ?3)
                 ON CONFLICT (request_id) DO UPDATE SET channel = ?2, ts = ?3",
            )?
            .execute(params![request_id, channel, ts])?;
        Ok(())
    }

    /// The last `count` audit records, oldest first.
    pub fn audit_tail(&self, count: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let mut statement = self.transaction.prepare(&format!(
            "SELECT {AUDIT_COLUMNS} FROM
               (SELECT * FROM audit_events ORDER BY seq DESC LIMIT ?1) ORDER BY seq"
        ))?;
        let records = statement
            .query_map([count], read_audit)?
            .collect::<Result<Vec<_>, _>>()?;
        records.into_iter().collect()
    }

    /// A session's audit records, in order, at most `limit`.
    pub fn audit_of_session(
        &self,
        session_id: &str,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut statement = self.transaction.prepare(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE session_id = ?1 ORDER BY seq LIMIT ?2"
        ))?;
        let records = statement
            .query_map(params![session_id, limit], read_audit)?
            .collect::<Result<Vec<_>, _>>()?;
        records.into_iter().collect()
    }

    /// Up to `limit` audit records after `seq`, in order (a sink's next batch).
    pub fn audit_after(&self, seq: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let mut statement = self.transaction.prepare(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))?;
        let records = statement
            .query_map(params![seq, limit], read_audit)?
            .collect::<Result<Vec<_>, _>>()?;
        records.into_iter().collect()
    }

    /// The newest audit record's seq and hash: the chain head.
    pub fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        Ok(self
            .transaction
            .query_row(
                "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?)
    }

    /// The detail of the last `pg.checkpoint` of `session_id` before `seq`, if any.
    pub fn checkpoint_before(
        &self,
        session_id: &str,
        seq: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .transaction
            .query_row(
                "SELECT detail FROM audit_events
                 WHERE session_id = ?1 AND type = 'pg.checkpoint' AND seq < ?2
                 ORDER BY seq DESC LIMIT 1",
                params![session_id, seq],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Marks a recording archived (copied and verified by an archive sink).
    pub fn mark_archived(
        &self,
        session_id: &str,
        channel: u32,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.transaction.execute(
            "UPDATE recordings SET archived_at = ?3 WHERE session_id = ?1 AND channel = ?2",
            params![session_id, channel, at.unix_timestamp()],
        )?;
        Ok(())
    }

    /// When a recording was archived, if it was.
    pub fn archived_at(&self, session_id: &str, channel: u32) -> Result<Option<i64>, StoreError> {
        Ok(self
            .transaction
            .query_row(
                "SELECT archived_at FROM recordings WHERE session_id = ?1 AND channel = ?2",
                params![session_id, channel],
                |row| row.get::<_, Option<i64>>(0),
            )
            .optional()?
            .flatten())
    }

    /// Every `pg.checkpoint` up to `seq`, in order: its session and detail.
    pub fn pg_checkpoints_through(&self, seq: i64) -> Result<Vec<(String, String)>, StoreError> {
        let mut statement = self.transaction.prepare(
            "SELECT session_id, detail FROM audit_events
             WHERE type = 'pg.checkpoint' AND seq <= ?1 AND session_id IS NOT NULL ORDER BY seq",
        )?;
        let rows = statement
            .query_map([seq], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The ids of a grant's sessions that have not ended.
    pub fn live_sessions_of(&self, grant_id: &str) -> Result<Vec<String>, StoreError> {
        let mut statement = self.transaction.prepare(
            "SELECT id FROM sessions WHERE grant_id = ?1 AND ended_at IS NULL ORDER BY started_at",
        )?;
        let ids = statement
            .query_map([grant_id], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    /// The ids of the sessions matching `filter` (its limit aside), newest first, at most
    /// `limit`: the scope of a search (issue #19).
    pub fn find_session_ids(
        &self,
        filter: &SessionFilter,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let scoped = SessionFilter {
            limit,
            ..filter.clone()
        };
        Ok(self
            .find_sessions(&scoped)?
            .into_iter()
            .map(|found| found.session.id)
            .collect())
    }

    /// Sessions matching `filter`, newest first.
    pub fn find_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>, StoreError> {
        let (everyone, viewer, targets) = match &filter.visible_to {
            None => (true, String::new(), String::from("[]")),
            Some((viewer, targets)) => (
                false,
                viewer.clone(),
                serde_json::to_string(targets).unwrap_or_else(|_| "[]".to_string()),
            ),
        };
        let mut statement = self.transaction.prepare(
            "SELECT s.id, s.grant_id, s.user, s.target, s.protocol, s.client_address,
                    s.started_at, s.ended_at, s.end_reason, s.bytes_in, s.bytes_out, s.statements,
                    g.request_id, r.reason,
                    (SELECT group_concat(approver, char(10)) FROM
                       (SELECT approver FROM approvals WHERE request_id = g.request_id
                        ORDER BY at)),
                    (SELECT group_concat(channel || ':' || kind, char(10)) FROM
                       (SELECT channel, kind FROM recordings WHERE session_id = s.id
                        ORDER BY channel))
             FROM sessions AS s
             LEFT JOIN grants AS g ON g.id = s.grant_id
             LEFT JOIN requests AS r ON r.id = g.request_id
             WHERE (?1 IS NULL OR s.user = ?1) AND (?2 IS NULL OR s.target = ?2)
               AND (?3 IS NULL OR s.started_at >= ?3) AND (?4 IS NULL OR s.started_at < ?4)
               AND (?5 OR s.user = ?6 OR s.target IN (SELECT value FROM json_each(?7)))
               AND (?9 IS NULL OR s.id IN (SELECT value FROM json_each(?9)))
             ORDER BY s.started_at DESC, s.id DESC
             LIMIT ?8",
        )?;
        let rows = statement.query_map(
            params![
                filter.user,
                filter.target,
                filter.since.map(OffsetDateTime::unix_timestamp),
                filter.until.map(OffsetDateTime::unix_timestamp),
                everyone,
                viewer,
                targets,
                filter.limit,
                filter
                    .ids
                    .as_ref()
                    .map(|ids| serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_string())),
            ],
            |row| {
                Ok((
                    (
                        row.get::<_, String>(0)?,
                        row.get::<_, Option<String>>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, Option<String>>(5)?,
                    ),
                    (
                        row.get::<_, i64>(6)?,
                        row.get::<_, Option<i64>>(7)?,
                        row.get::<_, Option<String>>(8)?,
                        row.get::<_, i64>(9)?,
                        row.get::<_, i64>(10)?,
                        row.get::<_, i64>(11)?,
                    ),
                    (
                        row.get::<_, Option<String>>(12)?,
                        row.get::<_, Option<String>>(13)?,
                        row.get::<_, Option<String>>(14)?,
                        row.get::<_, Option<String>>(15)?,
                    ),
                ))
            },
        )?;
        let mut found = Vec::new();
        for row in rows {
            let (
                (id, grant_id, user, target, protocol, client_address),
                (started_at, ended_at, end_reason, bytes_in, bytes_out, statements),
                (request_id, reason, approvers, recordings),
            ) = row?;
            let lines = |text: Option<String>| -> Vec<String> {
                text.map(|text| text.split('\n').map(str::to_string).collect())
                    .unwrap_or_default()
            };
            let recordings = lines(recordings)
                .into_iter()
                .filter_map(|entry| {
                    let (channel, kind) = entry.split_once(':')?;
                    Some((channel.parse().ok()?, kind.to_string()))
                })
                .collect();
            found.push(SessionSummary {
                session: SessionRow {
                    id,
                    grant_id,
                    user,
                    target,
                    protocol,
                    client_address: client_address.unwrap_or_default(),
                    started_at: timestamp(started_at)?,
                    ended_at: ended_at.map(timestamp).transpose()?,
                    end_reason,
                    bytes_in: bytes_in as u64,
                    bytes_out: bytes_out as u64,
                    statements: statements as u64,
                },
                request_id,
                reason,
                approvers: lines(approvers),
                recordings,
                hits: Vec::new(),
            });
        }
        Ok(found)
    }

    /// The first kept audit record's seq and the hash it chains to: where the chain starts
    /// once retention has removed its oldest records.
    pub fn audit_first(&self) -> Result<Option<(i64, String)>, StoreError> {
        Ok(self
            .transaction
            .query_row(
                "SELECT seq, prev_hash FROM audit_events ORDER BY seq LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?)
    }

    /// The newest record of an event type, if any.
    pub fn latest_audit_of(&self, event_type: &str) -> Result<Option<AuditRecord>, StoreError> {
        let mut statement = self.transaction.prepare(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE type = ?1 ORDER BY seq DESC LIMIT 1"
        ))?;
        statement
            .query_map([event_type], read_audit)?
            .next()
            .transpose()?
            .transpose()
    }

    /// The retention job's removal (issue #18), in this transaction: the oldest audit records,
    /// up to the last one stamped before `cutoff` that every sink in `sinks` holds, and then
    /// the archived recordings finished before `cutoff` that no kept record refers to. The
    /// rows go here; the caller removes the files once this commits.
    pub fn prune_audit(
        &self,
        cutoff: OffsetDateTime,
        sinks: &[String],
    ) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        let mut candidates = std::collections::BTreeSet::new();
        // Records form a prefix of the chain: up to the first one stamped at or after the
        // cutoff, so a clock that stepped back never leaves a hole.
        let first_due: Option<i64> = self
            .transaction
            .query_row(
                "SELECT seq FROM audit_events WHERE ts >= ?1 ORDER BY seq LIMIT 1",
                [cutoff.unix_timestamp()],
                |row| row.get(0),
            )
            .optional()?;
        let mut through = match first_due {
            Some(seq) => seq - 1,
            None => self.transaction.query_row(
                "SELECT coalesce(max(seq), 0) FROM audit_events",
                [],
                |row| row.get(0),
            )?,
        };
        for name in sinks {
            let cursor = self.sink_cursor(name)?.seq;
            if cursor < through {
                pruned.held_by.push(name.clone());
                through = cursor;
            }
        }
        let first = self.audit_first()?.map_or(i64::MAX, |(seq, _)| seq);
        if through >= first {
            let hash: String = self.transaction.query_row(
                "SELECT hash FROM audit_events WHERE seq = ?1",
                [through],
                |row| row.get(0),
            )?;
            let mut sessions = self.transaction.prepare(
                "SELECT DISTINCT session_id FROM audit_events
                 WHERE seq <= ?1 AND session_id IS NOT NULL",
            )?;
            candidates.extend(
                sessions
                    .query_map([through], |row| row.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?,
            );
            pruned.events = self
                .transaction
                .execute("DELETE FROM audit_events WHERE seq <= ?1", [through])?
                as u64;
            self.transaction
                .execute("DELETE FROM alerts WHERE audit_seq <= ?1", [through])?;
            pruned.through = Some((through, hash));
        }
        let mut statement = self.transaction.prepare(
            "DELETE FROM recordings AS r
             WHERE archived_at IS NOT NULL AND finalized_at IS NOT NULL AND finalized_at < ?1
               AND NOT EXISTS (SELECT 1 FROM audit_events AS a WHERE a.session_id = r.session_id)
             RETURNING path, session_id",
        )?;
        let removed = statement
            .query_map([cutoff.unix_timestamp()], |row| {
                Ok((
                    PathBuf::from(row.get::<_, String>(0)?),
                    row.get::<_, String>(1)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        for (path, session) in removed {
            pruned.files.push(path);
            candidates.insert(session);
        }
        // A session leaves the search index once nothing of it is kept: no record names it and
        // no recording of it remains (issue #19).
        for session in candidates {
            let kept: bool = self.transaction.query_row(
                "SELECT EXISTS (SELECT 1 FROM audit_events WHERE session_id = ?1)
                     OR EXISTS (SELECT 1 FROM recordings WHERE session_id = ?1)",
                [&session],
                |row| row.get(0),
            )?;
            if !kept {
                pruned.sessions.push(session);
            }
        }
        Ok(pruned)
    }

    /// What `/metrics` shows that lives in the store (issue #18).
    pub fn metrics(&self) -> Result<StoreMetrics, StoreError> {
        let pairs = |sql: &str| -> Result<Vec<(String, u64)>, StoreError> {
            let mut statement = self.transaction.prepare(sql)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .map(|(name, count)| (name, count.max(0) as u64))
                .collect())
        };
        let count = |sql: &str| -> Result<u64, StoreError> {
            let count: i64 = self.transaction.query_row(sql, [], |row| row.get(0))?;
            Ok(count.max(0) as u64)
        };
        Ok(StoreMetrics {
            live_sessions: pairs(
                "SELECT protocol, count(*) FROM sessions WHERE ended_at IS NULL GROUP BY protocol",
            )?,
            requests: pairs("SELECT state, count(*) FROM requests GROUP BY state")?,
            failed_authentications: count(
                "SELECT count(*) FROM audit_events WHERE type = 'auth_failed'",
            )?,
            recording_failures: count(
                "SELECT count(*) FROM audit_events WHERE type = 'recording.failed'",
            )?,
        })
    }

    /// Where a sink stands against the chain: its cursor, how many records it lags, and the
    /// time of the oldest it does not hold (for `audit sinks` and `/metrics`).
    pub fn sink_lag(&self, name: &str) -> Result<SinkLag, StoreError> {
        let head = self.audit_head()?.map_or(0, |(seq, _)| seq);
        let cursor = self.sink_cursor(name)?;
        let oldest = self
            .audit_after(cursor.seq, 1)?
            .first()
            .map(|record| record.ts);
        Ok(SinkLag {
            events: (head - cursor.seq).max(0) as u64,
            oldest,
            cursor,
        })
    }

    /// The furthest any sink's cursor has gone, and that sink's name.
    pub fn max_sink_cursor(&self) -> Result<Option<(String, i64)>, StoreError> {
        Ok(self
            .transaction
            .query_row(
                "SELECT name, seq FROM sink_cursors ORDER BY seq DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?)
    }

    /// A sink's cursor (0 for a sink that has delivered nothing).
    pub fn sink_cursor(&self, name: &str) -> Result<SinkCursor, StoreError> {
        let row = self
            .transaction
            .query_row(
                "SELECT seq, delivered_at, last_error, error_at FROM sink_cursors WHERE name = ?1",
                [name],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, Option<i64>>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, Option<i64>>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((seq, delivered_at, last_error, error_at)) = row else {
            return Ok(SinkCursor::default());
        };
        Ok(SinkCursor {
            seq,
            delivered_at: delivered_at.map(timestamp).transpose()?,
            last_error,
            error_at: error_at.map(timestamp).transpose()?,
        })
    }

    /// Moves a sink's cursor past what it now holds, and clears its error.
    pub fn advance_sink(&self, name: &str, seq: i64, at: OffsetDateTime) -> Result<(), StoreError> {
        self.transaction.execute(
            "INSERT INTO sink_cursors (name, seq, delivered_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET seq = excluded.seq,
               delivered_at = excluded.delivered_at, last_error = NULL, error_at = NULL",
            params![name, seq, at.unix_timestamp()],
        )?;
        Ok(())
    }

    /// Notes why a sink's delivery failed; its cursor stays.
    pub fn sink_failed(
        &self,
        name: &str,
        error: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.transaction.execute(
            "INSERT INTO sink_cursors (name, seq, last_error, error_at) VALUES (?1, 0, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET last_error = excluded.last_error,
               error_at = excluded.error_at",
            params![name, error, at.unix_timestamp()],
        )?;
        Ok(())
    }

    /// Visits every audit record in sequence order without loading the log into memory; stops at
    /// the first `Err` the visitor returns.
    pub fn audit_scan<E>(
        &self,
        mut visit: impl FnMut(AuditRecord) -> Result<(), E>,
    ) -> Result<Result<(), E>, StoreError> {
        let mut statement = self.transaction.prepare(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events ORDER BY seq"
        ))?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let record = read_audit(row)??;
            if let Err(error) = visit(record) {
                return Ok(Err(error));
            }
        }
        Ok(Ok(()))
    }

    /// Counts a failed authentication of `user` from `source` and returns how many in a row
    /// that is. A lock there that has run out starts the count again.
    pub fn record_failed_auth(
        &self,
        user: &str,
        source: &str,
        at: OffsetDateTime,
    ) -> Result<u32, StoreError> {
        let count: i64 = self.transaction.query_row(
            "INSERT INTO failed_auth (user, source, count, first_at, last_at)
             VALUES (?1, ?2, 1, ?3, ?3)
             ON CONFLICT (user, source) DO UPDATE SET
                 count = CASE WHEN locked_until <= excluded.last_at THEN 1 ELSE count + 1 END,
                 locked_until = CASE WHEN locked_until <= excluded.last_at THEN NULL
                                     ELSE locked_until END,
                 last_at = excluded.last_at
             RETURNING count",
            params![user, source, at.unix_timestamp()],
            |row| row.get(0),
        )?;
        Ok(count.clamp(0, u32::MAX as i64) as u32)
    }

    /// Forgets the failures of `user` from `source` after a success.
    pub fn clear_failed_auth(&self, user: &str, source: &str) -> Result<(), StoreError> {
        self.transaction.execute(
            "DELETE FROM failed_auth WHERE user = ?1 AND source = ?2",
            params![user, source],
        )?;
        Ok(())
    }

    /// Forgets failure counts whose last failure is before `before` and that lock nobody at
    /// `now`.
    pub fn prune_failed_auth(
        &self,
        before: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.transaction.execute(
            "DELETE FROM failed_auth WHERE last_at < ?1
                 AND (locked_until IS NULL OR locked_until <= ?2)",
            params![before.unix_timestamp(), now.unix_timestamp()],
        )?;
        Ok(())
    }

    /// Locks `user` at `source` until `until`.
    pub fn lock_at_source(
        &self,
        user: &str,
        source: &str,
        until: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.transaction.execute(
            "UPDATE failed_auth SET locked_until = ?3 WHERE user = ?1 AND source = ?2",
            params![user, source, until.unix_timestamp()],
        )?;
        Ok(())
    }

    /// Until when `user` is locked at `source`, if they are at `now`.
    pub fn locked_at_source(
        &self,
        user: &str,
        source: &str,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let until: Option<i64> = self
            .transaction
            .query_row(
                "SELECT locked_until FROM failed_auth
                 WHERE user = ?1 AND source = ?2 AND locked_until > ?3",
                params![user, source, now.unix_timestamp()],
                |row| row.get(0),
            )
            .optional()?;
        until.map(timestamp).transpose()
    }

    /// How many addresses `user` has failed from since their last success there.
    pub fn failing_sources(&self, user: &str) -> Result<u32, StoreError> {
        let count: i64 = self.transaction.query_row(
            "SELECT count(*) FROM failed_auth WHERE user = ?1",
            [user],
            |row| row.get(0),
        )?;
        Ok(count.clamp(0, u32::MAX as i64) as u32)
    }

    /// Locks `user` everywhere (an operator's lock). `false`: they were locked already.
    pub fn lock_user(&self, lock: &UserLock) -> Result<bool, StoreError> {
        let changed = self.transaction.execute(
            "INSERT INTO user_locks (user, locked_at, locked_by, reason) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user) DO NOTHING",
            params![
                lock.user,
                lock.locked_at.unix_timestamp(),
                lock.locked_by,
                lock.reason
            ],
        )?;
        Ok(changed > 0)
    }

    /// The operator's lock of `user`, if any.
    pub fn user_lock(&self, user: &str) -> Result<Option<UserLock>, StoreError> {
        let row: Option<(String, i64, String, String)> = self
            .transaction
            .query_row(
                "SELECT user, locked_at, locked_by, reason FROM user_locks WHERE user = ?1",
                [user],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()?;
        row.map(|(user, locked_at, locked_by, reason)| {
            Ok(UserLock {
                user,
                locked_at: timestamp(locked_at)?,
                locked_by,
                reason,
            })
        })
        .transpose()
    }

    /// Lifts every lock of `user`: the operator's, and those at single addresses with their
    /// counts. Returns whether there was any.
    pub fn unlock_user(&self, user: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let everywhere = self
            .transaction
            .execute("DELETE FROM user_locks WHERE user = ?1", [user])?;
        let at_sources = self.transaction.execute(
            "DELETE FROM failed_auth WHERE user = ?1 AND locked_until > ?2",
            params![user, now.unix_timestamp()],
        )?;
        self.transaction
            .execute("DELETE FROM failed_auth WHERE user = ?1", [user])?;
        Ok(everywhere + at_sources > 0)
    }
}

/// An operator's lock of a user everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLock {
    pub user: String,
    pub locked_at: OffsetDateTime,
    /// The actor's label.
    pub locked_by: String,
    pub reason: String,
}

/// A session row as the session core writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub grant_id: Option<String>,
    pub user: String,
    pub target: String,
    pub protocol: String,
    pub client_address: String,
    pub started_at: OffsetDateTime,
    pub ended_at: Option<OffsetDateTime>,
    pub end_reason: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Statements run, for database sessions.
    pub statements: u64,
}

/// What a session moved, written when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionTotals {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub statements: u64,
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Sessions not ended yet, by protocol.
    pub live_sessions: Vec<(String, u64)>,
    /// Access requests by state.
    pub requests: Vec<(String, u64)>,
    pub failed_authentications: u64,
    pub recording_failures: u64,
}

/// A sink's cursor and lag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkLag {
    pub cursor: SinkCursor,
    /// Audit records after the cursor.
    pub events: u64,
    /// When the oldest of them was made.
    pub oldest: Option<OffsetDateTime>,
}

/// Where an audit sink stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkCursor {
    /// The last audit seq the sink holds (with the statements its checkpoints anchor).
    pub seq: i64,
    pub delivered_at: Option<OffsetDateTime>,
    /// Why the last delivery failed, while it is failing.
    pub last_error: Option<String>,
    pub error_at: Option<OffsetDateTime>,
}

/// A recording row: one per recorded channel.
/// Which sessions a search asks for, and which the searcher may see (issue #19).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    pub user: Option<String>,
    pub target: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub limit: u32,
    /// `None`: every session; otherwise only this user's own and those on these targets.
    pub visible_to: Option<(String, Vec<String>)>,
    /// Only these sessions (those a search found), when set.
    pub ids: Option<Vec<String>>,
}

/// A session as a reviewer lists it: the row, the request's reason and approvers, and its
/// recordings (`channel:kind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub session: SessionRow,
    pub request_id: Option<String>,
    pub reason: Option<String>,
    pub approvers: Vec<String>,
    pub recordings: Vec<(u32, String)>,
    /// What a search (`--grep`) found in it, in order.
    pub hits: Vec<search::Entry>,
}

/// What the access review report (issue #19) reads for a period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportData {
    /// Requests filed in the period.
    pub requests: Vec<ReportRequest>,
    /// Sessions started in the period: (id, user, target, statements).
    pub sessions: Vec<(String, String, String, u64)>,
    /// Refusals in the period: (user, target, event type).
    pub refusals: Vec<(String, String, String)>,
    /// Grants active at the period's end: (grant, request id, approvers).
    pub standing: Vec<(Grant, Vec<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRequest {
    pub id: String,
    pub requester: String,
    pub target: String,
    pub reason: String,
    pub duration_seconds: u64,
    pub state: String,
    pub approvers: Vec<String>,
    /// How long its grant lasted: from its start to its end, revoke or expiry.
    pub granted_seconds: Option<u64>,
}

/// What `Tx::prune_audit` removed, and which sinks held it back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The last removed record's seq and hash, when any was removed.
    pub through: Option<(i64, String)>,
    pub events: u64,
    /// The recordings and query logs whose rows went: their files are the caller's to remove.
    pub files: Vec<PathBuf>,
    pub held_by: Vec<String>,
    /// Sessions of which nothing is kept any more: their search index entries go too.
    pub sessions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingRow {
    pub session_id: String,
    pub channel: u32,
    pub kind: String,
    pub path: String,
    pub sha256: Option<String>,
    pub size: Option<u64>,
}

impl Tx<'_> {
    pub fn insert_session(&self, session: &SessionRow) -> Result<(), StoreError> {
        self.transaction.execute(
            "INSERT INTO sessions (id, grant_id, user, target, protocol, client_address, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                session.id,
                session.grant_id,
                session.user,
                session.target,
                session.protocol,
                session.client_address,
                session.started_at.unix_timestamp(),
            ],
        )?;
        Ok(())
    }

    /// Ends a session once; returns false if it had already ended.
    pub fn end_session(
        &self,
        id: &str,
        at: OffsetDateTime,
        reason: &str,
        totals: SessionTotals,
    ) -> Result<bool, StoreError> {
        let changed = self.transaction.execute(
            "UPDATE sessions SET ended_at = ?2, end_reason = ?3, bytes_in = ?4, bytes_out = ?5,
                    statements = ?6
             WHERE id = ?1 AND ended_at IS NULL",
            params![
                id,
                at.unix_timestamp(),
                reason,
                totals.bytes_in as i64,
                totals.bytes_out as i64,
                totals.statements as i64
            ],
        )?;
        Ok(changed == 1)
    }

    /// Everything the access review report of [from, to) needs (issue #19).
    pub fn report_data(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<ReportData, StoreError> {
        let (from, to) = (from.unix_timestamp(), to.unix_timestamp());
        let mut data = ReportData::default();
        let mut statement = self.transaction.prepare(
            "SELECT r.id, r.requester, r.target, r.reason, r.duration_seconds, r.state,
                    (SELECT group_concat(approver, char(10)) FROM
                       (SELECT approver FROM approvals WHERE request_id = r.id ORDER BY at, approver)),
                    g.starts_at, coalesce(min(g.ended_at, g.ends_at), g.ends_at)
             FROM requests AS r LEFT JOIN grants AS g ON g.request_id = r.id
             WHERE r.created_at >= ?1 AND r.created_at < ?2
             ORDER BY r.created_at, r.rowid",
        )?;
        let rows = statement
            .query_map(params![from, to], |row| {
                let approvers: Option<String> = row.get(6)?;
                let starts: Option<i64> = row.get(7)?;
                let ends: Option<i64> = row.get(8)?;
                Ok(ReportRequest {
                    id: row.get(0)?,
                    requester: row.get(1)?,
                    target: row.get(2)?,
                    reason: row.get(3)?,
                    duration_seconds: row.get::<_, i64>(4)?.max(0) as u64,
                    state: row.get(5)?,
                    approvers: approvers
                        .map(|text| text.split('\n').map(str::to_string).collect())
                        .unwrap_or_default(),
                    granted_seconds: starts
                        .zip(ends)
                        .map(|(starts, ends)| (ends - starts).max(0) as u64),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        data.requests = rows;
        let mut statement = self.transaction.prepare(
            "SELECT id, user, target, statements FROM sessions
             WHERE started_at >= ?1 AND started_at < ?2 ORDER BY started_at, id",
        )?;
        data.sessions = statement
            .query_map(params![from, to], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get::<_, i64>(3)?.max(0) as u64,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut statement = self.transaction.prepare(
            "SELECT actor, target, type FROM audit_events
             WHERE ts >= ?1 AND ts < ?2 AND actor IS NOT NULL AND target IS NOT NULL
               AND type IN ('request_refused', 'session_refused', 'subsystem.refused',
                            'forward.refused')
             ORDER BY seq",
        )?;
        data.refusals = statement
            .query_map(params![from, to], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut statement = self.transaction.prepare(
            "SELECT g.id FROM grants AS g
             WHERE g.starts_at <= ?1 AND g.ends_at > ?1
               AND (g.ended_at IS NULL OR g.ended_at > ?1)
             ORDER BY g.user, g.target, g.id",
        )?;
        let ids = statement
            .query_map([to], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        for id in ids {
            let Some(grant) = self.grant(&id)? else {
                continue;
            };
            let approvers = self
                .request(&grant.request_id)?
                .map(|request| {
                    request
                        .approvals
                        .iter()
                        .map(|approval| approval.approver.clone())
                        .collect()
                })
                .unwrap_or_default();
            data.standing.push((grant, approvers));
        }
        Ok(data)
    }

    /// Asks for a live session's end; false when it is not live.
    pub fn request_kill(&self, id: &str, by: &str, reason: &str) -> Result<bool, StoreError> {
        let changed = self.transaction.execute(
            "UPDATE sessions SET kill_requested_by = ?2, kill_reason = ?3
             WHERE id = ?1 AND ended_at IS NULL AND kill_requested_by IS NULL",
            params![id, by, reason],
        )?;
        Ok(changed == 1)
    }

    /// Live sessions whose end was asked for: (id, by, reason). Read by the server four times a
    /// second (a partial index keeps it to the few pending).
    pub fn pending_kills(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut statement = self.transaction.prepare_cached(
            "SELECT id, kill_requested_by, coalesce(kill_reason, '') FROM sessions
             WHERE kill_requested_by IS NOT NULL AND ended_at IS NULL",
        )?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Who asked for a session's end, and why, if anyone did.
    pub fn kill_request(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .transaction
            .query_row(
                "SELECT kill_requested_by, kill_reason FROM sessions
                 WHERE id = ?1 AND kill_requested_by IS NOT NULL",
                [id],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    ))
                },
            )
            .optional()?)
    }

    pub fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let row = self
            .transaction
            .query_row(
                "SELECT id, grant_id, user, target, protocol, client_address, started_at,
                        ended_at, end_reason, bytes_in, bytes_out, statements
                 FROM sessions WHERE id = ?1",
                [id],
                |row| {
                    Ok((
                        SessionRow {
                            id: row.get(0)?,
                            grant_id: row.get(1)?,
                            user: row.get(2)?,
                            target: row.get(3)?,
                            protocol: row.get(4)?,
                            client_address: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
                            started_at: OffsetDateTime::UNIX_EPOCH,
                            ended_at: None,
                            end_reason: row.get(8)?,
                            bytes_in: row.get::<_, i64>(9)?.max(0) as u64,
                            bytes_out: row.get::<_, i64>(10)?.max(0) as u64,
                            statements: row.get::<_, i64>(11)?.max(0) as u64,
                        },
                        row.get::<_, i64>(6)?,
                        row.get::<_, Option<i64>>(7)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(session, started, ended)| {
            Ok(SessionRow {
                started_at: timestamp(started)?,
                ended_at: ended.map(timestamp).transpose()?,
                ..session
            })
        })
        .transpose()
    }

    pub fn insert_recording(
        &self,
        recording: &RecordingRow,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.transaction.execute(
            "INSERT INTO recordings (session_id, channel, kind, path, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                recording.session_id,
                recording.channel,
                recording.kind,
                recording.path,
                at.unix_timestamp()
            ],
        )?;
        Ok(())
    }

    pub fn finalize_recording(
        &self,
        session_id: &str,
        channel: u32,
        sha256: &str,
        size: u64,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.transaction.execute(
            "UPDATE recordings SET sha256 = ?3, size = ?4, finalized_at = ?5
             WHERE session_id = ?1 AND channel = ?2",
            params![
                session_id,
                channel,
                sha256,
                size as i64,
                at.unix_timestamp()
            ],
        )?;
        // The session row keeps the latest finalized recording for a quick look.
        self.transaction.execute(
            "UPDATE sessions SET recording_path = (SELECT path FROM recordings
                 WHERE session_id = ?1 AND channel = ?2),
               recording_sha256 = ?3, recording_size = ?4
             WHERE id = ?1",
            params![session_id, channel, sha256, size as i64],
        )?;
        Ok(())
    }

    pub fn recordings(&self, session_id: &str) -> Result<Vec<RecordingRow>, StoreError> {
        let mut statement = self.transaction.prepare(
            "SELECT session_id, channel, kind, path, sha256, size FROM recordings
             WHERE session_id = ?1 ORDER BY channel",
        )?;
        let rows = statement
            .query_map([session_id], |row| {
                Ok(RecordingRow {
                    session_id: row.get(0)?,
                    channel: row.get(1)?,
                    kind: row.get(2)?,
                    path: row.get(3)?,
                    sha256: row.get(4)?,
                    size: row.get::<_, Option<i64>>(5)?.map(|size| size.max(0) as u64),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Recordings whose row came after `rowid` (the search indexer's cursor), oldest first, at
    /// most `limit`, each with its rowid.
    pub fn recordings_after(
        &self,
        rowid: i64,
        limit: u32,
    ) -> Result<Vec<(i64, RecordingRow)>, StoreError> {
        let mut statement = self.transaction.prepare(
            "SELECT rowid, session_id, channel, kind, path, sha256, size FROM recordings
             WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        )?;
        let rows = statement
            .query_map(params![rowid, limit], |row| {
                Ok((
                    row.get(0)?,
                    RecordingRow {
                        session_id: row.get(1)?,
                        channel: row.get(2)?,
                        kind: row.get(3)?,
                        path: row.get(4)?,
                        sha256: row.get(5)?,
                        size: row.get::<_, Option<i64>>(6)?.map(|size| size.max(0) as u64),
                    },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// `file.operation` records after `seq`, at most `limit`: (seq, session, seconds since the
    /// session started, detail).
    pub fn file_operations_after(
        &self,
        seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String, i64, String)>, StoreError> {
        let mut statement = self.transaction.prepare(
            "SELECT a.seq, a.session_id, a.ts - coalesce(s.started_at, a.ts), a.detail
             FROM audit_events AS a LEFT JOIN sessions AS s ON s.id = a.session_id
             WHERE a.seq > ?1 AND a.type = 'file.operation' AND a.session_id IS NOT NULL
             ORDER BY a.seq LIMIT ?2",
        )?;
        let rows = statement
            .query_map(params![seq, limit], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The last audit seq (0 when empty).
    pub fn last_seq(&self) -> Result<i64, StoreError> {
        Ok(self.transaction.query_row(
            "SELECT coalesce(max(seq), 0) FROM audit_events",
            [],
            |row| row.get(0),
        )?)
    }

    /// The host key remembered for an `accept-first` target, in OpenSSH form.
    pub fn known_host(&self, target: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .transaction
            .query_row(
                "SELECT host_key FROM known_hosts WHERE target = ?1",
                [target],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Remembers the first host key seen for an `accept-first` target; never overwrites.
    pub fn remember_host(
        &self,
        target: &str,
        host_key: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.transaction.execute(
            "INSERT INTO known_hosts (target, host_key, first_seen) VALUES (?1, ?2, ?3)
             ON CONFLICT (target) DO NOTHING",
            params![target, host_key, at.unix_timestamp()],
        )?;
        Ok(())
    }
}

fn timestamp(seconds: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp(seconds).map_err(|_| StoreError::Corrupt {
        column: "timestamp",
        value: seconds.to_string(),
    })
}

/// A `requests` row as stored, before its strings become typed values.
struct RequestRow {
    id: String,
    requester: String,
    target: String,
    duration_seconds: i64,
    reason: String,
    state: String,
    created_at: i64,
    decided_at: Option<i64>,
    decided_by: Option<String>,
    decision_reason: Option<String>,
    grant_id: Option<String>,
}

impl RequestRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<RequestRow> {
        Ok(RequestRow {
            id: row.get(0)?,
            requester: row.get(1)?,
            target: row.get(2)?,
            duration_seconds: row.get(3)?,
            reason: row.get(4)?,
            state: row.get(5)?,
            created_at: row.get(6)?,
            decided_at: row.get(7)?,
            decided_by: row.get(8)?,
            decision_reason: row.get(9)?,
            grant_id: row.get(10)?,
        })
    }
}

/// A `grants` row as stored.
struct GrantRow {
    id: String,
    request_id: String,
    user: String,
    target: String,
    state: String,
    starts_at: i64,
    ends_at: i64,
    ended_at: Option<i64>,
    revoked_by: Option<String>,
    revoke_reason: Option<String>,
}

impl GrantRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<GrantRow> {
        Ok(GrantRow {
            id: row.get(0)?,
            request_id: row.get(1)?,
            user: row.get(2)?,
            target: row.get(3)?,
            state: row.get(4)?,
            starts_at: row.get(5)?,
            ends_at: row.get(6)?,
            ended_at: row.get(7)?,
            revoked_by: row.get(8)?,
            revoke_reason: row.get(9)?,
        })
    }

    fn finish(self) -> Result<Grant, StoreError> {
        Ok(Grant {
            state: GrantState::parse(&self.state).ok_or(StoreError::Corrupt {
                column: "grants.state",
                value: self.state.clone(),
            })?,
            starts_at: timestamp(self.starts_at)?,
            ends_at: timestamp(self.ends_at)?,
            ended_at: self.ended_at.map(timestamp).transpose()?,
            id: self.id,
            request_id: self.request_id,
            user: self.user,
            target: self.target,
            revoked_by: self.revoked_by,
            revoke_reason: self.revoke_reason,
        })
    }
}

fn read_audit(row: &Row<'_>) -> rusqlite::Result<Result<AuditRecord, StoreError>> {
    read_audit_from(row, 0)
}

/// An audit record from the row's columns `first..first + 12`, in `AUDIT_COLUMNS` order.
fn read_audit_from(
    row: &Row<'_>,
    first: usize,
) -> rusqlite::Result<Result<AuditRecord, StoreError>> {
    let ts: i64 = row.get(first + 2)?;
    let record = AuditRecord {
        seq: row.get(first)?,
        id: row.get(first + 1)?,
        ts: OffsetDateTime::UNIX_EPOCH,
        event_type: row.get(first + 3)?,
        actor: row.get(first + 4)?,
        target: row.get(first + 5)?,
        request_id: row.get(first + 6)?,
        grant_id: row.get(first + 7)?,
        session_id: row.get(first + 8)?,
        detail: row.get(first + 9)?,
        prev_hash: row.get(first + 10)?,
        hash: row.get(first + 11)?,
    };
    Ok(timestamp(ts).map(|ts| AuditRecord { ts, ..record }))
}
