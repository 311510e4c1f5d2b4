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
//! hand it work, and an interactive event waits behind at most `QUEUE` packets.
//!
//! **Fail closed:** a failed write marks the channel; its relay checks the mark at every packet
//! and each second and ends the session (unless the target says `on_recording_failure =
//! "continue"`), so a failing disk ends a session within a packet or a second of the failure.
//! Finalizing (the fsync) stays with the channel's owner on a blocking thread, so one channel's
//! sync does not hold up the others' events.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{RecordingHealth, Session};
use crate::recording::{Recorder, RecordingError};

/// Packets waiting for the writer, over all channels, before relays wait for it. Short, because an
/// interactive event waits behind them: 8 gave an echo p99 of 5-23 ms under three bulk downloads
/// (32: 9-28 ms), and transfers within the run-to-run spread of writing in place.
const QUEUE: usize = 8;

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
    recorder: Mutex<Option<Recorder>>,
    health: RecordingHealth,
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
    pub fn channel(&self, session: Session, recorder: Recorder) -> ChannelCast {
        ChannelCast {
            shared: Arc::new(Shared {
                session,
                recorder: Mutex::new(Some(recorder)),
                health: RecordingHealth::default(),
            }),
            jobs: self.jobs.clone(),
        }
    }
}

impl ChannelCast {
    /// Queues terminal output; false once the session must end for its recording.
    pub async fn output(&self, data: &[u8]) -> bool {
        let data = Bytes::copy_from_slice(data);
        self.queue(Job::Output(self.shared.clone(), Instant::now(), data))
            .await
    }

    /// Queues keystrokes; false once the session must end for its recording.
    pub async fn input(&self, data: &[u8]) -> bool {
        let data = Bytes::copy_from_slice(data);
        self.queue(Job::Input(self.shared.clone(), Instant::now(), data))
            .await
    }

    pub async fn resize(&self, width: u32, height: u32) -> bool {
        let job = Job::Resize(self.shared.clone(), Instant::now(), width, height);
        self.queue(job).await
    }

    /// Queues a flush (owners call this every second); false once the session must end.
    pub async fn flush(&self) -> bool {
        self.queue(Job::Flush(self.shared.clone())).await
    }

    /// Whether a failed write means the session must end now.
    pub fn must_end(&self) -> bool {
        self.shared.health.must_end()
    }

    /// Waits until everything queued is written, then takes the recorder back to finalize it
    /// (`None` if it failed, or was taken already).
    pub async fn finish(&self) -> Option<Recorder> {
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
        if self.must_end() {
            return false;
        }
        // A recording that failed under `on_recording_failure = "continue"` takes nothing more.
        if self.shared.health.recording() && self.jobs.send(job).await.is_err() {
            tracing::error!(session = %self.shared.session.id(), "the cast writer is gone");
            self.shared.health.fail_closed();
        }
        !self.must_end()
    }
}

fn write_until_closed(mut queue: mpsc::Receiver<Job>) {
    while let Some(job) = queue.blocking_recv() {
        match job {
            Job::Output(cast, at, data) => cast.write(|recorder| recorder.output_at(at, &data)),
            Job::Input(cast, at, data) => cast.write(|recorder| recorder.input_at(at, &data)),
            Job::Resize(cast, at, width, height) => {
                cast.write(|recorder| recorder.resize_at(at, width, height))
            }
            Job::Flush(cast) => cast.write(Recorder::flush),
            Job::Written(done) => {
                let _ = done.send(());
            }
        }
    }
}

impl Shared {
    /// Applies `write`; a failure drops the recorder (no more writes) and is audited once.
    fn write(&self, write: impl FnOnce(&mut Recorder) -> Result<(), RecordingError>) {
        let Ok(mut slot) = self.recorder.lock() else {
            self.health.fail_closed();
            return;
        };
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
