//! Audit events: one closed, typed enum that the core emits, and the hash chain that makes the stored
//! log tamper-evident.
//!
//! Every state change of the access lifecycle appends its event in the same database transaction as
//! the change (see `store`), so the log and the state can never disagree. Each stored record carries
//! its sequence number, the previous record's hash and its own SHA-256 over a canonical encoding;
//! `verify` walks the chain and names the first record that does not fit. Sinks that forward events
//! (later issues) only consume `AuditRecord`s; nothing outside the core constructs an event type
//! string.

pub mod retention;
pub mod verify;

use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::clock::rfc3339;

/// Type names that readers of stored records match on: the ones `AuditEvent::event_type` gives
/// these variants, defined once.
pub mod types {
    pub const RECORDING_FINALIZED: &str = "recording.finalized";
    pub const RECORDING_CHECKPOINT: &str = "recording.checkpoint";
    pub const PG_CHECKPOINT: &str = "pg.checkpoint";
    pub const RETENTION_RAN: &str = "retention.ran";
    pub const SESSION_ENDED: &str = "session.ended";
}

/// The hash that the first record chains to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did something: a configured user, the operator on the bastion host, or the bastion itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    User(String),
    /// The host CLI, with the OS user that ran it.
    Operator(String),
    System,
}

impl Actor {
    pub fn label(&self) -> String {
        match self {
            Actor::User(name) => name.clone(),
            Actor::Operator(os_user) => format!("operator:{os_user}"),
            Actor::System => "portcullis".to_string(),
        }
    }
}

/// How a reviewer looked at a session (issue #19).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewKind {
    Replay,
    ExportCast,
    ExportJson,
    ExportText,
    Watch,
}

impl ViewKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ViewKind::Replay => "replay",
            ViewKind::ExportCast => "export-cast",
            ViewKind::ExportJson => "export-json",
            ViewKind::ExportText => "export-txt",
            ViewKind::Watch => "watch",
        }
    }
}

