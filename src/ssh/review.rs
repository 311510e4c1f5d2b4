//! The review commands that stream over a terminal (issue #19): `replay` with its timing and
//! keys, and `watch`, a read-only live view of another session.
//!
//! Only the channel is handled here: what may be seen, and its audit, is decided by
//! `commands::replay` and `Access::watch_session`; the timing and the keys by
//! `review::replay::drive`. Nothing the watcher types reaches the watched session.

use russh::ChannelId;
use russh::server::Handle;
use tokio::sync::{broadcast, mpsc};

use super::local::finish;
use super::prompt::ClientEvent;
use crate::access::{Access, AccessError, Viewer};
use crate::commands::{self, CommandOutput, Replay, Streaming};

/// Whether a command line streams over a terminal rather than printing once.
pub fn streams(line: &str) -> bool {
    commands::streaming(line).is_some()
}

/// Runs a streaming command on `channel` until it ends, the viewer quits or leaves.
pub async fn run(
    access: Access,
    user: String,
    handle: Handle,
    channel: ChannelId,
    input: mpsc::Receiver<ClientEvent>,
    line: String,
) {
    let viewer = Viewer::User(user);
    match commands::streaming(&line) {
        Some(Ok(Streaming::Replay(args))) => {
            let prepared = {
                let access = access.clone();
                let viewer = viewer.clone();
                tokio::task::spawn_blocking(move || commands::replay(&access, &viewer, &args, true))
                    .await
            };
            match prepared {
                Ok(Ok(Replay::Text(text))) => {
                    finish(&handle, channel, output(text, 0), true).await;
                }
                Ok(Ok(Replay::Terminal {
                    player,
                    start,
                    slot,
                })) => {
                    play(&handle, channel, input, player, start).await;
                    drop(slot);
                    finish(&handle, channel, output(String::new(), 0), true).await;
                }
                Ok(Err(refusal)) => refuse(&handle, channel, refusal).await,
                Err(_) => refuse(&handle, channel, failed()).await,
            }
        }
        Some(Ok(Streaming::Watch(session))) => {
            let attached = {
                let access = access.clone();
                tokio::task::spawn_blocking(move || {
                    access
                        .watch_session(&viewer, &session)
                        .map(|found| (session, found))
                })
                .await
            };
            match attached {
                Ok(Ok((session, (_, screen, output, attach)))) => {
                    watch(&handle, channel, input, &session, (screen, output), attach).await;
                    finish(&handle, channel, self::output(String::new(), 0), true).await;
                }
                Ok(Err(refusal)) => refuse(&handle, channel, refusal).await,
                Err(_) => refuse(&handle, channel, failed()).await,
            }
        }
        Some(Err(usage)) => finish(&handle, channel, usage, true).await,
        None => refuse(&handle, channel, failed()).await,
    }
}

async fn play(
    handle: &Handle,
    channel: ChannelId,
    mut input: mpsc::Receiver<ClientEvent>,
    player: crate::review::replay::Player,
    start: f64,
) {
    let (keys, key_queue) = mpsc::channel(16);
    let (writes, mut written) = mpsc::channel::<String>(16);
    let driver = tokio::spawn(crate::review::replay::drive(
        player, start, key_queue, writes,
    ));
    // The end of the viewer's input is not the end of the replay: it plays on, without keys.
    let mut keys = Some(keys);
    loop {
        tokio::select! {
            text = written.recv() => match text {
                Some(text) => {
                    if handle.data(channel, text.into_bytes()).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            event = input.recv(), if keys.is_some() => match event {
                Some(ClientEvent::Data(bytes)) => {
                    if let Some(keys) = &keys {
                        let _ = keys.send(bytes).await;
                    }
                }
                Some(ClientEvent::Resize(_)) => {}
                Some(ClientEvent::Eof) | None => keys = None,
            },
        }
    }
    driver.abort();
    let _ = handle.data(channel, b"\x1b[0m\r\n".to_vec()).await;
}

async fn watch(
    handle: &Handle,
    channel: ChannelId,
    mut input: mpsc::Receiver<ClientEvent>,
    session: &str,
    (screen, mut output): (String, broadcast::Receiver<bytes::Bytes>),
    attach: crate::access::Attach,
) {
    let mut reading = true;
    let banner = format!("\x1bc{screen}");
    if handle.data(channel, banner.into_bytes()).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            received = output.recv() => match received {
                Ok(bytes) => {
                    if handle.data(channel, bytes.to_vec()).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind: start again from the current screen, as a new watch would.
                    // `attach` waits for the recorder's lock, which the cast writer holds
                    // across disk writes: off the async workers.
                    let again = {
                        let attach = attach.clone();
                        tokio::task::spawn_blocking(move || attach()).await.ok().flatten()
                    };
                    let Some((screen, again)) = again else {
                        let note = format!("\r\n\x1b[0m[portcullis: session {session} ended]\r\n");
                        let _ = handle.data(channel, note.into_bytes()).await;
                        return;
                    };
                    output = again;
                    if handle.data(channel, format!("\x1bc{screen}").into_bytes()).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let note = format!("\r\n\x1b[0m[portcullis: session {session} ended]\r\n");
                    let _ = handle.data(channel, note.into_bytes()).await;
                    return;
                }
            },
            event = input.recv(), if reading => match event {
                Some(ClientEvent::Data(bytes)) => {
                    // Read-only: keys only leave the view.
                    if bytes.iter().any(|byte| matches!(byte, b'q' | b'Q' | 0x03 | 0x04)) {
                        let _ = handle.data(channel, b"\x1b[0m\r\n".to_vec()).await;
                        return;
                    }
                }
                Some(ClientEvent::Resize(_)) => {}
                // The viewer's input ended; the view goes on until the session or the
                // connection does.
                Some(ClientEvent::Eof) | None => reading = false,
            },
        }
    }
}

fn output(stdout: String, exit_code: u32) -> CommandOutput {
    CommandOutput {
        stdout,
        stderr: String::new(),
        exit_code,
    }
}

async fn refuse(handle: &Handle, channel: ChannelId, refusal: AccessError) {
    let message = match refusal {
        AccessError::Store(error) => {
            tracing::error!(%error, "a review command failed on the state database");
            "the bastion could not reach its state".to_string()
        }
        other => other.to_string(),
    };
    let output = CommandOutput {
        stdout: String::new(),
        stderr: format!("error: {message}\n"),
        exit_code: 1,
    };
    finish(handle, channel, output, true).await;
}

fn failed() -> AccessError {
    AccessError::Recording("the bastion failed on this request".to_string())
}
