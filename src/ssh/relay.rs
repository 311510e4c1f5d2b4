//! Moving a channel's traffic between the engineer and the target, recording it as it passes.
//!
//! `pump` carries one upstream channel's messages (output, stderr, request replies, exit status,
//! EOF, close) to the downstream channel in order, records output, and flushes the recording every
//! second. `supervise` watches the session's grant and writes the expiry warning and the final
//! notice to every live channel before cutting them. The connection task (`connection.rs`)
//! carries the other direction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use russh::client;
use russh::server::Handle;
use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::oneshot;

use crate::recording::FLUSH_INTERVAL;
use crate::session::casts::ChannelCast;
use crate::session::{Notice, Session};

use super::scp::{Direction, ScpObserver};
use super::sftp::{FileOp, SftpObserver};
use super::upstream::Upstream;

/// The recording of one channel, shared by both directions; set once the channel starts a shell
/// or exec (SFTP and port forwards have none).
pub type SharedRecorder = Arc<std::sync::OnceLock<ChannelCast>>;

/// A port forward's destination and byte counts, audited when it closes.
#[derive(Debug)]
pub struct Forward {
    pub destination: String,
    pub bytes_up: std::sync::atomic::AtomicU64,
    pub bytes_down: std::sync::atomic::AtomicU64,
}

/// What follows a file transfer on a channel, for the audit log.
#[derive(Debug)]
pub enum Transfer {
    /// The `sftp` subsystem (also what `scp` uses by default).
    Sftp(SftpObserver),
    /// A legacy `scp -t` / `scp -f` exec.
    Scp(ScpObserver),
}

impl Transfer {
    fn observe(&mut self, bytes: &[u8], from_client: bool) -> Vec<FileOp> {
        match self {
            Transfer::Sftp(observer) if from_client => observer.client(bytes),
            Transfer::Sftp(observer) => observer.server(bytes),
            // scp is followed on its sending side only.
            Transfer::Scp(observer) => {
                let sending = (observer.direction() == Direction::Upload) == from_client;
                if sending {
                    observer.feed(bytes)
                } else {
                    Vec::new()
                }
            }
        }
    }

    fn finish(&mut self) -> Vec<FileOp> {
        match self {
            Transfer::Sftp(observer) => observer.finish(),
            Transfer::Scp(_) => Vec::new(),
        }
    }
}

/// The transfer observer of a channel, set once it starts one.
pub type SharedTransfer = Arc<Mutex<Option<Transfer>>>;

/// Feeds bytes to a channel's transfer observer, if it has one, and audits what they complete.
/// `false` when the transfer can no longer be followed: the caller ends the channel (issue #17
/// review: a stream the observer gave up on went on unaudited).
#[must_use]
pub async fn observe_transfer(
    session: &Session,
    transfer: &SharedTransfer,
    bytes: &[u8],
    from_client: bool,
) -> bool {
    let ops = match transfer.lock() {
        Ok(mut slot) => match slot.as_mut() {
            Some(observer) => observer.observe(bytes, from_client),
            None => return true,
        },
        Err(_) => return false,
    };
    let followed = !ops.iter().any(|op| matches!(op, FileOp::Untracked { .. }));
    audit_file_ops(session, ops).await;
    followed
}

/// Told to the engineer when a file transfer could not be followed.
pub const UNFOLLOWABLE: &str = "this file transfer could not be audited, so it was ended";

/// What a relayed channel does with what the client sends, before it goes to the target:
/// counts it, records it as input, and feeds its file-transfer observer. One path for the
/// handler's channels and for wait-and-connect's (issue #17: `wait.rs` had a copy of its own).
pub struct ClientInput<'a> {
    pub session: &'a Session,
    pub recorder: &'a SharedRecorder,
    pub record_input: bool,
    pub transfer: &'a SharedTransfer,
    pub forward: Option<&'a Forward>,
}

impl ClientInput<'_> {
    /// `Err` with what to tell the engineer when the bytes must not go on: the recording or the
    /// transfer's audit failed, and the caller cuts the channel.
    pub async fn accept(&self, data: &[u8]) -> Result<(), &'static str> {
        self.session.count_in(data.len());
        if let Some(forward) = self.forward {
            forward
                .bytes_up
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        if self.record_input
            && let Some(cast) = self.recorder.get()
            && !cast.input(data).await
        {
            return Err("recording failed; the session was ended");
        }
        if !observe_transfer(self.session, self.transfer, data, true).await {
            return Err(UNFOLLOWABLE);
        }
        Ok(())
    }
}

/// Audits file operations on a blocking thread.
pub async fn audit_file_ops(session: &Session, ops: Vec<FileOp>) {
    if ops.is_empty() {
        return;
    }
    let session = session.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for op in ops {
            session.file_operation(op.into_record());
        }
    })
    .await;
}