/// Everything the bastion audits. Closed on purpose: a new kind of event is a new variant here.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditEvent {
    Requested {
        request_id: String,
        requester: String,
        target: String,
        duration: Duration,
        reason: String,
    },
    RequestRefused {
        requester: String,
        target: String,
        why: String,
    },
    Approved {
        request_id: String,
        approver: String,
        target: String,
        approvals: u32,
        required: u32,
    },
    DecisionRefused {
        actor: Actor,
        request_id: String,
        target: Option<String>,
        why: String,
    },
    Denied {
        request_id: String,
        approver: String,
        target: String,
        reason: String,
    },
    Expired {
        request_id: String,
        requester: String,
        target: String,
    },
    Cancelled {
        request_id: String,
        requester: String,
        target: String,
    },
    Granted {
        request_id: String,
        grant_id: String,
        user: String,
        target: String,
        ends_at: OffsetDateTime,
    },
    Revoked {
        grant_id: String,
        request_id: String,
        actor: Actor,
        user: String,
        target: String,
        reason: String,
    },
    RevokeRefused {
        actor: Actor,
        grant_id: String,
        why: String,
    },
    GrantExpired {
        grant_id: String,
        request_id: String,
        user: String,
        target: String,
    },
    AuthFailed {
        user: String,
        source: String,
        protocol: &'static str,
        why: String,
        failures: u32,
    },
    LoggedIn {
        user: String,
        source: String,
        protocol: &'static str,
        target: Option<String>,
    },
    /// A connection to a target refused before it reached the target (no grant, unknown target).
    SessionRefused {
        user: String,
        target: String,
        source: String,
        why: String,
    },
    SessionStarted {
        session_id: String,
        user: String,
        target: String,
        grant_id: String,
        protocol: &'static str,
        source: String,
        /// What the client asked to change in the target session, as forwarded (PostgreSQL
        /// startup parameters, SSH environment variables); in the detail only when any.
        parameters: Vec<(String, String)>,
    },
    SessionEnded {
        session_id: String,
        user: String,
        target: String,
        grant_id: String,
        protocol: &'static str,
        reason: &'static str,
        /// Who caused the end: `client`, `target`, `bastion` or `grant`.
        cause: &'static str,
        bytes_in: u64,
        bytes_out: u64,
    },
    RecordingFinalized {
        session_id: String,
        user: String,
        target: String,
        channel: u32,
        path: String,
        sha256: String,
        size: u64,
    },
    RecordingFailed {
        session_id: String,
        user: String,
        target: String,
        why: String,
        /// What the session did about it: "session ended" or "session continued".
        outcome: &'static str,
    },
    /// A file operation seen in an SFTP or scp stream (content is never kept).
    FileOperation {
        session_id: String,
        user: String,
        target: String,
        /// `read`, `write`, `remove`, `rename`, `mkdir`, `rmdir`, `setstat`, `symlink`,
        /// `hardlink`, `copy`, `extended`, or `untracked`.
        operation: &'static str,
        path: String,
        to: Option<String>,
        /// For `setstat`: what was set (`mode=600 uid=0`); for `copy`: `length=N`. In the
        /// detail only when set.
        attributes: Option<String>,
        bytes_read: u64,
        bytes_written: u64,
    },
    /// Where a PostgreSQL session's query log stands (issue #18): its statements are in the log,
    /// chained line to line, and this event anchors the chain in the audit log at most every
    /// second and at the end. A line changed, removed or reordered before `lines` no longer
    /// leads to `h`.
    PgCheckpoint {
        session_id: String,
        user: String,
        target: String,
        /// Lines written so far.
        lines: u64,
        /// The last line's `h`.
        h: String,
    },
    /// Where a terminal recording stands (issue #18): the SHA-256 of its first `offset` bytes,
    /// at most every second while it is written, so a recording a crash cut short still
    /// verifies up to its last checkpoint.
    RecordingCheckpoint {
        session_id: String,
        user: String,
        target: String,
        channel: u32,
        offset: u64,
        sha256: String,
    },
    /// A local port forward (`ssh -L`) through a target, when it closed.
    PortForward {
        session_id: String,
        user: String,
        target: String,
        destination: String,
        bytes_up: u64,
        bytes_down: u64,
    },
    PortForwardRefused {
        user: String,
        target: String,
        destination: String,
        why: String,
    },
    ServerStarted {
        version: String,
    },
    ServerStopped,
    /// A request to an approval endpoint of the HTTP listener that failed verification
    /// (issue #5): nothing else happened.
    WebhookRejected {
        path: String,
        why: String,
    },
    /// An audit sink refused a batch for good (a webhook's 4xx, issue #18): the sink holds at
    /// that batch until an operator acts; `audit sinks` shows it.
    SinkRefused {
        sink: String,
        why: String,
    },
    /// A reviewer or an approver asked for a live session's end (issue #19); the session's
    /// `session.ended` follows with reason `killed`.
    SessionKillRequested {
        actor: Actor,
        session_id: String,
        user: String,
        target: String,
        reason: String,
    },
    /// The access review report of a period was made (issue #19).
    ReportGenerated {
        actor: Actor,
        from: OffsetDateTime,
        to: OffsetDateTime,
    },
    /// A session's recordings were looked at (issue #19): replayed, exported or watched live.
    RecordingViewed {
        actor: Actor,
        session_id: String,
        user: String,
        target: String,
        how: ViewKind,
    },
    /// A search of sessions (issue #19), with its filters and how many it found.
    SessionsSearched {
        actor: Actor,
        user: Option<String>,
        target: Option<String>,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
        /// The text searched for (`--grep`).
        grep: Option<String>,
        limit: u32,
        /// Whether the searcher sees every session (the operator, a reviewer role) rather than
        /// their own and those on targets they approve.
        everything: bool,
        results: u64,
        /// Why the search was refused, when it was.
        refused: Option<String>,
    },
    /// A run of the retention job (issue #18): what it removed, what sinks held back, and where
    /// the chain now starts, the anchor `audit verify` starts from.
    RetentionRan {
        actor: Actor,
        retention_days: u32,
        cutoff: OffsetDateTime,
        removed_events: u64,
        removed_recordings: u64,
        /// The last removed record's seq and hash: the first kept record chains to it.
        chain_starts_after: Option<(i64, String)>,
        /// Sinks that have not delivered everything past the cutoff, or why nothing could go.
        held_by: Vec<String>,
    },
    /// A user locked (issue #17): at one address after too many failures (`source`, until
    /// `until`), or everywhere by an operator (`source` and `until` absent).
    UserLocked {
        user: String,
        by: Actor,
        source: Option<String>,
        until: Option<OffsetDateTime>,
        reason: String,
    },
    UserUnlocked {
        user: String,
        by: Actor,
    },
    /// Failed logins of one user from this many addresses (issue #17): someone may be guessing.
    UserTargeted {
        user: String,
        sources: u32,
    },
    /// Refusals from one address in one minute past the first few, folded into one event so a
    /// flood costs the store a bounded number of writes (issue #17).
    SourceRefused {
        source: String,
        failures: u32,
        /// The login names tried, at most `MAX_NAMES_KEPT` of them.
        names: Vec<String>,
    },
    /// Addresses whose folded refusals passed a minute's budget of `source.refused` events,
    /// counted together (issue #17 review: rotating addresses).
    SourcesRefused {
        addresses: u32,
        failures: u32,
    },
    /// A connection refused before any login: its address is not in `[access] ip_allow`, or
    /// a cancel request carried a key no live session holds.
    ConnectionRefused {
        source: String,
        protocol: &'static str,
        why: &'static str,
    },
    /// A subsystem other than SFTP asked for on a target session, refused (issue #17).
    SubsystemRefused {
        session_id: String,
        user: String,
        target: String,
        name: String,
    },
    /// A database access token was issued (issue #17).
    TokenIssued {
        user: String,
        target: String,
        grant_id: String,
        jti: String,
        expires_at: OffsetDateTime,
    },
}

