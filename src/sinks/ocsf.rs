//! `format = "ocsf"` for file and webhook sinks (issue #18): each event mapped to an Open
//! Cybersecurity Schema Framework 1.3.0 class, so a SIEM that reads OCSF (Security Lake,
//! Splunk's and Sentinel's OCSF add-ons, Tenzir) files it without a parser of ours.
//!
//! The mapping is one table, `class_of`: logins and failed logins are Authentication, locks
//! are Account Change, grants and revokes are User Access Management, requests and decisions
//! are API Activity on the bastion, SSH sessions, subsystems and file operations are SSH
//! Activity, database sessions and statements are Datastore Activity, port forwards and
//! refused connections are Network Activity, and the bastion's own bookkeeping (checkpoints,
//! recordings, sinks, retention, start and stop) is the Base Event. Nothing is dropped: the
//! event in our own JSON shape rides along in `unmapped`, hashes included, so the chain can
//! still be checked from an OCSF store. docs/AUDIT-FORMAT.md has the table.

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{ChainHead, SinkEvent};
use crate::clock::rfc3339;

/// The OCSF schema version the events follow.
pub const VERSION: &str = "1.3.0";

/// An OCSF event class and the activity within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Class {
    uid: u32,
    name: &'static str,
    activity_id: u32,
    activity: &'static str,
    /// `status_id`: 1 success, 2 failure, 0 when the class has no outcome to say.
    status_id: u32,
    /// `severity_id`: 1 informational, 2 low, 3 medium, 4 high.
    severity_id: u32,
}

const fn class(uid: u32, name: &'static str, activity_id: u32, activity: &'static str) -> Class {
    Class {
        uid,
        name,
        activity_id,
        activity,
        status_id: 1,
        severity_id: 1,
    }
}

impl Class {
    const fn failed(mut self, severity_id: u32) -> Class {
        self.status_id = 2;
        self.severity_id = severity_id;
        self
    }

    const fn severity(mut self, severity_id: u32) -> Class {
        self.severity_id = severity_id;
        self
    }
}

const BASE: &str = "Base Event";
const AUTHENTICATION: &str = "Authentication";
const ACCOUNT_CHANGE: &str = "Account Change";
const USER_ACCESS: &str = "User Access Management";
const API_ACTIVITY: &str = "API Activity";
const SSH_ACTIVITY: &str = "SSH Activity";
const NETWORK_ACTIVITY: &str = "Network Activity";
const DATASTORE_ACTIVITY: &str = "Datastore Activity";

/// The class of an event type, given its protocol where the type alone does not say.
fn class_of(event_type: &str, protocol: Option<&str>) -> Class {
    let database = protocol == Some("postgres");
    match event_type {
        "logged_in" => class(3002, AUTHENTICATION, 1, "Logon"),
        "auth_failed" => class(3002, AUTHENTICATION, 1, "Logon").failed(2),
        "user.targeted" => class(3002, AUTHENTICATION, 99, "Other").failed(4),
        "user.locked" => class(3001, ACCOUNT_CHANGE, 9, "Lock").severity(3),
        "user.unlocked" => class(3001, ACCOUNT_CHANGE, 99, "Unlock"),
        "granted" => class(3005, USER_ACCESS, 1, "Assign Privileges"),
        "revoked" | "grant_expired" => class(3005, USER_ACCESS, 2, "Revoke Privileges"),
        "requested" => class(6003, API_ACTIVITY, 1, "Create"),
        "approved" | "denied" | "expired" | "cancelled" => class(6003, API_ACTIVITY, 3, "Update"),
        "token.issued" => class(6003, API_ACTIVITY, 1, "Create"),
        "request_refused" => class(6003, API_ACTIVITY, 1, "Create").failed(2),
        "decision_refused" | "revoke_refused" => class(6003, API_ACTIVITY, 3, "Update").failed(3),
        "session.started" if database => class(6005, DATASTORE_ACTIVITY, 3, "Connect"),
        "session.ended" if database => class(6005, DATASTORE_ACTIVITY, 99, "Disconnect"),
        "session.started" => class(4007, SSH_ACTIVITY, 1, "Open"),
        "session.ended" => class(4007, SSH_ACTIVITY, 2, "Close"),
        "session_refused" => class(4007, SSH_ACTIVITY, 5, "Refuse").failed(2),
        "subsystem.refused" => class(4007, SSH_ACTIVITY, 5, "Refuse").failed(2),
        "file.operation" => class(4007, SSH_ACTIVITY, 6, "Traffic"),
        "forward.closed" => class(4001, NETWORK_ACTIVITY, 2, "Close"),
        "forward.refused" => class(4001, NETWORK_ACTIVITY, 5, "Refuse").failed(2),
        "connection.refused" | "source.refused" | "sources.refused" => {
            class(4001, NETWORK_ACTIVITY, 5, "Refuse").failed(3)
        }
        "recording.failed" => class(0, BASE, 99, "Other").failed(4),
        "sink.refused" | "webhook.rejected" => class(0, BASE, 99, "Other").failed(3),
        _ => class(0, BASE, 99, "Other"),
    }
}

