//! The writer of database sessions' statements (issue #4): their query-log lines and their
//! `pg.query` audit rows, written off the relay by one thread for all sessions.
//!
//! A relay only tracks statements. About once a second it hands the finished ones to its
//! `QueryRecording`, and the writer thread drains every batch waiting, writes and flushes each
//! session's lines, then appends all their audit rows in one transaction (one commit for every
//! session, not one each). A statement's answer no longer waits for its JSON line and hash.
//!
//! Batches queue in a bounded channel: a writer that falls behind stalls the relays that hand it
//! work (backpressure), it never buffers without bound. Batches are written in the order they
//! were handed over, so each session's log keeps its statements' order, and a session's
//! `pg.query` rows are committed before its `session.ended`. (Running the thread at nice 10 was
//! measured and dropped: the relays preempted it at every answer, 0.93 context switches per
//! transaction instead of 0.67, for no gain in TPS.)
//!
//! **Fail closed:** a failed write or audit marks the session; its relay checks the mark each
//! second and ends the session (for a failed write, unless the target says
//! `on_recording_failure = "continue"`). The price of writing off the relay: a statement's
//! answer reaches the client before its line is on disk, so a failing disk ends the session
//! within about a second of the failure, not at the statement (the statement had run on the
//! target either way; the SSH front end's recordings work the same, flushed each second).

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{RecordingHealth, Session};
use crate::audit::{AuditEntry, AuditEvent};
use crate::recording::querylog::{QueryLog, Statement};
use crate::store::StoreError;

/// Batches waiting for the writer, over all sessions, before relays wait for it.
const QUEUE: usize = 1024;
/// At most this many batches go into one audit transaction.
const GROUP: usize = 256;

/// The writer thread's queue; cheap to clone, one per bastion.
#[derive(Clone)]
pub struct QueryWriter {
    jobs: mpsc::Sender<Job>,
}

/// One session's handle on the writer.
pub struct QueryRecording {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
}

struct Shared {
    session: Session,
    log: Mutex<Option<QueryLog>>,
    health: RecordingHealth,
}

enum Job {
    Batch {
        recording: Arc<Shared>,
        statements: Vec<Statement>,
    },
    /// Answered once every batch handed over before it is written and committed.
    Written(oneshot::Sender<()>),
}

impl QueryWriter {
    /// Starts the writer thread. It ends when every handle is dropped.
    pub fn start() -> std::io::Result<QueryWriter> {
        let (jobs, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("query-writer".to_string())
            .spawn(move || write_until_closed(queue))?;
        Ok(QueryWriter { jobs })
    }

    /// The writer's handle for one session and its open query log.
    pub fn recording(&self, session: Session, log: QueryLog) -> QueryRecording {
        QueryRecording {
            shared: Arc::new(Shared {
                session,
                log: Mutex::new(Some(log)),
                health: RecordingHealth::default(),
            }),
            jobs: self.jobs.clone(),
        }
    }
}

impl QueryRecording {
    /// Hands finished statements to the writer; waits only while its queue is full.
    pub async fn hand_over(&self, statements: Vec<Statement>) {
        if statements.is_empty() {
            return;
        }
        let job = Job::Batch {
            recording: self.shared.clone(),
            statements,
        };
        if self.jobs.send(job).await.is_err() {
            tracing::error!(session = %self.shared.session.id(), "the query writer is gone");
            self.shared.health.fail_closed();
        }
    }

    /// Whether a failed write or audit means the session must end now.
    pub fn must_end(&self) -> bool {
        self.shared.health.must_end()
    }

    /// Waits until everything handed over is written, then takes the log back to finalize it.
    pub async fn finish(&self) -> Option<QueryLog> {
        let (done, written) = oneshot::channel();
        if self.jobs.send(Job::Written(done)).await.is_ok() {
            let _ = written.await;
        }
        self.shared.log.lock().ok().and_then(|mut log| log.take())
    }
}

fn write_until_closed(mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < GROUP {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Each batch's lines are written first; its statements then move into its audit rows.
        let mut recordings = Vec::new();
        let mut entries = Vec::new();
        let mut waiting = Vec::new();
        for job in jobs {
            match job {
                Job::Batch {
                    recording,
                    statements,
                } => {
                    recording.write_log(&statements);
                    let events = recording.session.query_events(statements);
                    entries.extend(events.into_iter().map(AuditEvent::into_entry));
                    recordings.push(recording);
                }
                Job::Written(done) => waiting.push(done),
            }
        }
        if let Err(error) = audit(&recordings, entries) {
            tracing::error!(%error, sessions = recordings.len(), "cannot audit statements; ending those sessions");
            for recording in &recordings {
                recording.health.fail_closed();
            }
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

impl Shared {
    /// Writes and flushes the statements' lines; a failure is audited once.
    fn write_log(&self, statements: &[Statement]) {
        if !self.health.recording() {
            return;
        }
        let Ok(mut slot) = self.log.lock() else {
            self.health.fail_closed();
            return;
        };
        let Some(log) = slot.as_mut() else {
            return;
        };
        let written = statements
            .iter()
            .try_for_each(|statement| log.write(statement))
            .and_then(|()| log.flush());
        if let Err(error) = written {
            self.health.failed(&self.session, &error);
        }
    }
}

/// Appends the sessions' `pg.query` rows, every session's in one transaction.
fn audit(recordings: &[Arc<Shared>], entries: Vec<AuditEntry>) -> Result<(), StoreError> {
    let Some(first) = recordings.first() else {
        return Ok(());
    };
    let access = &first.session.inner.access;
    let now = access.now();
    access
        .store()
        .write(|tx| tx.append_entries(entries, now).map(|_| ()))
}