/// An event flattened to the columns every record has.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub event_type: &'static str,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub request_id: Option<String>,
    pub grant_id: Option<String>,
    pub session_id: Option<String>,
    /// The event's own fields as a JSON object, serialized once here (keys in sorted order).
    pub detail: String,
}

impl AuditEvent {
    /// The event's columns and its detail, serialized.
    pub fn entry(&self) -> AuditEntry {
        let mut entry = AuditEntry {
            event_type: self.event_type(),
            actor: None,
            target: None,
            request_id: None,
            grant_id: None,
            session_id: None,
            detail: String::new(),
        };
        let mut detail = json!({});
        match self {
            AuditEvent::Requested {
                request_id,
                requester,
                target,
                duration,
                reason,
            } => {
                entry.actor = Some(requester.clone());
                entry.target = Some(target.clone());
                entry.request_id = Some(request_id.clone());
                detail = json!({ "duration_seconds": duration.as_secs(), "reason": reason });
            }
            AuditEvent::RequestRefused {
                requester,
                target,
                why,
            } => {
                entry.actor = Some(requester.clone());
                entry.target = Some(target.clone());
                detail = json!({ "why": why });
            }
            AuditEvent::Approved {
                request_id,
                approver,
                target,
                approvals,
                required,
            } => {
                entry.actor = Some(approver.clone());
                entry.target = Some(target.clone());
                entry.request_id = Some(request_id.clone());
                detail = json!({ "approvals": approvals, "required": required });
            }
            AuditEvent::DecisionRefused {
                actor,
                request_id,
                target,
                why,
            } => {
                entry.actor = Some(actor.label());
                entry.target = target.clone();
                entry.request_id = Some(request_id.clone());
                detail = json!({ "why": why });
            }
            AuditEvent::Denied {
                request_id,
                approver,
                target,
                reason,
            } => {
                entry.actor = Some(approver.clone());
                entry.target = Some(target.clone());
                entry.request_id = Some(request_id.clone());
                detail = json!({ "reason": reason });
            }
            AuditEvent::Expired {
                request_id,
                requester,
                target,
            } => {
                entry.actor = Some(Actor::System.label());
                entry.target = Some(target.clone());
                entry.request_id = Some(request_id.clone());
                detail = json!({ "requester": requester });
            }
            AuditEvent::Cancelled {
                request_id,
                requester,
                target,
            } => {
                entry.actor = Some(requester.clone());
                entry.target = Some(target.clone());
                entry.request_id = Some(request_id.clone());
            }
            AuditEvent::Granted {
                request_id,
                grant_id,
                user,
                target,
                ends_at,
            } => {
                entry.actor = Some(Actor::System.label());
                entry.target = Some(target.clone());
                entry.request_id = Some(request_id.clone());
                entry.grant_id = Some(grant_id.clone());
                detail = json!({ "user": user, "ends_at": rfc3339(*ends_at) });
            }
            AuditEvent::Revoked {
                grant_id,
                request_id,
                actor,
                user,
                target,
                reason,
            } => {
                entry.actor = Some(actor.label());
                entry.target = Some(target.clone());
                entry.request_id = Some(request_id.clone());
                entry.grant_id = Some(grant_id.clone());
                detail = json!({ "user": user, "reason": reason });
            }
            AuditEvent::RevokeRefused {
                actor,
                grant_id,
                why,
            } => {
                entry.actor = Some(actor.label());
                entry.grant_id = Some(grant_id.clone());
                detail = json!({ "why": why });
            }
            AuditEvent::GrantExpired {
                grant_id,
                request_id,
                user,
                target,
            } => {
                entry.actor = Some(Actor::System.label());
                entry.target = Some(target.clone());
                entry.request_id = Some(request_id.clone());
                entry.grant_id = Some(grant_id.clone());
                detail = json!({ "user": user });
            }
            AuditEvent::AuthFailed {
                user,
                source,
                protocol,
                why,
                failures,
            } => {
                entry.actor = Some(user.clone());
                detail = json!({ "source": source, "protocol": protocol, "why": why,
                    "failures": failures });
            }
            AuditEvent::LoggedIn {
                user,
                source,
                protocol,
                target,
            } => {
                entry.actor = Some(user.clone());
                entry.target = target.clone();
                detail = json!({ "source": source, "protocol": protocol });
            }
            AuditEvent::SessionRefused {
                user,
                target,
                source,
                why,
            } => {
                entry.actor = Some(user.clone());
                entry.target = Some(target.clone());
                detail = json!({ "source": source, "why": why });
            }
            AuditEvent::SessionStarted {
                session_id,
                user,
                target,
                grant_id,
                protocol,
                source,
                parameters,
            } => {
                entry.actor = Some(user.clone());
                entry.target = Some(target.clone());
                entry.grant_id = Some(grant_id.clone());
                entry.session_id = Some(session_id.clone());
                detail = json!({ "protocol": protocol, "source": source });
                if !parameters.is_empty() {
                    detail["parameters"] =
                        json!(crate::recording::querylog::NameValues(parameters));
                }
            }
            AuditEvent::SessionEnded {
                session_id,
                user,
                target,
                grant_id,
                protocol,
                reason,
                cause,
                bytes_in,
                bytes_out,
            } => {
                entry.actor = Some(user.clone());
                entry.target = Some(target.clone());
                entry.grant_id = Some(grant_id.clone());
                entry.session_id = Some(session_id.clone());
                detail = json!({ "protocol": protocol, "reason": reason, "cause": cause, "bytes_in": bytes_in,
                    "bytes_out": bytes_out });
            }
            AuditEvent::RecordingFinalized {
                session_id,
                user,
                target,
                channel,
                path,
                sha256,
                size,
            } => {
                entry.actor = Some(user.clone());
                entry.target = Some(target.clone());
                entry.session_id = Some(session_id.clone());
                detail =
                    json!({ "channel": channel, "path": path, "sha256": sha256, "size": size });
            }
            AuditEvent::RecordingFailed {
                session_id,
                user,
                target,
                why,
                outcome,
            } => {
                entry.actor = Some(user.clone());
                entry.target = Some(target.clone());
                entry.session_id = Some(session_id.clone());
                detail = json!({ "why": why, "outcome": outcome });
            }
            AuditEvent::FileOperation {
                session_id,
                user,
                target,
                operation,
                path,
                to,
                attributes,
                bytes_read,
                bytes_written,
            } => {
                entry.actor = Some(user.clone());
                entry.target = Some(target.clone());
                entry.session_id = Some(session_id.clone());
                detail = json!({ "operation": operation, "path": path, "to": to,
                    "bytes_read": bytes_read, "bytes_written": bytes_written });
                if let Some(attributes) = attributes {
                    detail["attributes"] = json!(attributes);
                }
            }
            AuditEvent::PgCheckpoint {
                session_id,
                user,
                target,
                lines,
                h,
            } => {
                entry.actor = Some(user.clone());
                entry.target = Some(target.clone());
                entry.session_id = Some(session_id.clone());
                detail = json!({ "lines": lines, "h": h });
            }
            AuditEvent::RecordingCheckpoint {
                session_id,
                user,
                target,
                channel,
                offset,
                sha256,
            } => {
                entry.actor = Some(user.clone());
                entry.target = Some(target.clone());
                entry.session_id = Some(session_id.clone());
                detail = json!({ "channel": channel, "offset": offset, "sha256": sha256 });
            }
            AuditEvent::PortForward {
                session_id,
                user,
                target,
                destination,
                bytes_up,
                bytes_down,
            } => {
                entry.actor = Some(user.clone());
                entry.target = Some(target.clone());
                entry.session_id = Some(session_id.clone());
                detail = json!({ "destination": destination, "bytes_up": bytes_up,
                    "bytes_down": bytes_down });
            }
            AuditEvent::PortForwardRefused {
                user,
                target,
                destination,
                why,
            } => {
                entry.actor = Some(user.clone());
                entry.target = Some(target.clone());
                detail = json!({ "destination": destination, "why": why });
            }
            AuditEvent::SinkRefused { sink, why } => {
                entry.actor = Some(Actor::System.label());
                detail = json!({ "sink": sink, "why": why });
            }
            AuditEvent::SessionKillRequested {
                actor,
                session_id,
                user,
                target,
                reason,
            } => {
                entry.actor = Some(actor.label());
                entry.target = Some(target.clone());
                entry.session_id = Some(session_id.clone());
                detail = json!({ "user": user, "reason": reason });
            }
            AuditEvent::ReportGenerated { actor, from, to } => {
                entry.actor = Some(actor.label());
                detail = json!({ "report": "access", "from": rfc3339(*from), "to": rfc3339(*to) });
            }
            AuditEvent::RecordingViewed {
                actor,
                session_id,
                user,
                target,
                how,
            } => {
                entry.actor = Some(actor.label());
                entry.target = Some(target.clone());
                entry.session_id = Some(session_id.clone());
                detail = json!({ "user": user, "how": how.as_str() });
            }
            AuditEvent::SessionsSearched {
                actor,
                user,
                target,
                since,
                until,
                grep,
                limit,
                everything,
                results,
                refused,
            } => {
                entry.actor = Some(actor.label());
                entry.target = target.clone();
                let scope = if *everything {
                    "all"
                } else {
                    "own and approved targets"
                };
                detail = json!({ "results": results, "limit": limit, "scope": scope });
                if let Some(refused) = refused {
                    detail["refused"] = json!(refused);
                }
                if let Some(grep) = grep {
                    detail["grep"] = json!(grep);
                }
                if let Some(user) = user {
                    detail["user"] = json!(user);
                }
                if let Some(since) = since {
                    detail["since"] = json!(rfc3339(*since));
                }
                if let Some(until) = until {
                    detail["until"] = json!(rfc3339(*until));
                }
            }
            AuditEvent::RetentionRan {
                actor,
                retention_days,
                cutoff,
                removed_events,
                removed_recordings,
                chain_starts_after,
                held_by,
            } => {
                entry.actor = Some(actor.label());
                detail = json!({
                    "retention_days": retention_days,
                    "cutoff": rfc3339(*cutoff),
                    "removed_events": removed_events,
                    "removed_recordings": removed_recordings,
                    "held_by": held_by,
                });
                if let Some((seq, hash)) = chain_starts_after {
                    detail["chain_starts_after"] = json!({ "seq": seq, "hash": hash });
                }
            }
            AuditEvent::WebhookRejected { path, why } => {
                entry.actor = Some("webhook".to_string());
                detail = json!({ "path": path, "why": why });
            }
            AuditEvent::ServerStarted { version } => {
                entry.actor = Some(Actor::System.label());
                detail = json!({ "version": version });
            }
            AuditEvent::ServerStopped => {
                entry.actor = Some(Actor::System.label());
            }
            AuditEvent::UserLocked {
                user,
                by,
                source,
                until,
                reason,
            } => {
                entry.actor = Some(by.label());
                detail = json!({ "user": user, "reason": reason,
                    "scope": if source.is_some() { "source" } else { "everywhere" } });
                if let Some(source) = source {
                    detail["source"] = json!(source);
                }
                if let Some(until) = until {
                    detail["until"] = json!(rfc3339(*until));
                }
            }
            AuditEvent::UserUnlocked { user, by } => {
                entry.actor = Some(by.label());
                detail = json!({ "user": user });
            }
            AuditEvent::UserTargeted { user, sources } => {
                entry.actor = Some(user.clone());
                detail = json!({ "sources": sources });
            }
            AuditEvent::SourceRefused {
                source,
                failures,
                names,
            } => {
                detail = json!({ "source": source, "failures": failures, "names": names });
            }
            AuditEvent::SourcesRefused {
                addresses,
                failures,
            } => {
                detail = json!({ "addresses": addresses, "failures": failures });
            }
            AuditEvent::ConnectionRefused {
                source,
                protocol,
                why,
            } => {
                detail = json!({ "source": source, "protocol": protocol, "why": why });
            }
            AuditEvent::SubsystemRefused {
                session_id,
                user,
                target,
                name,
            } => {
                entry.actor = Some(user.clone());
                entry.target = Some(target.clone());
                entry.session_id = Some(session_id.clone());
                detail = json!({ "name": name });
            }
            AuditEvent::TokenIssued {
                user,
                target,
                grant_id,
                jti,
                expires_at,
            } => {
                entry.actor = Some(user.clone());
                entry.target = Some(target.clone());
                entry.grant_id = Some(grant_id.clone());
                detail = json!({ "jti": jti, "expires_at": rfc3339(*expires_at) });
            }
        }
        entry.detail = detail.to_string();
        entry
    }

