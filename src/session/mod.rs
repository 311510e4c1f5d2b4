//! The protocol-blind session core: one live session of a user on a target under a grant.
//!
//! A front end opens a `Session` after the grant check, asks it for recorders as channels start,
//! counts bytes through it, waits on its `GrantWatch` for the warning and the end, and ends it once
//! with a reason. The session writes its row, its recordings' rows and its audit events
//! (`session.started`, `recording.finalized`, `recording.failed`, `session.ended`).
//!
//! **Architecture Invariant:** nothing here knows SSH, PostgreSQL, HTTP or SQL; a session exists
//! only while its grant is active, and the watch ends it when the grant ends however it ends.

pub mod admit;
pub mod casts;
pub mod queries;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::access::model::{Grant, GrantState};
use crate::access::{Access, AccessError};
use crate::audit::AuditEvent;
use crate::config::{RecordingFailurePolicy, Target};
use crate::ids::IdKind;
use crate::recording::asciicast::Header;
use crate::recording::querylog::{LineChain, QueryLog, Statement};
use crate::recording::{Capture, Finalized, Recorder, RecordingError, dated_path, recording_path};
use crate::store::{RecordingRow, SessionRow, SessionTotals, StoreError};

/// The health of a recording written off the relay (`casts`, `queries`): set by the writer
/// thread, read by the relay at every packet or second.
#[derive(Debug, Default)]
struct RecordingHealth(std::sync::atomic::AtomicU8);

impl RecordingHealth {
    /// The recording is written.
    const RECORDING: u8 = 0;
    /// A write failed and the target's policy lets the session go on unrecorded.
    const BROKEN_CONTINUE: u8 = 1;
    /// A write failed (or the writer is gone): the session must end.
    const MUST_END: u8 = 2;

    /// A write failed: audited once, and the target's policy decides what follows.
    fn failed(&self, session: &Session, error: &RecordingError) {
        let state = if session.recording_failed(error) {
            Self::MUST_END
        } else {
            Self::BROKEN_CONTINUE
        };
        self.0.store(state, Ordering::SeqCst);
    }

    /// The session must end whatever the policy: the writer is gone, a lock is poisoned, or the
    /// statements' audit failed.
    fn fail_closed(&self) {
        self.0.store(Self::MUST_END, Ordering::SeqCst);
    }

    fn must_end(&self) -> bool {
        self.0.load(Ordering::SeqCst) == Self::MUST_END
    }

    fn recording(&self) -> bool {
        self.0.load(Ordering::SeqCst) == Self::RECORDING
    }
}

/// Why a session ended: a closed set, written by name in `session.ended` with who caused it
/// (issue #17: it decides what the user is told, what the audit says and whether to alert).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client closed the connection.
    Closed,
    /// Refused after it opened, by the bastion's configuration (a container's host that is not
    /// an SSH target, a database target reached over SSH).
    Refused,
    TargetUnreachable,
    /// The target sent what the bastion cannot follow.
    TargetProtocolError,
    RecordingFailed,
    /// The client passed a per-connection limit of what the bastion tracks.
    TrackingLimit,
    /// The client's requests and the target's answers stopped matching as the bastion tracks
    /// them, so what ran could no longer be recorded.
    Untracked,
    GrantRevoked,
    GrantExpired,
    Shutdown,
    /// The bastion could not keep the session time-boxed (its grant watch was lost).
    BastionError,
    /// A reviewer or an approver ended it (`kill`, issue #19).
    Killed,
}

