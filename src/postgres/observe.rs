//! Statement tracking for the query log (issue #4), sans-IO: fed every message in both
//! directions, it returns each statement once its outcome is known.
//!
//! Responses come back in request order, so pending statements wait in a queue. A simple
//! `Query` is one statement (all its CommandComplete tags) and ends at ReadyForQuery. In the
//! extended protocol each `Execute` is one statement, ended by its CommandComplete,
//! EmptyQueryResponse, PortalSuspended or ErrorResponse; after an error the server skips to the
//! next `Sync`, so statements still queued when ReadyForQuery answers that `Sync` are logged as
//! not run. COPY data is counted against the statement that started the COPY.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::codec::{self, Message};
use crate::recording::querylog::Statement;

/// Statements prepared or bound beyond this many are not remembered (their SQL shows as unknown).
const MAX_REMEMBERED: usize = 10_000;

enum Pending {
    Statement(Statement),
    /// A `Sync` from the client: the ReadyForQuery that answers it closes everything before it.
    Sync,
}

/// A bound portal: its SQL and parameter values, shared with the statements it runs.
type Portal = (Arc<str>, Arc<[Option<Vec<u8>>]>);

#[derive(Default)]
pub struct Tracker {
    pending: VecDeque<Pending>,
    /// Prepared statements by name ("" is the unnamed one).
    prepared: HashMap<String, Arc<str>>,
    /// Portals by name.
    portals: HashMap<String, Portal>,
}

impl Tracker {
    /// A message from the client.
    pub fn client_sent(&mut self, message: &Message) {
        match message.tag {
            b'Q' => {
                let sql = codec::query_text(&message.body).unwrap_or_default();
                self.pending.push_back(Pending::Statement(Statement {
                    protocol: "simple",
                    sql: sql.into(),
                    started: Some(Instant::now()),
                    ..Statement::default()
                }));
            }
            b'P' => {
                if let Ok((name, sql)) = codec::parse_message(&message.body)
                    && (self.prepared.len() < MAX_REMEMBERED || name.is_empty())
                {
                    self.prepared.insert(name, sql.into());
                }
            }
            b'B' => {
                if let Ok(bind) = codec::bind_message(&message.body)
                    && (self.portals.len() < MAX_REMEMBERED || bind.portal.is_empty())
                {
                    let sql = self
                        .prepared
                        .get(&bind.statement)
                        .cloned()
                        .unwrap_or_else(|| {
                            format!("<unknown prepared statement {:?}>", bind.statement).into()
                        });
                    // Binary values are logged as hex, like bytea: `\x0000002a`.
                    let parameters = bind
                        .parameters
                        .into_iter()
                        .zip(bind.binary)
                        .map(|(value, binary)| match value {
                            Some(bytes) if binary => {
                                Some(format!("\\x{}", hex::encode(bytes)).into_bytes())
                            }
                            other => other,
                        })
                        .collect();
                    self.portals.insert(bind.portal, (sql, parameters));
                }
            }
            b'E' => {
                let portal = codec::execute_portal(&message.body).unwrap_or_default();
                let (sql, parameters) = self.portals.get(&portal).cloned().unwrap_or_else(|| {
                    (
                        format!("<unknown portal {portal:?}>").into(),
                        Arc::default(),
                    )
                });
                self.pending.push_back(Pending::Statement(Statement {
                    protocol: "extended",
                    sql,
                    parameters,
                    started: Some(Instant::now()),
                    ..Statement::default()
                }));
            }
            b'C' => {
                // Close: 'S' statement or 'P' portal, then the name.
                if let Some((&kind, rest)) = message.body.split_first() {
                    let name = String::from_utf8_lossy(
                        rest.split(|byte| *byte == 0).next().unwrap_or_default(),
                    )
                    .into_owned();
                    match kind {
                        b'S' => {
                            self.prepared.remove(&name);
                        }
                        b'P' => {
                            self.portals.remove(&name);
                        }
                        _ => {}
                    }
                }
            }
            b'S' => self.pending.push_back(Pending::Sync),
            b'd' => self.count_copy(message.body.len()),
            b'c' | b'f' => {
                // The server ignores a Sync that arrives during COPY FROM STDIN (clients such as
                // tokio-postgres send one right after the Execute): drop those markers so the
                // next ReadyForQuery is matched to the right batch.
                while matches!(self.pending.back(), Some(Pending::Sync)) {
                    self.pending.pop_back();
                }
            }
            _ => {}
        }
    }

    /// A message from the server; appends the statements it finished to `done`.
    ///
    /// Most answers finish nothing (BindComplete, DataRow, ...): the clock is read only for
    /// those that do, and nothing is allocated per message (this runs for every message of
    /// every answer).
    pub fn server_sent(&mut self, message: &Message, done: &mut Vec<Statement>) {
        let before = done.len();
        self.outcomes(message, done);
        if done.len() > before {
            let now = Instant::now();
            for statement in &mut done[before..] {
                statement.finished = Some(now);
            }
        }
    }

    fn outcomes(&mut self, message: &Message, done: &mut Vec<Statement>) {
        match message.tag {
            b'C' | b'I' | b's' | b'E' => {
                let error = (message.tag == b'E').then(|| codec::error_fields(&message.body));
                let tag = (message.tag == b'C').then(|| codec::command_tag(&message.body));
                let Some(Pending::Statement(front)) = self.pending.front_mut() else {
                    return;
                };
                if let Some(tag) = tag {
                    if let Some(rows) = row_count(&tag) {
                        front.rows = Some(front.rows.unwrap_or(0) + rows);
                    }
                    front.tags.push(tag);
                }
                if let Some((code, text)) = error {
                    front.sqlstate = Some(code);
                    front.error = Some(text);
                }
                if front.protocol == "extended"
                    && let Some(Pending::Statement(statement)) = self.pending.pop_front()
                {
                    done.push(statement);
                }
            }
            b'Z' => {
                while let Some(pending) = self.pending.pop_front() {
                    match pending {
                        Pending::Sync => break,
                        Pending::Statement(statement) => {
                            let simple = statement.protocol == "simple";
                            done.push(statement);
                            if simple {
                                break;
                            }
                        }
                    }
                }
            }
            b'd' => self.count_copy(message.body.len()),
            _ => {}
        }
    }

