//! The writer of database sessions' statements (issue #4): their query-log lines, chained line
//! to line, and the `pg.checkpoint` that anchors each log in the audit chain (issue #18),
//! written off the relay by one thread for all sessions.
//!
//! A relay only tracks statements. About once a second it hands the finished ones to its
//! `QueryRecording`, and the writer thread drains every batch waiting, writes and flushes each
//! session's lines, then appends one checkpoint per session in one transaction (one commit for
//! every session, not one each). Statements are not audit rows (issue #18: a row a statement
//! was what held `pgbench -S` back); the chained log is their record, and a changed, removed or
//! reordered line no longer leads to its session's last checkpoint.
//!
//! Batches queue in a bounded channel: a writer that falls behind stalls the relays that hand it
//! work (backpressure), it never buffers without bound. Batches are written in the order they
//! were handed over, so each session's log keeps its statements' order, and a session's last
//! checkpoint is committed before its `session.ended`. (Running the thread at nice 10 was
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
use crate::audit::AuditEntry;
use crate::recording::querylog::{LineChain, QueryLog, Statement};
use crate::store::StoreError;

/// Batches waiting for the writer, over all sessions, before relays wait for it.
const QUEUE: usize = 1024;
/// At most this many batches are written before their checkpoints are committed.
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
        // Each batch's lines are written first; then each session's log, as it stands after
        // its last batch here, is checkpointed.
        let mut recordings: Vec<(Arc<Shared>, LineChain)> = Vec::new();
        let mut waiting = Vec::new();
        for job in jobs {
            match job {
                Job::Batch {
                    recording,
                    statements,
                } => {
                    recording.session.count_statements(&statements);
                    let Some(chain) = recording.write_log(&statements) else {
                        continue;
                    };
                    match recordings
                        .iter_mut()
                        .find(|(written, _)| Arc::ptr_eq(written, &recording))
                    {
                        Some((_, last)) => *last = chain,
                        None => recordings.push((recording, chain)),
                    }
                }
                Job::Written(done) => waiting.push(done),
            }
        }
        let entries = recordings
            .iter()
            .map(|(recording, chain)| recording.session.query_checkpoint(chain).entry())
            .collect();
        if let Err(error) = audit(&recordings, entries) {
            tracing::error!(%error, sessions = recordings.len(), "cannot audit statements; ending those sessions");
            for (recording, _) in &recordings {
                recording.health.fail_closed();
            }
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

impl Shared {
    /// Writes and flushes the statements' lines, and returns where the log's chain stands; a
    /// failure is audited once (and there is nothing to checkpoint).
    fn write_log(&self, statements: &[Statement]) -> Option<LineChain> {
        if !self.health.recording() {
            return None;
        }
        let Ok(mut slot) = self.log.lock() else {
            self.health.fail_closed();
            return None;
        };
        let log = slot.as_mut()?;
        // Synced, not only flushed: the checkpoint committed next must never point past what a
        // power loss leaves of the file (issue #18 review).
        let written = statements
            .iter()
            .try_for_each(|statement| log.write(statement))
            .and_then(|()| log.sync());
        match written {
            Ok(()) => Some(log.chain().clone()),
            Err(error) => {
                self.health.failed(&self.session, &error);
                None
            }
        }
    }
}

/// Appends the sessions' checkpoints, every session's in one transaction.
fn audit(
    recordings: &[(Arc<Shared>, LineChain)],
    entries: Vec<AuditEntry>,
) -> Result<(), StoreError> {
    let Some((first, _)) = recordings.first() else {
        return Ok(());
    };
    let access = &first.session.inner.access;
    let now = access.now();
    access
        .store()
        .write(|tx| tx.append_entries(entries, now).map(|_| ()))
}