/// A statement's activity in Datastore Activity, by its first keyword.
fn statement_class(sql: &str, failed: bool) -> Class {
    let verb = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let class = match verb.as_str() {
        "SELECT" | "WITH" | "SHOW" | "TABLE" | "VALUES" | "EXPLAIN" => {
            class(6005, DATASTORE_ACTIVITY, 4, "Query")
        }
        "INSERT" | "COPY" => class(6005, DATASTORE_ACTIVITY, 5, "Write"),
        "UPDATE" | "MERGE" | "ALTER" => class(6005, DATASTORE_ACTIVITY, 2, "Update"),
        "DELETE" | "TRUNCATE" | "DROP" => class(6005, DATASTORE_ACTIVITY, 7, "Delete"),
        "CREATE" => class(6005, DATASTORE_ACTIVITY, 6, "Create"),
        _ => class(6005, DATASTORE_ACTIVITY, 99, "Other"),
    };
    if failed { class.failed(2) } else { class }
}

/// An event in OCSF form.
pub fn event(event: &SinkEvent) -> Value {
    let ours = event.to_json();
    match event {
        SinkEvent::Control(record) => {
            let detail = &ours["detail"];
            let class = class_of(&record.event_type, detail["protocol"].as_str());
            let mut value = envelope(class, record.ts, &record.id, &ours);
            value["metadata"]["sequence"] = json!(record.seq);
            value["message"] = json!(record.event_type);
            if let Some(actor) = &record.actor {
                value["actor"] = json!({ "user": { "name": actor } });
            }
            if let Some(correlation) = record.session_id.as_ref().or(record.grant_id.as_ref()) {
                value["metadata"]["correlation_uid"] = json!(correlation);
            }
            if let Some(source) = detail["source"].as_str() {
                value["src_endpoint"] = endpoint(source);
            }
            if let Some(target) = &record.target {
                value["dst_endpoint"] = json!({ "name": target });
            }
            if let Some(why) = detail["why"].as_str().or(detail["reason"].as_str()) {
                value["status_detail"] = json!(why);
            }
            fill(&mut value, class, record, detail);
            value
        }
        SinkEvent::Statement(statement) => {
            let record = &statement.record();
            let sql = record["sql"].as_str().unwrap_or_default();
            let class = statement_class(sql, !record["error"].is_null());
            let mut value = envelope(class, statement.at, &event.id(), &ours);
            value["message"] = json!("pg.statement");
            value["metadata"]["correlation_uid"] = json!(statement.session_id);
            value["actor"] = json!({ "user": { "name": statement.user } });
            value["database"] = json!({ "name": statement.target, "type_id": 99,
                                        "type": "PostgreSQL" });
            value["type_id"] = json!(1);
            value["query_info"] = json!({ "query_string": sql, "uid": event.id() });
            value["src_endpoint"] = json!({ "name": "portcullis" });
            value["dst_endpoint"] = json!({ "name": statement.target });
            if let Some(message) = record["error"]["message"].as_str() {
                value["status_detail"] = json!(message);
                value["status_code"] = record["error"]["sqlstate"].clone();
            }
            value
        }
    }
}

/// The chain head as an OCSF Base Event, for the file sink's `chain.head` lines.
pub fn chain_head(head: &ChainHead, now: OffsetDateTime) -> Value {
    let ours = json!({ "type": "chain.head", "seq": head.seq, "hash": head.hash,
                       "ts": rfc3339(now) });
    let mut value = envelope(
        class(0, BASE, 99, "Other"),
        now,
        &format!("chain.head:{}", head.seq),
        &ours,
    );
    value["message"] = json!("chain.head");
    value
}

/// The fields every OCSF event has.
fn envelope(class: Class, at: OffsetDateTime, id: &str, ours: &Value) -> Value {
    let category = class.uid / 1000;
    let mut value = json!({
        "class_uid": class.uid,
        "class_name": class.name,
        "category_uid": category,
        "activity_id": class.activity_id,
        "activity_name": class.activity,
        "type_uid": class.uid * 100 + class.activity_id,
        "severity_id": class.severity_id,
        "time": at.unix_timestamp_nanos() / 1_000_000,
        "time_dt": rfc3339(at),
        "metadata": {
            "version": VERSION,
            "uid": id,
            "log_name": "portcullis.audit",
            "product": {
                "name": "portcullis",
                "vendor_name": "portcullis",
                "version": env!("CARGO_PKG_VERSION"),
            },
        },
        "unmapped": { "portcullis": ours },
    });
    if class.status_id != 0 {
        value["status_id"] = json!(class.status_id);
        value["status"] = json!(if class.status_id == 1 {
            "Success"
        } else {
            "Failure"
        });
    }
    value
}