    /// The stable type name stored and exported; sinks and reviewers filter on it.
    pub fn event_type(&self) -> &'static str {
        match self {
            AuditEvent::Requested { .. } => "requested",
            AuditEvent::RequestRefused { .. } => "request_refused",
            AuditEvent::Approved { .. } => "approved",
            AuditEvent::DecisionRefused { .. } => "decision_refused",
            AuditEvent::Denied { .. } => "denied",
            AuditEvent::Expired { .. } => "expired",
            AuditEvent::Cancelled { .. } => "cancelled",
            AuditEvent::Granted { .. } => "granted",
            AuditEvent::Revoked { .. } => "revoked",
            AuditEvent::RevokeRefused { .. } => "revoke_refused",
            AuditEvent::GrantExpired { .. } => "grant_expired",
            AuditEvent::AuthFailed { .. } => "auth_failed",
            AuditEvent::LoggedIn { .. } => "logged_in",
            AuditEvent::SessionRefused { .. } => "session_refused",
            AuditEvent::SessionStarted { .. } => "session.started",
            AuditEvent::SessionEnded { .. } => types::SESSION_ENDED,
            AuditEvent::RecordingFinalized { .. } => types::RECORDING_FINALIZED,
            AuditEvent::RecordingFailed { .. } => "recording.failed",
            AuditEvent::FileOperation { .. } => "file.operation",
            AuditEvent::PgCheckpoint { .. } => types::PG_CHECKPOINT,
            AuditEvent::RecordingCheckpoint { .. } => types::RECORDING_CHECKPOINT,
            AuditEvent::PortForward { .. } => "forward.closed",
            AuditEvent::PortForwardRefused { .. } => "forward.refused",
            AuditEvent::ServerStarted { .. } => "server_started",
            AuditEvent::ServerStopped => "server_stopped",
            AuditEvent::WebhookRejected { .. } => "webhook.rejected",
            AuditEvent::SinkRefused { .. } => "sink.refused",
            AuditEvent::RetentionRan { .. } => types::RETENTION_RAN,
            AuditEvent::SessionsSearched { .. } => "sessions.searched",
            AuditEvent::RecordingViewed { .. } => "recording.viewed",
            AuditEvent::ReportGenerated { .. } => "report.generated",
            AuditEvent::SessionKillRequested { .. } => "session.kill_requested",
            AuditEvent::UserLocked { .. } => "user.locked",
            AuditEvent::UserUnlocked { .. } => "user.unlocked",
            AuditEvent::UserTargeted { .. } => "user.targeted",
            AuditEvent::SourceRefused { .. } => "source.refused",
            AuditEvent::SourcesRefused { .. } => "sources.refused",
            AuditEvent::ConnectionRefused { .. } => "connection.refused",
            AuditEvent::TokenIssued { .. } => "token.issued",
            AuditEvent::SubsystemRefused { .. } => "subsystem.refused",
        }
    }
}