/// Who caused a session's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Client,
    Target,
    Bastion,
    /// The grant ended: revoked or expired.
    Grant,
    /// A reviewer or an approver ended the session.
    Reviewer,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::Refused => "refused",
            EndReason::TargetUnreachable => "target_unreachable",
            EndReason::TargetProtocolError => "target_protocol_error",
            EndReason::RecordingFailed => "recording_failed",
            EndReason::TrackingLimit => "tracking_limit",
            EndReason::Untracked => "untracked",
            EndReason::GrantRevoked => "grant_revoked",
            EndReason::GrantExpired => "grant_expired",
            EndReason::Shutdown => "shutdown",
            EndReason::BastionError => "bastion_error",
            EndReason::Killed => "killed",
        }
    }

    pub fn cause(self) -> Cause {
        match self {
            EndReason::Closed | EndReason::TrackingLimit | EndReason::Untracked => Cause::Client,
            EndReason::TargetUnreachable | EndReason::TargetProtocolError => Cause::Target,
            EndReason::Refused
            | EndReason::RecordingFailed
            | EndReason::Shutdown
            | EndReason::BastionError => Cause::Bastion,
            EndReason::GrantRevoked | EndReason::GrantExpired => Cause::Grant,
            EndReason::Killed => Cause::Reviewer,
        }
    }
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Client => "client",
            Cause::Target => "target",
            Cause::Bastion => "bastion",
            Cause::Grant => "grant",
            Cause::Reviewer => "reviewer",
        }
    }
}

/// A file operation as audited, whatever protocol carried it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileOperation {
    pub operation: &'static str,
    pub path: String,
    pub to: Option<String>,
    pub attributes: Option<String>,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// Why a session could not start; the front end words it for its protocol.
#[derive(Debug, thiserror::Error)]
pub enum SessionRefusal {
    #[error("unknown target {0}; list the ones you may request with: targets")]
    UnknownTarget(String),
    #[error("no active grant for {target}")]
    NoGrant { target: String },
    #[error("the bastion could not check your access; nothing was connected")]
    Store(#[from] StoreError),
}

impl From<AccessError> for SessionRefusal {
    fn from(error: AccessError) -> Self {
        match error {
            AccessError::Store(error) => SessionRefusal::Store(error),
            other => SessionRefusal::Store(StoreError::Corrupt {
                column: "access",
                value: other.to_string(),
            }),
        }
    }
}

/// A live session. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    user: String,
    protocol: &'static str,
    target: Target,
    grant: Grant,
    access: Access,
    started_at: OffsetDateTime,
    next_channel: AtomicU32,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    statements: AtomicU64,
    ended: AtomicBool,
}

/// A session counts as live until its last handle is gone: its front end has ended it and the
/// query writer and recorders hold nothing of it any more. Shutdown waits for that count.
impl Drop for Inner {
    fn drop(&mut self) {
        self.access.live_sessions().fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Session")
            .field("id", &self.inner.id)
            .field("user", &self.inner.user)
            .field("target", &self.inner.target.name)
            .finish()
    }
}