/// The class-specific objects each class asks for.
fn fill(value: &mut Value, class: Class, record: &crate::audit::AuditRecord, detail: &Value) {
    let user = |name: Option<&str>| json!({ "name": name });
    match class.uid {
        3001 => value["user"] = user(detail["user"].as_str()),
        3002 => {
            value["user"] = user(record.actor.as_deref().or(detail["user"].as_str()));
            value["auth_protocol"] = json!(detail["protocol"].as_str().unwrap_or("Unknown"));
            if let Some(session) = &record.session_id {
                value["session"] = json!({ "uid": session });
            }
        }
        3005 => {
            value["user"] = user(detail["user"].as_str().or(record.actor.as_deref()));
            value["privileges"] = json!(["access"]);
            value["resources"] = json!([{ "name": record.target, "type": "target" }]);
        }
        6003 => {
            value["api"] = json!({ "operation": record.event_type,
                                   "service": { "name": "portcullis" } });
            if let Some(request) = &record.request_id {
                value["api"]["request"] = json!({ "uid": request });
            }
        }
        4007 | 4001 => {
            if let Some(session) = &record.session_id {
                value["connection_info"] = json!({ "uid": session });
            }
            if let Some(path) = detail["path"].as_str() {
                value["file"] = json!({ "path": path, "name": file_name(path) });
            }
            if let Some(destination) = detail["destination"].as_str() {
                value["dst_endpoint"] = endpoint(destination);
            }
        }
        6005 => {
            value["database"] = json!({ "name": record.target, "type_id": 99,
                                        "type": "PostgreSQL" });
            value["type_id"] = json!(1);
        }
        _ => {}
    }
}

/// An endpoint from `ip`, `ip:port` or a name.
fn endpoint(address: &str) -> Value {
    if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
        return json!({ "ip": socket.ip().to_string(), "port": socket.port() });
    }
    if let Ok(ip) = address.parse::<std::net::IpAddr>() {
        return json!({ "ip": ip.to_string() });
    }
    json!({ "name": address })
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_event_has_its_class_and_activity() {
        // (type, protocol, class_uid, activity_id, status_id)
        let cases = [
            ("logged_in", None, 3002, 1, 1),
            ("auth_failed", None, 3002, 1, 2),
            ("user.locked", None, 3001, 9, 1),
            ("granted", None, 3005, 1, 1),
            ("revoked", None, 3005, 2, 1),
            ("grant_expired", None, 3005, 2, 1),
            ("requested", None, 6003, 1, 1),
            ("approved", None, 6003, 3, 1),
            ("decision_refused", None, 6003, 3, 2),
            ("session.started", Some("ssh"), 4007, 1, 1),
            ("session.ended", Some("ssh"), 4007, 2, 1),
            ("session.started", Some("postgres"), 6005, 3, 1),
            ("file.operation", None, 4007, 6, 1),
            ("forward.refused", None, 4001, 5, 2),
            ("source.refused", None, 4001, 5, 2),
            ("pg.checkpoint", None, 0, 99, 1),
            ("retention.ran", None, 0, 99, 1),
        ];
        for (event_type, protocol, uid, activity, status) in cases {
            let class = class_of(event_type, protocol);
            assert_eq!(
                (class.uid, class.activity_id, class.status_id),
                (uid, activity, status),
                "{event_type}"
            );
        }
    }

    #[test]
    fn statements_are_datastore_activity_by_their_verb() {
        let cases = [
            ("select 1", 4),
            ("  WITH x AS (select 1) select * from x", 4),
            ("insert into t values (1)", 5),
            ("update t set a = 1", 2),
            ("delete from t", 7),
            ("drop table t", 7),
            ("create table t (a int)", 6),
            ("begin", 99),
            ("", 99),
        ];
        for (sql, activity) in cases {
            assert_eq!(statement_class(sql, false).activity_id, activity, "{sql}");
        }
        assert_eq!(statement_class("select 1", true).status_id, 2);
    }

    #[test]
    fn endpoints_parse_what_the_events_hold() {
        assert_eq!(
            endpoint("127.0.0.1:2222"),
            json!({"ip": "127.0.0.1", "port": 2222})
        );
        assert_eq!(endpoint("::1"), json!({"ip": "::1"}));
        assert_eq!(endpoint("db:5432"), json!({"name": "db:5432"}));
    }
}
