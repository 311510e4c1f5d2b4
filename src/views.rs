//! JSON views of core values: the shapes that `--json` prints on the host CLI and over the SSH
//! command interface. They are a public interface (README, issue #2): change them only by adding
//! fields. Core types do not derive serde; these functions are the one place their JSON form lives.

use serde_json::{Value, json};

use crate::access::model::{AccessRequest, Grant};
use crate::audit::AuditRecord;
use crate::clock::rfc3339;

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
