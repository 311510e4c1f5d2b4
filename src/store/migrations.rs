//! Numbered schema migrations, applied in order at start, each in its own transaction together with
//! the `user_version` bump, so a crash mid-migration leaves the previous version intact.
//!
//! Append new migrations; never edit one that has shipped.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: the access lifecycle, sessions, audit log and failed-auth counters (issue #2).
    "
    CREATE TABLE requests (
        id               TEXT PRIMARY KEY,
        requester        TEXT NOT NULL,
        target           TEXT NOT NULL,
        duration_seconds INTEGER NOT NULL CHECK (duration_seconds > 0),
        reason           TEXT NOT NULL CHECK (length(reason) > 0),
        state            TEXT NOT NULL
                         CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'cancelled')),
        created_at       INTEGER NOT NULL,
        decided_at       INTEGER,
        decided_by       TEXT,
        decision_reason  TEXT,
        grant_id         TEXT
    ) STRICT;
    CREATE INDEX requests_by_state ON requests (state, created_at);

    CREATE TABLE approvals (
        request_id TEXT NOT NULL REFERENCES requests (id),
        approver   TEXT NOT NULL,
        at         INTEGER NOT NULL,
        PRIMARY KEY (request_id, approver)
    ) STRICT;

    CREATE TABLE grants (
        id            TEXT PRIMARY KEY,
        request_id    TEXT NOT NULL UNIQUE REFERENCES requests (id),
        user          TEXT NOT NULL,
        target        TEXT NOT NULL,
        state         TEXT NOT NULL CHECK (state IN ('active', 'expired', 'revoked')),
        starts_at     INTEGER NOT NULL,
        ends_at       INTEGER NOT NULL CHECK (ends_at > starts_at),
        ended_at      INTEGER,
        revoked_by    TEXT,
        revoke_reason TEXT
    ) STRICT;
    CREATE INDEX grants_by_user_target ON grants (user, target, state);
    CREATE INDEX grants_by_state_end ON grants (state, ends_at);
    CREATE INDEX grants_by_ended ON grants (ended_at);

    CREATE TABLE sessions (
        id               TEXT PRIMARY KEY,
        grant_id         TEXT REFERENCES grants (id),
        user             TEXT NOT NULL,
        target           TEXT NOT NULL,
        protocol         TEXT NOT NULL,
        client_address   TEXT,
        started_at       INTEGER NOT NULL,
        ended_at         INTEGER,
        end_reason       TEXT,
        recording_path   TEXT,
        recording_sha256 TEXT,
        recording_size   INTEGER,
        bytes_in         INTEGER NOT NULL DEFAULT 0,
        bytes_out        INTEGER NOT NULL DEFAULT 0,
        statements       INTEGER NOT NULL DEFAULT 0
    ) STRICT;

    CREATE TABLE audit_events (
        seq        INTEGER PRIMARY KEY,
        id         TEXT NOT NULL UNIQUE,
        ts         INTEGER NOT NULL,
        type       TEXT NOT NULL,
        actor      TEXT,
        target     TEXT,
        request_id TEXT,
        grant_id   TEXT,
        session_id TEXT,
        detail     TEXT NOT NULL,
        prev_hash  TEXT NOT NULL,
        hash       TEXT NOT NULL
    ) STRICT;

    CREATE TABLE failed_auth (
        user     TEXT NOT NULL,
        source   TEXT NOT NULL,
        count    INTEGER NOT NULL,
        first_at INTEGER NOT NULL,
        last_at  INTEGER NOT NULL,
        PRIMARY KEY (user, source)
    ) STRICT;

    CREATE TABLE known_hosts (
        target     TEXT PRIMARY KEY,
        host_key   TEXT NOT NULL,
        first_seen INTEGER NOT NULL
    ) STRICT;
    ",
    // 2: one row per recorded channel, with its hash once finalized (issue #3).
    "
    CREATE TABLE recordings (
        session_id   TEXT NOT NULL REFERENCES sessions (id),
        channel      INTEGER NOT NULL,
        kind         TEXT NOT NULL,
        path         TEXT NOT NULL,
        started_at   INTEGER NOT NULL,
        finalized_at INTEGER,
        sha256       TEXT,
        size         INTEGER,
        PRIMARY KEY (session_id, channel)
    ) STRICT;
    ",
    // 3: the notification outbox and the Slack message of each request (issue #5). A row is
    // written in the transaction of the request's change and deleted once Slack shows it.
    "
    CREATE TABLE notifications (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE slack_messages (
        request_id     TEXT PRIMARY KEY,
        channel        TEXT NOT NULL,
        ts             TEXT NOT NULL,
        -- The decided state the requester was told of by direct message, once told.
        requester_told TEXT
    ) STRICT;

    -- Security alerts waiting for the alerts channel: the audit record each one shows.
    CREATE TABLE alerts (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        audit_seq INTEGER NOT NULL
    ) STRICT;
    ",
    // 4: lockout (issue #17). A user locked at one address after too many failures until
    // `locked_until`; an operator's lock of a user everywhere until lifted.
    "
    ALTER TABLE failed_auth ADD COLUMN locked_until INTEGER;

    CREATE TABLE user_locks (
        user      TEXT PRIMARY KEY,
        locked_at INTEGER NOT NULL,
        locked_by TEXT NOT NULL,
        reason    TEXT NOT NULL
    ) STRICT;
    ",
    // 5: audit sinks (issue #18). Each sink's durable cursor: the last audit seq it holds (the
    // statements of a query log go with the `pg.checkpoint` that anchors them), and its last
    // error while it is failing.
    "
    CREATE TABLE sink_cursors (
        name         TEXT PRIMARY KEY,
        seq          INTEGER NOT NULL,
        delivered_at INTEGER,
        last_error   TEXT,
        error_at     INTEGER
    ) STRICT;
    ",
    // 6: a session's checkpoints found without a scan (sinks, verify; issue #18 review).
    "
    CREATE INDEX audit_events_session_type ON audit_events (session_id, type, seq);
    ",
    // 7: counts by type for `/metrics` without a scan (issue #18).
    "
    CREATE INDEX audit_events_type ON audit_events (type);
    ",
    // 8: when a recording or query log was archived and verified (issue #18).
    "
    ALTER TABLE recordings ADD COLUMN archived_at INTEGER;
    ",
    // 9: finding sessions by time, user and target (issue #19).
    "
    CREATE INDEX sessions_by_start ON sessions (started_at);
    CREATE INDEX sessions_by_user_start ON sessions (user, started_at);
    CREATE INDEX sessions_by_target_start ON sessions (target, started_at);
    ",
    // 10: a live session's kill, asked for by a reviewer or an approver, possibly from another
    // process (the host CLI); the server's watch of the session reads it (issue #19).
    "
    ALTER TABLE sessions ADD COLUMN kill_requested_by TEXT;
    ALTER TABLE sessions ADD COLUMN kill_reason TEXT;
    ",
    // 11: the kills still pending, which the server reads four times a second (issue #19).
    "
    CREATE INDEX sessions_kill_pending ON sessions (id)
        WHERE kill_requested_by IS NOT NULL AND ended_at IS NULL;
    ",
];

/// Brings the schema to the newest version; refuses a database from a newer build.
pub fn apply(connection: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let current: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if current > known {
        return Err(StoreError::TooNew {
            found: current,
            known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have migrated while this one waited for the lock.
        let now: i64 = transaction.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if now > index as i64 {
            continue;
        }
        transaction.execute_batch(sql)?;
        transaction.pragma_update(None, "user_version", index as i64 + 1)?;
        transaction.commit()?;
    }
    Ok(())
}