/// One stored, chained audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub seq: i64,
    pub id: String,
    pub ts: OffsetDateTime,
    pub event_type: String,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub request_id: Option<String>,
    pub grant_id: Option<String>,
    pub session_id: Option<String>,
    /// The detail object as stored: canonical JSON text, hashed exactly as it is.
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// Builds the record that follows `prev` (`None` for the first) and computes its hash.
    pub fn chain(
        prev: Option<(i64, &str)>,
        id: String,
        ts: OffsetDateTime,
        entry: AuditEntry,
    ) -> AuditRecord {
        let (seq, prev_hash) = match prev {
            Some((seq, hash)) => (seq + 1, hash.to_string()),
            None => (1, GENESIS_HASH.to_string()),
        };
        let mut record = AuditRecord {
            seq,
            id,
            ts,
            event_type: entry.event_type.to_string(),
            actor: entry.actor,
            target: entry.target,
            request_id: entry.request_id,
            grant_id: entry.grant_id,
            session_id: entry.session_id,
            detail: entry.detail,
            prev_hash,
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        record
    }

    /// The text the hash is over: a JSON array of every field but the hash, in a fixed order
    /// (`[seq, id, ts, type, actor, target, request_id, grant_id, session_id, detail,
    /// prev_hash]`, absent values `null`), compact. An array, not an object, so there is no key
    /// order to disagree about; it is also its own RFC 8785 (JCS) canonical form, so outside
    /// verifiers can rebuild it with a stock JCS library (a test holds the two equal).
    pub fn canonical(&self) -> String {
        serde_json::json!([
            self.seq,
            self.id,
            rfc3339(self.ts),
            self.event_type,
            self.actor,
            self.target,
            self.request_id,
            self.grant_id,
            self.session_id,
            self.detail,
            self.prev_hash,
        ])
        .to_string()
    }

    /// SHA-256 (hex) of `canonical`.
    pub fn compute_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical().as_bytes()))
    }
}