    fn count_copy(&mut self, bytes: usize) {
        if let Some(Pending::Statement(front)) = self.pending.front_mut() {
            front.copy_bytes += bytes as u64;
        }
    }

    /// Statements never answered (the connection ended), for the log.
    pub fn unfinished(&mut self) -> Vec<Statement> {
        self.pending
            .drain(..)
            .filter_map(|pending| match pending {
                Pending::Statement(statement) => Some(statement),
                Pending::Sync => None,
            })
            .collect()
    }
}

/// The row count of a CommandComplete tag: `SELECT 5`, `INSERT 0 5`, `UPDATE 3`, `COPY 10`;
/// `None` for commands that count nothing (`BEGIN`, `CREATE TABLE`).
fn row_count(tag: &str) -> Option<u64> {
    let mut words = tag.split(' ');
    let command = words.next()?;
    let counted = matches!(
        command,
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE"
    );
    if !counted {
        return None;
    }
    words.next_back()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes, BytesMut};

    use super::*;

    fn message(tag: u8, body: &[u8]) -> Message {
        Message {
            tag,
            body: Bytes::copy_from_slice(body),
        }
    }

    /// What the tracker finishes on one server message.
    fn answer(tracker: &mut Tracker, message: &Message) -> Vec<Statement> {
        let mut done = Vec::new();
        tracker.server_sent(message, &mut done);
        done
    }

    #[test]
    fn simple_and_extended_statements_get_their_outcomes() {
        let mut tracker = Tracker::default();
        tracker.client_sent(&message(b'Q', b"select 1; select 2\0"));
        assert!(answer(&mut tracker, &message(b'C', b"SELECT 1\0")).is_empty());
        assert!(answer(&mut tracker, &message(b'C', b"SELECT 1\0")).is_empty());
        let done = answer(&mut tracker, &message(b'Z', b"I"));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].tags, ["SELECT 1", "SELECT 1"]);

        // Pipeline: two executes, the first fails, the second is skipped until Sync.
        tracker.client_sent(&message(b'P', b"s1\0select $1\0\0\0"));
        let mut bind = BytesMut::new();
        bind.put_slice(b"\0s1\0");
        bind.put_i16(0);
        bind.put_i16(1);
        bind.put_i32(1);
        bind.put_slice(b"7");
        bind.put_i16(0);
        tracker.client_sent(&message(b'B', &bind));
        tracker.client_sent(&message(b'E', b"\0\0\0\0\0"));
        tracker.client_sent(&message(b'E', b"\0\0\0\0\0"));
        tracker.client_sent(&message(b'S', b""));
        let failed = answer(
            &mut tracker,
            &message(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0"),
        );
        assert_eq!(failed.len(), 1);
        assert_eq!(&*failed[0].sql, "select $1");
        assert_eq!(&failed[0].parameters[..], [Some(b"7".to_vec())]);
        assert_eq!(failed[0].sqlstate.as_deref(), Some("22012"));
        let skipped = answer(&mut tracker, &message(b'Z', b"I"));
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].tags.is_empty());
        assert!(tracker.unfinished().is_empty());
    }

    #[test]
    fn rows_sum_the_tags_that_count_rows() {
        for (tags, rows) in [
            (&[][..], None),
            (&["BEGIN"][..], None),
            (&["SELECT 5"][..], Some(5)),
            (&["INSERT 0 3", "UPDATE 2", "COMMIT"][..], Some(5)),
            (&["CREATE TABLE", "COPY 10"][..], Some(10)),
            (&["DELETE x"][..], None),
        ] {
            let mut tracker = Tracker::default();
            tracker.client_sent(&message(b'Q', b"-- several statements\0"));
            for tag in tags {
                answer(&mut tracker, &message(b'C', format!("{tag}\0").as_bytes()));
            }
            let done = answer(&mut tracker, &message(b'Z', b"I"));
            assert_eq!(done[0].rows, rows, "{tags:?}");
            assert_eq!(done[0].tags, tags, "{tags:?}");
        }
    }

    #[test]
    fn a_sync_sent_during_copy_in_is_not_matched_to_a_ready_for_query() {
        let mut tracker = Tracker::default();
        tracker.client_sent(&message(b'P', b"\0copy t from stdin\0\0\0"));
        tracker.client_sent(&message(b'B', b"\0\0\0\0\0\0\0\0"));
        tracker.client_sent(&message(b'E', b"\0\0\0\0\0"));
        tracker.client_sent(&message(b'S', b""));
        tracker.client_sent(&message(b'd', b"1\n2\n"));
        tracker.client_sent(&message(b'c', b""));
        tracker.client_sent(&message(b'S', b""));
        let done = answer(&mut tracker, &message(b'C', b"COPY 2\0"));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].copy_bytes, 4);
        assert!(answer(&mut tracker, &message(b'Z', b"I")).is_empty());
        tracker.client_sent(&message(b'Q', b"select 1\0"));
        answer(&mut tracker, &message(b'C', b"SELECT 1\0"));
        let done = answer(&mut tracker, &message(b'Z', b"I"));
        assert_eq!(done[0].tags, ["SELECT 1"]);
    }
}
