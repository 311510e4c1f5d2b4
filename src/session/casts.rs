//! The writer of terminal recordings (issue #3): every SSH channel's asciicast events escaped,
//! hashed and written off the relay by one thread for all sessions.
//!
//! A relay copies each packet of output or input into a job and goes on; the writer thread
//! writes the jobs in the order they were queued, so a channel's events keep their order and
//! their arrival times. Before, each relay wrote its own events on a tokio worker: past the
//! kernel's dirty-page limit a write sleeps until the disk catches up, and every task on that
//! worker slept with it (an interactive session's echo p99 reached 21-108 ms while three recorded
//! bulk downloads ran). Sending a job is a queue push, not a thread hop per packet: handing each
//! packet to the blocking pool and waiting for it cost text transfers a third of their rate
//! (docs/PERFORMANCE.md).
//!
//! The queue is bounded and short: a writer that falls behind (the disk) slows the relays that
//! hand it work. An event that only fills its recorder's buffer (a keystroke, an echo) of a
//! channel with nothing queued is written where it arrives instead: a copy into memory, no system
//! call, so an interactive session does not wait behind other sessions' bulk packets.
//!
//! **Fail closed:** a failed write marks the channel; its relay checks the mark at every packet
//! and each second and ends the session (unless the target says `on_recording_failure =
//! "continue"`), so a failing disk ends a session within a packet or a second of the failure.
//! Finalizing (the fsync) stays with the channel's owner on a blocking thread, so one channel's
//! sync does not hold up the others' events.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{RecordingHealth, Session};
use crate::audit::AuditEvent;
use crate::recording::{Recorder, RecordingError};

/// Packets waiting for the writer, over all channels, before relays wait for it. Short, because an
/// event that cannot be written in place waits behind them: before events were written in place,
/// 8 gave an echo p99 of 5-23 ms under three bulk downloads, 32 gave 9-28 ms.
const QUEUE: usize = 8;

/// Output packets a watcher may fall behind by before it is told it lagged (it then starts
/// again from the current screen).
const WATCH_QUEUE: usize = 1024;

/// The writer thread's queue; cheap to clone, one per bastion.
#[derive(Clone)]
pub struct CastWriter {
    jobs: mpsc::Sender<Job>,
}

/// One channel's recording, written by the writer thread.
pub struct ChannelCast {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
}

struct Shared {
    session: Session,
    /// The channel's index within the session.
    channel: u32,
    recorder: Mutex<Option<Recorder>>,
    /// Bytes covered by the last `recording.checkpoint` (issue #18); written by the writer only.
    checkpointed: std::sync::atomic::AtomicU64,
    /// This channel's jobs not yet written: while any wait, its events queue behind them.
    queued: AtomicUsize,
    health: RecordingHealth,
    /// Live watchers of a pty channel's output (issue #19), sent to under the recorder's lock
    /// right after the output is recorded, so a watcher that takes the screen under that lock
    /// misses nothing and sees nothing twice.
    watchers: tokio::sync::broadcast::Sender<Bytes>,
}

enum Job {
    Output(Arc<Shared>, Instant, Bytes),
    Input(Arc<Shared>, Instant, Bytes),
    Resize(Arc<Shared>, Instant, u32, u32),
    Flush(Arc<Shared>),
    /// Answered once every job queued before it is written.
    Written(oneshot::Sender<()>),
}

impl CastWriter {
    /// Starts the writer thread. It ends when every handle is dropped.
    pub fn start() -> std::io::Result<CastWriter> {
        let (jobs, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("cast-writer".to_string())
            .spawn(move || write_until_closed(queue))?;
        Ok(CastWriter { jobs })
    }

    /// The writer's handle on one channel's open recording.
    pub fn channel(&self, session: Session, channel: u32, recorder: Recorder) -> ChannelCast {
        let watchable = recorder.screen_dump().is_some();
        let shared = Arc::new(Shared {
            session,
            channel,
            checkpointed: std::sync::atomic::AtomicU64::new(0),
            // The relay's one-second tick queues the flush.
            recorder: Mutex::new(Some(recorder.flushed_by_owner())),
            queued: AtomicUsize::new(0),
            health: RecordingHealth::default(),
            watchers: tokio::sync::broadcast::channel(WATCH_QUEUE).0,
        });
        if watchable {
            let weak = Arc::downgrade(&shared);
            let attach: crate::access::Attach = Arc::new(move || {
                let shared = weak.upgrade()?;
                let slot = shared.recorder.lock().ok()?;
                // A channel whose emulation stopped (over budget) is watched from its output on.
                let dump = slot.as_ref()?.screen_dump().unwrap_or_default();
                Some((dump, shared.watchers.subscribe()))
            });
            let access = &shared.session.inner.access;
            access.register_screen(
                shared.session.id(),
                crate::access::LiveScreen { channel, attach },
            );
        }
        ChannelCast {
            shared,
            jobs: self.jobs.clone(),
        }
    }
}

impl ChannelCast {
    /// Records terminal output; false once the session must end for its recording.
    pub async fn output(&self, data: &[u8]) -> bool {
        self.text(data, false).await
    }

