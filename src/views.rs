//! JSON views of core values: the shapes that `--json` prints on the host CLI and over the SSH
//! command interface. They are a public interface (README, issue #2): change them only by adding
//! fields. Core types do not derive serde; these functions are the one place their JSON form lives.

use serde_json::{Value, json};

use crate::access::model::{AccessRequest, Grant};
use crate::audit::AuditRecord;
use crate::clock::rfc3339;
use crate::store::SessionSummary;

/// A session as `sessions --json` shows it (issue #19).
pub fn session_json(found: &SessionSummary) -> Value {
    let session = &found.session;
    json!({
        "id": session.id,
        "user": session.user,
        "target": session.target,
        "protocol": session.protocol,
        "client_address": session.client_address,
        "grant_id": session.grant_id,
        "request_id": found.request_id,
        "reason": found.reason,
        "approvers": found.approvers,
        "started_at": rfc3339(session.started_at),
        "ended_at": session.ended_at.map(rfc3339),
        "duration_seconds": session
            .ended_at
            .map(|ended| (ended - session.started_at).whole_seconds()),
        "end_reason": session.end_reason,
        "bytes_in": session.bytes_in,
        "bytes_out": session.bytes_out,
        "statements": session.statements,
        "recordings": found.recordings.iter().map(|(channel, kind)| json!({
            "id": format!("{}/{channel}", session.id),
            "kind": kind,
        })).collect::<Vec<_>>(),
        "hits": found.hits.iter().map(|hit| json!({
            "recording": format!("{}/{}", session.id, hit.channel),
            "at": offset(hit.at_ms),
            "at_ms": hit.at_ms,
            "kind": hit.kind.as_str(),
            "text": hit.text,
        })).collect::<Vec<_>>(),
    })
}

/// A time offset in a recording as `replay --at` takes it: `HH:MM:SS.mmm`.
pub fn offset(at_ms: i64) -> String {
    let at_ms = at_ms.max(0);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        at_ms / 3_600_000,
        at_ms / 60_000 % 60,
        at_ms / 1000 % 60,
        at_ms % 1000
    )
}

/// A session as one line of `sessions`; text from users is shown escaped.
pub fn session_line(found: &SessionSummary) -> String {
    let session = &found.session;
    let duration = match session.ended_at {
        Some(ended) => crate::config::format_duration(
            (ended - session.started_at).try_into().unwrap_or_default(),
        ),
        None => "live".to_string(),
    };
    let moved = if session.protocol == "postgres" {
        format!("{} statements", session.statements)
    } else {
        format!("{} B in, {} B out", session.bytes_in, session.bytes_out)
    };
    let mut hits = String::new();
    for hit in &found.hits {
        hits.push_str(&format!(
            "\n    {}/{} at {}  {:<9}  {}",
            session.id,
            hit.channel,
            offset(hit.at_ms),
            hit.kind.as_str(),
            crate::text::visible(&crate::text::cut(&hit.text, 200)),
        ));
    }
    format!(
        "{}  {}  {}  {}  {}  {}  {}  {}  approved by {}  reason: {}{hits}",
        session.id,
        crate::text::visible(&session.user),
        crate::text::visible(&session.target),
        session.protocol,
        rfc3339(session.started_at),
        duration,
        session.end_reason.as_deref().unwrap_or("-"),
        moved,
        if found.approvers.is_empty() {
            "-".to_string()
        } else {
            crate::text::visible(&found.approvers.join(", "))
        },
        crate::text::visible(found.reason.as_deref().unwrap_or("-")),
    )
}

pub fn request_json(request: &AccessRequest) -> Value {
    json!({
        "id": request.id,
        "requester": request.requester,
        "target": request.target,
        "state": request.state.as_str(),
        "duration_seconds": request.duration.as_secs(),
        "reason": request.reason,
        "created_at": rfc3339(request.created_at),
        "approvals": request.approvals.iter().map(|approval| json!({
            "approver": approval.approver,
            "at": rfc3339(approval.at),
        })).collect::<Vec<_>>(),
        "grant_id": request.grant_id,
        "decided_at": request.decided_at.map(rfc3339),
        "decided_by": request.decided_by,
        "decision_reason": request.decision_reason,
    })
}

pub fn grant_json(grant: &Grant) -> Value {
    json!({
        "id": grant.id,
        "request_id": grant.request_id,
        "user": grant.user,
        "target": grant.target,
        "state": grant.state.as_str(),
        "starts_at": rfc3339(grant.starts_at),
        "ends_at": rfc3339(grant.ends_at),
        "ended_at": grant.ended_at.map(rfc3339),
        "revoked_by": grant.revoked_by,
        "revoke_reason": grant.revoke_reason,
    })
}

pub fn audit_json(record: &AuditRecord) -> Value {
    let detail: Value =
        serde_json::from_str(&record.detail).unwrap_or(Value::String(record.detail.clone()));
    json!({
        "seq": record.seq,
        "id": record.id,
        "ts": rfc3339(record.ts),
        "type": record.event_type,
        "actor": record.actor,
        "target": record.target,
        "request_id": record.request_id,
        "grant_id": record.grant_id,
        "session_id": record.session_id,
        "detail": detail,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    })
}