impl Session {
    /// Checks the grant and records the start, with what the client asked to change in the
    /// target session (`parameters`, as forwarded). Call on a blocking thread (it writes the
    /// store).
    pub fn open(
        access: &Access,
        user: &str,
        target_name: &str,
        protocol: &'static str,
        source: &str,
        parameters: Vec<(String, String)>,
    ) -> Result<Session, SessionRefusal> {
        let target = access
            .config()
            .target(target_name)
            .cloned()
            .ok_or_else(|| SessionRefusal::UnknownTarget(target_name.to_string()))?;
        let grant =
            access
                .active_grant(user, target_name)?
                .ok_or_else(|| SessionRefusal::NoGrant {
                    target: target_name.to_string(),
                })?;
        let now = access.now();
        let id = access.store().write(|tx| {
            let id = tx.fresh_id(IdKind::Session)?;
            tx.insert_session(&SessionRow {
                id: id.clone(),
                grant_id: Some(grant.id.clone()),
                user: user.to_string(),
                target: target_name.to_string(),
                protocol: protocol.to_string(),
                client_address: source.to_string(),
                started_at: now,
                ended_at: None,
                end_reason: None,
                bytes_in: 0,
                bytes_out: 0,
                statements: 0,
            })?;
            tx.append_audit(
                &AuditEvent::SessionStarted {
                    session_id: id.clone(),
                    user: user.to_string(),
                    target: target_name.to_string(),
                    grant_id: grant.id.clone(),
                    protocol,
                    source: source.to_string(),
                    parameters,
                },
                now,
            )?;
            Ok(id)
        })?;
        tracing::info!(session = %id, user, target = target_name, grant = %grant.id, "session started");
        access.live_sessions().fetch_add(1, Ordering::SeqCst);
        Ok(Session {
            inner: Arc::new(Inner {
                id,
                user: user.to_string(),
                protocol,
                target,
                grant,
                access: access.clone(),
                started_at: now,
                next_channel: AtomicU32::new(0),
                bytes_in: AtomicU64::new(0),
                bytes_out: AtomicU64::new(0),
                statements: AtomicU64::new(0),
                ended: AtomicBool::new(false),
            }),
        })
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn user(&self) -> &str {
        &self.inner.user
    }

    pub fn target(&self) -> &Target {
        &self.inner.target
    }

    pub fn grant(&self) -> &Grant {
        &self.inner.grant
    }

    /// `alice → web-1`, the title of every recording.
    pub fn title(&self) -> String {
        format!("{} → {}", self.inner.user, self.inner.target.name)
    }

    /// The index of the next channel, counted from 0 in the order channels open.
    pub fn next_channel(&self) -> u32 {
        self.inner.next_channel.fetch_add(1, Ordering::SeqCst)
    }

    /// Bytes from the client towards the target.
    pub fn count_in(&self, bytes: usize) {
        self.inner
            .bytes_in
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes from the target towards the client.
    pub fn count_out(&self, bytes: usize) {
        self.inner
            .bytes_out
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Opens the recording of `channel`. Call on a blocking thread.
    pub fn start_recording(
        &self,
        channel: u32,
        header: &Header,
        capture: Capture,
    ) -> Result<Recorder, RecordingError> {
        let config = self.inner.access.config();
        let path = recording_path(
            &config.server.recordings_dir,
            self.inner.started_at,
            &self.inner.id,
            channel,
            "cast",
        );
        let recorder = Recorder::create(path, header, capture)?;
        self.insert_recording_row(channel, crate::recording::CAST_KIND, recorder.path())?;
        Ok(recorder)
    }

    /// Finalizes a recording: hash and size into its row and a `recording.finalized` event.
    pub fn finish_recording(
        &self,
        channel: u32,
        recorder: Recorder,
    ) -> Result<Finalized, RecordingError> {
        let finalized = recorder.finalize()?;
        self.store_finalized(channel, finalized)
    }

    /// Opens the query log of a PostgreSQL session (channel 0 of its recordings). Call on a
    /// blocking thread.
    pub fn start_query_log(&self) -> Result<QueryLog, RecordingError> {
        let config = self.inner.access.config();
        let path = dated_path(
            &config.server.recordings_dir,
            self.inner.started_at,
            &format!("{}.pg.jsonl", self.inner.id),
        );
        let record_parameters = match &self.inner.target.kind {
            crate::config::TargetKind::Postgres(postgres) => postgres.record_parameters,
            _ => true,
        };
        let log = QueryLog::create(path, &self.inner.id, record_parameters)?;
        self.insert_recording_row(0, crate::recording::QUERY_LOG_KIND, log.path())?;
        Ok(log)
    }

    /// Finalizes the query log: hash and size into its row and a `recording.finalized` event.
    pub fn finish_query_log(&self, log: QueryLog) -> Result<Finalized, RecordingError> {
        let finalized = log.finalize()?;
        self.store_finalized(0, finalized)
    }

    /// Counts the statements that ran, for the session's row.
    fn count_statements(&self, statements: &[Statement]) {
        let ran = statements
            .iter()
            .filter(|statement| statement.protocol.ran())
            .count();
        self.inner
            .statements
            .fetch_add(ran as u64, Ordering::Relaxed);
    }

    /// The `pg.checkpoint` of the query log as it stands (issue #18; the query writer stores
    /// it, see `queries`).
    fn query_checkpoint(&self, chain: &LineChain) -> AuditEvent {
        AuditEvent::PgCheckpoint {
            session_id: self.inner.id.clone(),
            user: self.inner.user.clone(),
            target: self.inner.target.name.clone(),
            lines: chain.lines,
            h: chain.h.clone(),
        }
    }

    /// The `recording.checkpoint` of a terminal recording's progress (issue #18); the cast
    /// writer commits those of every channel together (see `casts`).
    fn recording_checkpoint(&self, channel: u32, offset: u64, sha256: String) -> AuditEvent {
        AuditEvent::RecordingCheckpoint {
            session_id: self.inner.id.clone(),
            user: self.inner.user.clone(),
            target: self.inner.target.name.clone(),
            channel,
            offset,
            sha256,
        }
    }

    fn insert_recording_row(
        &self,
        channel: u32,
        kind: &str,
        path: &std::path::Path,
    ) -> Result<(), RecordingError> {
        let row = RecordingRow {
            session_id: self.inner.id.clone(),
            channel,
            kind: kind.to_string(),
            path: path.display().to_string(),
            sha256: None,
            size: None,
        };
        let now = self.inner.access.now();
        self.inner
            .access
            .store()
            .write(|tx| tx.insert_recording(&row, now))
            .map_err(|error| RecordingError::Write {
                path: path.to_path_buf(),
                source: std::io::Error::other(error.to_string()),
            })
    }

    fn store_finalized(
        &self,
        channel: u32,
        finalized: Finalized,
    ) -> Result<Finalized, RecordingError> {
        let now = self.inner.access.now();
        let event = AuditEvent::RecordingFinalized {
            session_id: self.inner.id.clone(),
            user: self.inner.user.clone(),
            target: self.inner.target.name.clone(),
            channel,
            path: finalized.path.display().to_string(),
            sha256: finalized.sha256.clone(),
            size: finalized.size,
        };
        let stored = self.inner.access.store().write(|tx| {
            tx.finalize_recording(
                &self.inner.id,
                channel,
                &finalized.sha256,
                finalized.size,
                now,
            )?;
            tx.append_audit(&event, now)
        });
        if let Err(error) = stored {
            tracing::error!(session = %self.inner.id, %error, "cannot store a finalized recording");
        }
        Ok(finalized)
    }

    /// Audits a recording failure and says whether the session must end (the default).
    pub fn recording_failed(&self, error: &RecordingError) -> bool {
        let must_end = self.inner.target.on_recording_failure == RecordingFailurePolicy::End;
        tracing::error!(session = %self.inner.id, %error, must_end, "recording failed");
        let event = AuditEvent::RecordingFailed {
            session_id: self.inner.id.clone(),
            user: self.inner.user.clone(),
            target: self.inner.target.name.clone(),
            why: error.to_string(),
            outcome: if must_end {
                "session ended"
            } else {
                "session continued"
            },
        };
        if let Err(error) = self.inner.access.record(&event) {
            tracing::error!(%error, "cannot audit a recording failure");
        }
        must_end
    }

    /// Ends the session once, with its byte counts and `reason`. Call on a blocking thread.
    pub fn end(&self, reason: EndReason) {
        if self.inner.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        let bytes_in = self.inner.bytes_in.load(Ordering::Relaxed);
        let bytes_out = self.inner.bytes_out.load(Ordering::Relaxed);
        let now = self.inner.access.now();
        let event = AuditEvent::SessionEnded {
            session_id: self.inner.id.clone(),
            user: self.inner.user.clone(),
            target: self.inner.target.name.clone(),
            grant_id: self.inner.grant.id.clone(),
            protocol: self.inner.protocol,
            reason: reason.as_str(),
            cause: reason.cause().as_str(),
            bytes_in,
            bytes_out,
        };
        let stored = self.inner.access.store().write(|tx| {
            let totals = SessionTotals {
                bytes_in,
                bytes_out,
                statements: self.inner.statements.load(Ordering::Relaxed),
            };
            if tx.end_session(&self.inner.id, now, reason.as_str(), totals)? {
                tx.append_audit(&event, now)?;
            }
            Ok(())
        });
        match stored {
            Ok(()) => {
                tracing::info!(session = %self.inner.id, reason = reason.as_str(), bytes_in, bytes_out,
                "session ended")
            }
            Err(error) => tracing::error!(session = %self.inner.id, %error,
                "cannot record the end of a session"),
        }
    }

    /// Audits a refused subsystem request. Call on a blocking thread.
    pub fn subsystem_refused(&self, name: &str) {
        let event = AuditEvent::SubsystemRefused {
            session_id: self.inner.id.clone(),
            user: self.inner.user.clone(),
            target: self.inner.target.name.clone(),
            name: name.to_string(),
        };
        if let Err(error) = self.inner.access.record(&event) {
            tracing::error!(%error, "cannot audit a refused subsystem");
        }
    }

    /// Audits a file operation (SFTP, scp). Call on a blocking thread.
    pub fn file_operation(&self, operation: FileOperation) {
        let event = AuditEvent::FileOperation {
            session_id: self.inner.id.clone(),
            user: self.inner.user.clone(),
            target: self.inner.target.name.clone(),
            operation: operation.operation,
            path: operation.path,
            to: operation.to,
            attributes: operation.attributes,
            bytes_read: operation.bytes_read,
            bytes_written: operation.bytes_written,
        };
        if let Err(error) = self.inner.access.record(&event) {
            tracing::error!(%error, "cannot audit a file operation");
        }
    }

    /// Audits a closed port forward with its byte counts. Call on a blocking thread.
    pub fn forward_closed(&self, destination: &str, bytes_up: u64, bytes_down: u64) {
        let event = AuditEvent::PortForward {
            session_id: self.inner.id.clone(),
            user: self.inner.user.clone(),
            target: self.inner.target.name.clone(),
            destination: destination.to_string(),
            bytes_up,
            bytes_down,
        };
        if let Err(error) = self.inner.access.record(&event) {
            tracing::error!(%error, "cannot audit a port forward");
        }
    }

    /// Watches this session's grant for the warning and the end.
    pub fn watch(&self) -> GrantWatch {
        GrantWatch {
            session: self.clone(),
            ended: self.inner.access.subscribe_ended(),
            notices: Some(self.inner.access.subscribe_notices()),
            stopping: self.inner.access.subscribe_stopping(),
            warned: false,
            quiet_until: None,
            tick: None,
            ticks: 0,
        }
    }
}

/// Resolves once the bastion is stopping (or the access core that would say so is gone). The
/// watch's `Ref` is dropped here, not held in the caller's future (it is not `Send`).
async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

/// What the watch tells the front end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The grant ends soon; each front end words it (`ExpiryWarning::minutes_text` for SSH,
    /// `seconds_text` for PostgreSQL, as issues #3 and #4 fix them).
    Warning(ExpiryWarning),
    /// The grant ended; the text names why (`access to web-1 ended: grant revoked by bob`).
    Ended { message: String, reason: EndReason },
    /// A line for the user (`carol is watching this session`, issue #19).
    Message(String),
}

/// When a grant ends, told before it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryWarning {
    pub target: String,
    pub ends_at: OffsetDateTime,
    /// Whole minutes left, rounded up.
    pub minutes: i64,
}

impl ExpiryWarning {
    /// `access to web-1 ends at 14:05 UTC (in 5 minutes)`
    pub fn minutes_text(&self) -> String {
        let end = self.ends_at;
        format!(
            "access to {} ends at {:02}:{:02} UTC ({})",
            self.target,
            end.hour(),
            end.minute(),
            self.left()
        )
    }