    /// Records keystrokes; false once the session must end for its recording.
    pub async fn input(&self, data: &[u8]) -> bool {
        self.text(data, true).await
    }

    async fn text(&self, data: &[u8], input: bool) -> bool {
        let at = Instant::now();
        let watchers = &self.shared.watchers;
        let in_place = self.in_place(data.len(), |recorder| match input {
            true => recorder.input_at(at, data),
            false => {
                recorder.output_at(at, data)?;
                if watchers.receiver_count() > 0 {
                    let _ = watchers.send(Bytes::copy_from_slice(data));
                }
                Ok(())
            }
        });
        if let Some(going_on) = in_place {
            return going_on;
        }
        let (cast, data) = (self.shared.clone(), Bytes::copy_from_slice(data));
        let job = match input {
            true => Job::Input(cast, at, data),
            false => Job::Output(cast, at, data),
        };
        self.queue(job).await
    }

    pub async fn resize(&self, width: u32, height: u32) -> bool {
        let at = Instant::now();
        if let Some(going_on) = self.in_place(0, |recorder| recorder.resize_at(at, width, height)) {
            return going_on;
        }
        self.queue(Job::Resize(self.shared.clone(), at, width, height))
            .await
    }

    /// Writes an event where it arrives if nothing of this channel waits in the queue and the
    /// event only fills the recorder's buffer (`Recorder::stays_in_memory`: no system call, so
    /// nothing that waits for the disk). Keystrokes and echoes so skip the bulk packets other
    /// channels queued: with three recorded bulk downloads running, echoes took 1.9-4.1 ms at p50
    /// queued and 0.25-0.35 ms in place (docs/PERFORMANCE.md). `None`: the event must be queued.
    fn in_place(
        &self,
        size: usize,
        write: impl FnOnce(&mut Recorder) -> Result<(), RecordingError>,
    ) -> Option<bool> {
        if self.must_end() {
            return Some(false);
        }
        if !self.shared.health.recording() {
            return Some(true);
        }
        if self.shared.queued.load(Ordering::SeqCst) != 0 {
            return None;
        }
        // Never wait for the lock here: the writer or `finish` may hold it.
        let slot = self.shared.recorder.try_lock().ok()?;
        if !slot.as_ref()?.stays_in_memory(size) {
            return None;
        }
        // Copying into the buffer does not fail; were it to, it fails as the writer's writes do.
        self.shared.apply(slot, write);
        Some(!self.must_end())
    }

    /// Queues a flush (owners call this every second); false once the session must end.
    pub async fn flush(&self) -> bool {
        // Not counted in `queued`: a flush carries no event, so the channel's next keystroke
        // need not wait behind it.
        self.send(Job::Flush(self.shared.clone()), false).await
    }

    /// Whether a failed write means the session must end now.
    pub fn must_end(&self) -> bool {
        self.shared.health.must_end()
    }

    /// Waits until everything queued is written, then takes the recorder back to finalize it
    /// (`None` if it failed, or was taken already).
    pub async fn finish(&self) -> Option<Recorder> {
        let shared = &self.shared;
        shared
            .session
            .inner
            .access
            .unregister_screen(shared.session.id(), shared.channel);
        let (done, written) = oneshot::channel();
        if self.jobs.send(Job::Written(done)).await.is_ok() {
            let _ = written.await;
        }
        self.shared
            .recorder
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
    }

    async fn queue(&self, job: Job) -> bool {
        self.send(job, true).await
    }