/// Why the chain does not verify, at the first record that breaks it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("audit chain broken at seq {seq}: expected seq {expected} (a record is missing)")]
    Gap { seq: i64, expected: i64 },
    #[error("audit chain broken at seq {seq}: prev_hash does not match the hash of seq {}", .seq - 1)]
    PrevHash { seq: i64 },
    #[error("audit chain broken at seq {seq}: its hash does not match its contents (altered)")]
    Hash { seq: i64 },
    #[error(
        "audit chain broken at seq {seq}: this retention.ran says the chain starts after seq \
         {after}, an earlier one said after seq {earlier} (anchors only move forward)"
    )]
    AnchorBack { seq: i64, after: i64, earlier: i64 },
}

impl ChainError {
    pub fn seq(&self) -> i64 {
        match self {
            ChainError::Gap { seq, .. }
            | ChainError::PrevHash { seq }
            | ChainError::Hash { seq }
            | ChainError::AnchorBack { seq, .. } => *seq,
        }
    }
}

/// Walks records in sequence order, carrying what the next one must chain to.
#[derive(Debug)]
pub struct ChainVerifier {
    first_seq: i64,
    expected_seq: i64,
    prev_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            first_seq: 1,
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_string(),
        }
    }
}

impl ChainVerifier {
    /// A verifier for a chain whose records up to `seq` were removed by retention: the first
    /// kept record must be `seq + 1` and chain to `hash` (issue #18).
    pub fn starting_after(seq: i64, hash: &str) -> ChainVerifier {
        ChainVerifier {
            first_seq: seq + 1,
            expected_seq: seq + 1,
            prev_hash: hash.to_string(),
        }
    }