    /// `access to prod-db ends at 14:05:30 UTC (in 5 minutes)`
    pub fn seconds_text(&self) -> String {
        let end = self.ends_at;
        format!(
            "access to {} ends at {:02}:{:02}:{:02} UTC ({})",
            self.target,
            end.hour(),
            end.minute(),
            end.second(),
            self.left()
        )
    }

    fn left(&self) -> String {
        let minutes = self.minutes;
        format!("in {minutes} minute{}", if minutes == 1 { "" } else { "s" })
    }
}

pub struct GrantWatch {
    session: Session,
    ended: broadcast::Receiver<GrantEnded>,
    /// Reviewers' kills and watchers told in this process; `None` once closed.
    notices: Option<broadcast::Receiver<crate::access::SessionNotice>>,
    stopping: tokio::sync::watch::Receiver<bool>,
    warned: bool,
    /// A re-armed warning is not given again before this (issue #17: with nobody to warn, the
    /// supervisor re-armed it and was woken at once, again and again).
    quiet_until: Option<tokio::time::Instant>,
    /// Kept across calls: a fresh interval ticks at once, so each call would check at once.
    tick: Option<tokio::time::Interval>,
    ticks: u64,
}

/// The next notice, or never once the notices closed.
async fn next_notice(
    notices: &mut Option<broadcast::Receiver<crate::access::SessionNotice>>,
) -> Result<crate::access::SessionNotice, broadcast::error::RecvError> {
    match notices {
        Some(notices) => notices.recv().await,
        None => std::future::pending().await,
    }
}

/// `session on web-1 ended by carol: suspicious activity`
fn killed(target: &str, by: &str, reason: &str) -> Notice {
    Notice::Ended {
        message: format!(
            "session on {target} ended by {}: {}",
            crate::text::visible(by),
            crate::text::visible(reason)
        ),
        reason: EndReason::Killed,
    }
}

/// How long a re-armed warning waits before it is given again.
const REWARN_AFTER: Duration = Duration::from_secs(1);

use crate::access::model::GrantEnded;

/// How often the watch checks the clock: the warning and the end land within this.
const TICK: Duration = Duration::from_millis(250);

/// Every how many ticks the watch also reads the grant from the store (once a second).
const STORE_CHECK_EVERY: u64 = 4;

impl GrantWatch {
    /// Waits for the next notice. After `Ended` the session must be cut.
    pub async fn next(&mut self) -> Notice {
        let inner = &self.session.inner;
        let target = inner.target.name.clone();
        let grant_id = inner.grant.id.clone();
        let mut tick = self.tick.take().unwrap_or_else(|| {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        let notice = self.wait(&mut tick, target, grant_id).await;
        self.tick = Some(tick);
        notice
    }

    async fn wait(
        &mut self,
        tick: &mut tokio::time::Interval,
        target: String,
        grant_id: String,
    ) -> Notice {
        let inner = &self.session.inner;
        let mut stopping = self.stopping.clone();
        let session_id = inner.id.clone();
        loop {
            tokio::select! {
                received = next_notice(&mut self.notices) => match received {
                    Ok(crate::access::SessionNotice::Kill { session_id: id, by, reason })
                        if id == session_id =>
                    {
                        return killed(&target, &by, &reason);
                    }
                    Ok(crate::access::SessionNotice::Watched { session_id: id, by })
                        if id == session_id =>
                    {
                        return Notice::Message(format!(
                            "{} is watching this session",
                            crate::text::visible(&by)
                        ));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(notice) = self.stored_kill().await {
                            return notice;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => self.notices = None,
                },
                received = self.ended.recv() => match received {
                    Ok(ended) if ended.grant_id == grant_id => {
                        return self.ended_notice(ended.reason).await;
                    }
                    Ok(_) => {}
                    // Missed notices: ask the store instead.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(state) = self.stored_end().await {
                            return self.ended_notice(state).await;
                        }
                    }
                    // The bastion is shutting down: fail closed.
                    Err(broadcast::error::RecvError::Closed) => {
                        return Notice::Ended {
                            message: format!("access to {target} ended: the bastion is shutting down"),
                            reason: EndReason::Shutdown,
                        };
                    }
                },
                // The bastion is shutting down: the session ends now, with its row, its
                // recordings finalized and its `session.ended`, while shutdown waits for it.
                () = stopped(&mut stopping) => {
                    return Notice::Ended {
                        message: format!("access to {target} ended: the bastion is shutting down"),
                        reason: EndReason::Shutdown,
                    };
                }
                _ = tick.tick() => {
                    // The broadcast is the fast path; the store is the truth. Checking it every
                    // second also catches an end that happened before this watch subscribed.
                    self.ticks += 1;
                    // A kill asked from another process (the host CLI) comes as a notice from
                    // the server's poll of the store (`Access::announce_kills`), or from the
                    // store when notices were missed.
                    if self.ticks % STORE_CHECK_EVERY == 1
                        && let Some(state) = self.stored_end().await
                    {
                        return self.ended_notice(state).await;
                    }
                    let now = inner.access.now();
                    if now >= inner.grant.ends_at {
                        return self.ended_notice(GrantState::Expired).await;
                    }
                    let warning = inner.access.config().access.expiry_warning;
                    let quiet = self
                        .quiet_until
                        .is_some_and(|until| tokio::time::Instant::now() < until);
                    if !self.warned && !quiet && now + warning >= inner.grant.ends_at {
                        self.warned = true;
                        let ends_at = inner.grant.ends_at;
                        return Notice::Warning(ExpiryWarning {
                            target,
                            ends_at,
                            minutes: ((ends_at - now).whole_seconds() + 59) / 60,
                        });
                    }
                }
            }
        }
    }

    /// Gives the warning again later (in a second): nobody was there to see it.
    pub fn rearm_warning(&mut self) {
        self.warned = false;
        self.quiet_until = Some(tokio::time::Instant::now() + REWARN_AFTER);
    }

    /// The session's end if a reviewer asked for it (fails closed on errors).
    async fn stored_kill(&self) -> Option<Notice> {
        let access = self.session.inner.access.clone();
        let id = self.session.inner.id.clone();
        let target = self.session.inner.target.name.clone();
        match tokio::task::spawn_blocking(move || access.kill_request(&id)).await {
            Ok(Ok(None)) => None,
            Ok(Ok(Some((by, reason)))) => Some(killed(&target, &by, &reason)),
            _ => Some(Notice::Ended {
                message: format!("access to {target} ended: the bastion cannot check the session"),
                reason: EndReason::BastionError,
            }),
        }
    }

    /// The grant's state if the store says it is no longer active (fails closed on errors).
    async fn stored_end(&self) -> Option<GrantState> {
        let access = self.session.inner.access.clone();
        let grant_id = self.session.inner.grant.id.clone();
        let stored = tokio::task::spawn_blocking(move || access.grant_by_id(&grant_id)).await;
        match stored {
            Ok(Ok(Some(grant))) if grant.state == GrantState::Active => None,
            Ok(Ok(Some(grant))) => Some(grant.state),
            // The grant vanished or the store failed: end the session rather than guess.
            _ => Some(GrantState::Expired),
        }
    }

    async fn ended_notice(&self, reason: GrantState) -> Notice {
        let inner = &self.session.inner;
        let target = inner.target.name.clone();
        match reason {
            GrantState::Revoked => {
                let access = inner.access.clone();
                let grant_id = inner.grant.id.clone();
                let by = tokio::task::spawn_blocking(move || access.grant_by_id(&grant_id))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
                    .and_then(|grant| grant.revoked_by)
                    .unwrap_or_else(|| "an approver".to_string());
                Notice::Ended {
                    message: format!("access to {target} ended: grant revoked by {by}"),
                    reason: EndReason::GrantRevoked,
                }
            }
            GrantState::Expired | GrantState::Active => Notice::Ended {
                message: format!("access to {target} ended: grant expired"),
                reason: EndReason::GrantExpired,
            },
        }
    }
}