    async fn send(&self, job: Job, counted: bool) -> bool {
        if self.must_end() {
            return false;
        }
        // A recording that failed under `on_recording_failure = "continue"` takes nothing more.
        if self.shared.health.recording() {
            if counted {
                self.shared.queued.fetch_add(1, Ordering::SeqCst);
            }
            if self.jobs.send(job).await.is_err() {
                tracing::error!(session = %self.shared.session.id(), "the cast writer is gone");
                self.shared.health.fail_closed();
            }
        }
        !self.must_end()
    }
}

fn write_until_closed(mut queue: mpsc::Receiver<Job>) {
    let mut checkpoints = Checkpoints::default();
    while let Some(job) = queue.blocking_recv() {
        let written = match job {
            Job::Output(cast, at, data) => {
                let watchers = cast.watchers.clone();
                cast.write(|recorder| {
                    recorder.output_at(at, &data)?;
                    if watchers.receiver_count() > 0 {
                        let _ = watchers.send(data);
                    }
                    Ok(())
                });
                cast
            }
            Job::Input(cast, at, data) => {
                cast.write(|recorder| recorder.input_at(at, &data));
                cast
            }
            Job::Resize(cast, at, width, height) => {
                cast.write(|recorder| recorder.resize_at(at, width, height));
                cast
            }
            Job::Flush(cast) => {
                cast.write(Recorder::flush);
                checkpoints.take(cast);
                checkpoints.commit_if_due(queue.is_empty());
                continue;
            }
            Job::Written(done) => {
                let _ = done.send(());
                continue;
            }
        };
        // Only now may this channel's next small event skip the queue: it comes after this one.
        written.queued.fetch_sub(1, Ordering::SeqCst);
        checkpoints.commit_if_due(queue.is_empty());
    }
    checkpoints.commit();
}

/// `recording.checkpoint`s waiting to be committed, every channel's in one transaction (issue
/// #18 review: one transaction a channel a second, on the thread every recording goes through).
#[derive(Default)]
struct Checkpoints {
    waiting: Vec<(Arc<Shared>, u64, AuditEvent)>,
    since: Option<Instant>,
}

/// How long a checkpoint may wait for others to share its transaction.
const CHECKPOINT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl Checkpoints {
    /// Takes the checkpoint of a channel that was just flushed, if it grew since its last.
    fn take(&mut self, cast: Arc<Shared>) {
        let progress = match cast.recorder.lock() {
            Ok(slot) => slot.as_ref().map(Recorder::progress),
            Err(_) => None,
        };
        let Some((offset, sha256)) = progress else {
            return;
        };
        if offset == cast.checkpointed.load(Ordering::Relaxed) {
            return;
        }
        let event = cast
            .session
            .recording_checkpoint(cast.channel, offset, sha256);
        self.waiting.push((cast, offset, event));
        self.since.get_or_insert_with(Instant::now);
    }

    /// Commits when the writer has nothing else to do, or a checkpoint has waited long enough.
    fn commit_if_due(&mut self, idle: bool) {
        if self
            .since
            .is_some_and(|since| idle || since.elapsed() >= CHECKPOINT_WAIT)
        {
            self.commit();
        }
    }

    /// One transaction for every waiting checkpoint; a failure fails their recordings closed.
    fn commit(&mut self) {
        self.since = None;
        let waiting = std::mem::take(&mut self.waiting);
        let Some((first, _, _)) = waiting.first() else {
            return;
        };
        let access = first.session.inner.access.clone();
        let events: Vec<AuditEvent> = waiting.iter().map(|(_, _, event)| event.clone()).collect();
        let now = access.now();
        match access
            .store()
            .write(|tx| tx.append_audits(&events, now).map(|_| ()))
        {
            Ok(()) => {
                for (cast, offset, _) in &waiting {
                    cast.checkpointed.store(*offset, Ordering::Relaxed);
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot audit recording checkpoints; ending those sessions");
                for (cast, _, _) in &waiting {
                    cast.health.fail_closed();
                }
            }
        }
    }
}

impl Shared {
    /// Applies `write` on the writer thread.
    fn write(&self, write: impl FnOnce(&mut Recorder) -> Result<(), RecordingError>) {
        match self.recorder.lock() {
            Ok(slot) => self.apply(slot, write),
            Err(_) => self.health.fail_closed(),
        }
    }

    /// Applies `write` to the locked recorder, if it still has one; a failure drops it (no more
    /// writes) and is audited once.
    fn apply(
        &self,
        mut slot: MutexGuard<'_, Option<Recorder>>,
        write: impl FnOnce(&mut Recorder) -> Result<(), RecordingError>,
    ) {
        let Some(recorder) = slot.as_mut() else {
            return;
        };
        if let Err(error) = write(recorder) {
            *slot = None;
            drop(slot);
            self.health.failed(&self.session, &error);
        }
    }
}