    pub fn check(&mut self, record: &AuditRecord) -> Result<(), ChainError> {
        if record.seq != self.expected_seq {
            return Err(ChainError::Gap {
                seq: record.seq,
                expected: self.expected_seq,
            });
        }
        if record.prev_hash != self.prev_hash {
            return Err(ChainError::PrevHash { seq: record.seq });
        }
        if record.compute_hash() != record.hash {
            return Err(ChainError::Hash { seq: record.seq });
        }
        self.expected_seq += 1;
        self.prev_hash = record.hash.clone();
        Ok(())
    }

    /// How many records have verified so far.
    pub fn verified(&self) -> i64 {
        self.expected_seq - self.first_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_of(count: usize) -> Vec<AuditRecord> {
        let mut records: Vec<AuditRecord> = Vec::new();
        for index in 0..count {
            let prev = records
                .last()
                .map(|record| (record.seq, record.hash.as_str()));
            let event = AuditEvent::Cancelled {
                request_id: format!("r-{index}"),
                requester: "alice".to_string(),
                target: "web-1".to_string(),
            };
            let record = AuditRecord::chain(
                prev,
                format!("e-{index}"),
                OffsetDateTime::UNIX_EPOCH,
                event.entry(),
            );
            records.push(record);
        }
        records
    }

    fn verify(records: &[AuditRecord]) -> Result<i64, ChainError> {
        let mut verifier = ChainVerifier::default();
        for record in records {
            verifier.check(record)?;
        }
        Ok(verifier.verified())
    }

    /// Chains written before the hash was computed from borrowed fields must still verify:
    /// the bytes hashed are those of the `serde_json::Value` array it used to build.
    #[test]
    fn the_hash_is_over_the_same_bytes_as_the_value_array() {
        let mut record = chain_of(1).remove(0);
        record.actor = Some("al\"ice \u{1} é".to_string());
        record.detail = r#"{"sql":"select '→'"}"#.to_string();
        assert_eq!(
            record.compute_hash(),
            hex::encode(Sha256::digest(value_array(&record).to_string().as_bytes()))
        );
    }

    /// The hashed fields as the `serde_json::Value` array the hash was first computed over.
    fn value_array(record: &AuditRecord) -> serde_json::Value {
        json!([
            record.seq,
            record.id,
            rfc3339(record.ts),
            record.event_type,
            record.actor,
            record.target,
            record.request_id,
            record.grant_id,
            record.session_id,
            record.detail,
            record.prev_hash,
        ])
    }

    /// Issue #18: the canonical text is what RFC 8785 (JCS) makes of the same array, with a
    /// stock JCS implementation as the oracle, whatever the strings hold.
    #[test]
    fn the_canonical_text_is_rfc_8785() {
        let mut record = chain_of(1).remove(0);
        let mut every_ascii: String = (0u8..0x80).map(char::from).collect();
        every_ascii.push_str("é→\u{10348}\"\\\u{2028}");
        for (actor, detail) in [
            (Some(every_ascii.as_str()), every_ascii.as_str()),
            (
                None,
                r#"{"duration_ms":0.081,"sql":"select \"x\" from t where a = '\\'"}"#,
            ),
            (Some(""), ""),
            (Some("\u{7f}\n"), "\\"),
        ] {
            record.actor = actor.map(str::to_string);
            record.detail = detail.to_string();
            let oracle = serde_jcs::to_string(&value_array(&record)).unwrap_or_default();
            assert_eq!(record.canonical(), oracle);
        }
    }

    #[test]
    fn an_untouched_chain_verifies() {
        assert_eq!(verify(&chain_of(5)), Ok(5));
    }

    #[test]
    fn tampering_names_the_first_bad_record() {
        let mut altered = chain_of(5);
        altered[2].detail = r#"{"reason":"nothing to see"}"#.to_string();
        assert_eq!(verify(&altered), Err(ChainError::Hash { seq: 3 }));

        let mut removed = chain_of(5);
        removed.remove(1);
        assert_eq!(verify(&removed).map_err(|error| error.seq()), Err(3));

        let mut rehashed = chain_of(5);
        rehashed[3].actor = Some("mallory".to_string());
        rehashed[3].hash = rehashed[3].compute_hash();
        assert_eq!(verify(&rehashed), Err(ChainError::PrevHash { seq: 5 }));
    }
}