/// How many chunks of the engineer's input (each at most one SSH packet) may wait for the target.
const INPUT_QUEUE: usize = 64;

/// The engineer's input to an upstream channel, written by a task of its own.
///
/// Writing waits for the target's window. Waited for in the handler, that stalled the client
/// connection's whole session loop, the target's answers included: OpenSSH keeps a session
/// channel's window at 0 until its shell, exec or subsystem starts, so when it refused `sftp`
/// the refusal sat behind the client's first bytes and `scp` hung (found by bench/ssh.sh).
/// Data and EOF keep their order through one queue; a full queue still slows the client down.
pub struct TargetInput {
    queue: tokio::sync::mpsc::Sender<Input>,
}

enum Input {
    Data(bytes::Bytes),
    Eof,
}

/// Input writer tasks alive, counted so a test can see that none is left behind.
static INPUT_WRITERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Times a grant supervisor woke for a notice, process-wide (for the resource test of issue #17).
static SUPERVISOR_WAKEUPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn supervisor_wakeups() -> u64 {
    SUPERVISOR_WAKEUPS.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn input_writers() -> usize {
    INPUT_WRITERS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts one writer task for as long as it lives (dropped with the task, however it ends).
struct Counted;

impl Counted {
    fn new() -> Counted {
        INPUT_WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        INPUT_WRITERS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Held by the channel's pump: when the pump ends (the target closed the channel, or the
/// session was cut), dropping it stops the input writer. Without it a writer waiting for a
/// window the target never opens (a refused subsystem) stayed parked for the bastion's lifetime,
/// with its queue (test: tests/ssh_resources.rs).
pub struct InputStop {
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TargetInput {
    /// Starts the writer; it ends when the channel fails, this value is dropped and the queue is
    /// drained, or the returned `InputStop` is dropped.
    pub fn start(write: Arc<ChannelWriteHalf<client::Msg>>) -> (TargetInput, InputStop) {
        let (queue, mut queued) = tokio::sync::mpsc::channel(INPUT_QUEUE);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let counted = Counted::new();
        tokio::spawn(async move {
            let _counted = counted;
            loop {
                // The stop is checked around the write too: that is where a writer waits for
                // the target's window. Once it resolves the loop ends, so it is never polled
                // again.
                let input = tokio::select! {
                    input = queued.recv() => input,
                    _ = &mut stopped => break,
                };
                let Some(input) = input else {
                    break;
                };
                let written = tokio::select! {
                    written = async {
                        match input {
                            // `data_bytes`, not `data`: `data` copies through `tokio::io::copy`'s
                            // 8 KiB buffer, so each 32 KiB packet from the engineer went
                            // upstream as four.
                            Input::Data(data) => write.data_bytes(data).await,
                            Input::Eof => write.eof().await,
                        }
                    } => written,
                    _ = &mut stopped => break,
                };
                if written.is_err() {
                    tracing::debug!("upstream channel closed while writing");
                    break;
                }
            }
        });
        (TargetInput { queue }, InputStop { _stop: stop })
    }

    /// Queues `data` for the target; false once the channel is gone.
    pub async fn data(&self, data: &[u8]) -> bool {
        let data = bytes::Bytes::copy_from_slice(data);
        self.queue.send(Input::Data(data)).await.is_ok()
    }

    /// Queues the engineer's EOF, after all data queued before it.
    pub async fn eof(&self) {
        let _ = self.queue.send(Input::Eof).await;
    }
}

/// The downstream channels of a session that are open, with whether each has a pty.
pub type LiveChannels = Arc<Mutex<HashMap<ChannelId, bool>>>;

/// Finalizes the channel's recording, if it has one, once everything queued is written.
pub async fn finish_recording(session: &Session, channel: u32, recorder: &SharedRecorder) {
    let Some(cast) = recorder.get() else {
        return;
    };
    if let Some(active) = cast.finish().await {
        let session = session.clone();
        let finished =
            tokio::task::spawn_blocking(move || session.finish_recording(channel, active)).await;
        if let Ok(Err(error)) = finished {
            tracing::error!(%error, "cannot finalize a recording");
        }
    }
}

/// Writes a line from the bastion to a channel: in the terminal with a pty, on stderr without.
pub async fn notify(handle: &Handle, channel: ChannelId, pty: bool, message: &str) {
    if pty {
        let _ = handle
            .data(
                channel,
                format!("\r\nportcullis: {message}\r\n").into_bytes(),
            )
            .await;
    } else {
        let _ = handle
            .extended_data(channel, 1, format!("portcullis: {message}\n").into_bytes())
            .await;
    }
}

/// Ends a channel from the bastion's side with a final line and a non-zero exit status.
pub async fn cut(handle: &Handle, channel: ChannelId, pty: bool, message: &str) {
    notify(handle, channel, pty, message).await;
    let _ = handle.exit_status_request(channel, 1).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// How many upstream messages (each at most one SSH packet, 32 KiB) may wait for the client.
///
/// The pump must keep reading the target while the client side is busy: the client side's
/// session loop also runs the handler, which waits for the target's window when forwarding the
/// engineer's input, and the target's window adjustments arrive behind its output. A pump that
/// stopped reading until the client side was free closed that cycle: a large `scp` upload hung
/// for good (found by bench/ssh.sh). Bounded, so a stalled client still stops the target.
const DELIVERY_QUEUE: usize = 256;

/// Carries one upstream channel to its downstream channel until either side closes it.
pub struct Pump {
    pub handle: Handle,
    pub down: ChannelId,
    /// The channel's index within the session.
    pub index: u32,
    pub session: Session,
    pub recorder: SharedRecorder,
    pub live: LiveChannels,
    pub pty: bool,
    pub forward: Option<Arc<Forward>>,
    pub transfer: SharedTransfer,
    pub input_stop: InputStop,
    /// Fires when the supervisor cuts the session.
    pub cut: CutSignal,
}

/// Fired once by a session's supervisor when it cuts the session: every pump stops waiting on the
/// client at once (issue #17 review: a client that stopped reading held its pump, and through the
/// target connection's full buffers the cut's disconnect, so a session outlived its grant).
pub type CutSignal = tokio::sync::watch::Receiver<bool>;

/// Resolves once `cut` fires; never, if its supervisor is gone without firing it.
async fn cut_fired(cut: &mut CutSignal) {
    if cut.wait_for(|fired| *fired).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Pump {
    pub async fn run(self, mut upstream: ChannelReadHalf) {
        let Pump {
            handle,
            down,
            index,
            session,
            recorder,
            live,
            pty,
            forward,
            transfer,
            input_stop,
            cut: mut cut_signal,
        } = self;
        let (to_client, queued) = tokio::sync::mpsc::channel(DELIVERY_QUEUE);
        let delivery = tokio::spawn(deliver(queued, handle.clone(), down));
        let mut flush = tokio::time::interval(FLUSH_INTERVAL);
        let (mut failed, mut was_cut) = (None, false);
        loop {
            let message = tokio::select! {
                message = upstream.wait() => message,
                _ = cut_fired(&mut cut_signal) => {
                    was_cut = true;
                    break;
                }
                _ = flush.tick() => {
                    if let Some(cast) = recorder.get()
                        && !cast.flush().await
                    {
                        failed = Some("recording failed; the session was ended");
                        break;
                    }
                    continue;
                }
            };
            let Some(message) = message else {
                break;
            };
            match &message {
                ChannelMsg::Data { data } => {
                    session.count_out(data.len());
                    if let Some(forward) = &forward {
                        forward
                            .bytes_down
                            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    if let Some(cast) = recorder.get()
                        && !cast.output(data).await
                    {
                        failed = Some("recording failed; the session was ended");
                        break;
                    }
                    if !observe_transfer(&session, &transfer, data, false).await {
                        failed = Some(UNFOLLOWABLE);
                        break;
                    }
                }
                ChannelMsg::ExtendedData { data, .. } => {
                    session.count_out(data.len());
                    if let Some(cast) = recorder.get()
                        && !cast.output(data).await
                    {
                        failed = Some("recording failed; the session was ended");
                        break;
                    }
                }
                _ => {}
            }
            let closed = matches!(message, ChannelMsg::Close);
            let delivered = tokio::select! {
                sent = to_client.send(message) => sent.is_ok(),
                _ = cut_fired(&mut cut_signal) => {
                    was_cut = true;
                    false
                }
            };
            if !delivered || closed {
                break;
            }
        }
        // The target's side of the channel is gone: nothing more can be written to it.
        drop(input_stop);
        // What is queued reaches the client before the channel's end; after a cut the supervisor
        // tells the client, and a client that does not read holds nothing up.
        drop(to_client);
        if was_cut {
            delivery.abort();
        } else {
            let _ = delivery.await;
        }
        // The client is answered first: finalizing syncs the recording to disk, which for a bulk
        // transfer is the slowest step of all, and the engineer's command is done by then.
        let was_live = live
            .lock()
            .ok()
            .and_then(|mut channels| channels.remove(&down));
        if was_live.is_some() {
            match failed {
                Some(message) => cut(&handle, down, pty, message).await,
                None => {
                    let _ = handle.close(down).await;
                }
            }
        }
        finish_recording(&session, index, &recorder).await;
        let unfinished = transfer
            .lock()
            .ok()
            .and_then(|mut slot| slot.as_mut().map(Transfer::finish))
            .unwrap_or_default();
        audit_file_ops(&session, unfinished).await;
        if let Some(forward) = forward {
            let session = session.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let relaxed = std::sync::atomic::Ordering::Relaxed;
                session.forward_closed(
                    &forward.destination,
                    forward.bytes_up.load(relaxed),
                    forward.bytes_down.load(relaxed),
                );
            })
            .await;
        }
    }
}

/// Hands upstream messages to the client in order, until the upstream closes or the client is
/// gone.
async fn deliver(
    mut queued: tokio::sync::mpsc::Receiver<ChannelMsg>,
    handle: Handle,
    down: ChannelId,
) {
    let mut eof_held = false;
    while let Some(message) = queued.recv().await {
        let delivered = match message {
            ChannelMsg::Data { data } => handle.data(down, data).await.is_ok(),
            ChannelMsg::ExtendedData { data, ext } => {
                handle.extended_data(down, ext, data).await.is_ok()
            }
            ChannelMsg::Success => handle.channel_success(down).await.is_ok(),
            ChannelMsg::Failure => handle.channel_failure(down).await.is_ok(),
            ChannelMsg::ExitStatus { exit_status } => {
                let sent = handle.exit_status_request(down, exit_status).await.is_ok();
                sent && release_eof(&handle, down, &mut eof_held).await
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                let sent = handle
                    .exit_signal_request(down, signal_name, core_dumped, error_message, lang_tag)
                    .await
                    .is_ok();
                sent && release_eof(&handle, down, &mut eof_held).await
            }
            // Held until the exit status: a client that has its EOF and has sent its own closes
            // the channel, and an exit status relayed after that close would be lost.
            ChannelMsg::Eof => {
                eof_held = true;
                true
            }
            ChannelMsg::Close => {
                release_eof(&handle, down, &mut eof_held).await;
                return;
            }
            _ => true,
        };
        if !delivered {
            return;
        }
    }
}

/// Sends a held EOF, if any; false if the client is gone.
async fn release_eof(handle: &Handle, down: ChannelId, held: &mut bool) -> bool {
    if std::mem::take(held) {
        handle.eof(down).await.is_ok()
    } else {
        true
    }
}

/// Watches the session's grant: warns every live channel before the end and cuts them all at it.
/// Stops quietly when `stop` fires (the client went away).
pub async fn supervise(
    session: Session,
    handle: Handle,
    upstream: Arc<Upstream>,
    live: LiveChannels,
    mut stop: oneshot::Receiver<()>,
    cutting: tokio::sync::watch::Sender<bool>,
) {
    let mut watch = session.watch();
    loop {
        let notice = tokio::select! {
            notice = watch.next() => notice,
            _ = &mut stop => return,
        };
        SUPERVISOR_WAKEUPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let channels: Vec<(ChannelId, bool)> = live
            .lock()
            .map(|channels| channels.iter().map(|(id, pty)| (*id, *pty)).collect())
            .unwrap_or_default();
        match notice {
            Notice::Warning(warning) => {
                if channels.is_empty() {
                    watch.rearm_warning();
                }
                let message = warning.minutes_text();
                for (channel, pty) in channels {
                    notify(&handle, channel, pty, &message).await;
                }
            }
            Notice::Message(message) => {
                for (channel, pty) in channels {
                    notify(&handle, channel, pty, &message).await;
                }
            }
            Notice::Ended { message, reason } => {
                let _ = cutting.send(true);
                if let Ok(mut open) = live.lock() {
                    open.clear();
                }
                // Bounded: the target connection's loop may still be draining into a pump.
                let disconnect =
                    upstream.disconnect(russh::Disconnect::ByApplication, &message, "en");
                let _ = tokio::time::timeout(CUT_WAIT, disconnect).await;
                for (channel, pty) in channels {
                    // Each from a task of its own: a client that does not read must not hold
                    // up the session's end.
                    let (handle, message) = (handle.clone(), message.clone());
                    tokio::spawn(async move { cut(&handle, channel, pty, &message).await });
                }
                let ended = session.clone();
                let _ = tokio::task::spawn_blocking(move || ended.end(reason)).await;
                tracing::info!(session = %session.id(), reason = reason.as_str(), "session cut");
                return;
            }
        }
    }
}

/// How long a cut waits for the target connection to take its disconnect.
const CUT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the upstream channel for a new downstream channel.
pub async fn open_upstream_channel(
    upstream: &Upstream,
) -> Result<russh::Channel<client::Msg>, russh::Error> {
    upstream.channel_open_session().await
}
