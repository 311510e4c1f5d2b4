//! Wait-and-connect (issue #3): `ssh -t alice+web-1@bastion` without a grant asks for a reason and
//! a duration, files the request through the command interface, shows its progress, and connects
//! the same terminal to the target as soon as it is approved.
//!
//! The russh handler cannot be woken from outside, so once approved this task owns the channel's
//! relay: it opens the upstream session with the handler's `Reach`, starts the recording and the
//! pump like any relayed shell, and forwards what the handler hands it (keystrokes, resizes,
//! signals, EOF) to the target. Ctrl-C while asking or waiting leaves, with the request pending.

use russh::ChannelId;
use russh::server::Handle;
use tokio::sync::mpsc;

use super::container;
use super::prompt::{Action, ClientEvent, Filed, LineEditor, file_and_wait, say};
use super::relay::{self, SharedRecorder, SharedTransfer};
use super::target::{
    LiveTarget, Pty, Reach, RecordingPlan, RecordingStart, UNRECORDABLE, record_input,
    start_recording,
};
use crate::commands;
use crate::config::parse_duration;

/// One terminal waiting for access to one target.
pub(super) struct Dialog {
    pub reach: Reach,
    pub user: String,
    pub target: String,
    pub handle: Handle,
    pub channel: ChannelId,
    pub pty: Pty,
}

impl Dialog {
    /// Runs the dialog, then the relayed shell if access was approved, until the channel closes.
    pub async fn run(self, mut input: mpsc::Receiver<ClientEvent>) {
        let exit_code = match self.request_and_wait(&mut input).await {
            Err(exit_code) => exit_code,
            Ok(()) => match self.connect().await {
                Ok(connected) => {
                    self.relay(connected, input).await;
                    return;
                }
                Err(why) => {
                    say(&self.handle, self.channel, &format!("error: {why}\n")).await;
                    1
                }
            },
        };
        let _ = self
            .handle
            .exit_status_request(self.channel, exit_code)
            .await;
        let _ = self.handle.eof(self.channel).await;
        let _ = self.handle.close(self.channel).await;
    }

    /// Asks, files and waits. `Ok` once approved; otherwise the exit status to end with.
    async fn request_and_wait(&self, input: &mut mpsc::Receiver<ClientEvent>) -> Result<(), u32> {
        let (handle, channel) = (&self.handle, self.channel);
        let hint = commands::request_hint(
            &self.reach.access,
            &self.user,
            &self.target,
            self.reach.port,
        );
        say(
            handle,
            channel,
            &format!(
                "portcullis: no active grant for {}. Request access now, or Ctrl-C to leave.\n",
                self.target
            ),
        )
        .await;
        let left = format!("no request filed; request later with: {hint}\n");
        let reason = loop {
            let Some(reason) = self.ask("reason: ", input).await else {
                say(handle, channel, &left).await;
                return Err(1);
            };
            if !reason.trim().is_empty() {
                break reason.trim().to_string();
            }
        };
        let duration = loop {
            let question = "for how long (like 30m, 2h; Enter for the default): ";
            let Some(duration) = self.ask(question, input).await else {
                say(handle, channel, &left).await;
                return Err(1);
            };
            let duration = duration.trim().to_string();
            match parse_duration(&duration) {
                _ if duration.is_empty() => break None,
                Ok(_) => break Some(duration),
                Err(error) => say(handle, channel, &format!("{error}\n")).await,
            }
        };
        let mut words = vec!["request".to_string(), self.target.clone()];
        if let Some(duration) = duration {
            words.extend(["--for".to_string(), duration]);
        }
        words.extend(["--reason".to_string(), reason]);
        let line = shell_words::join(words);
        let access = &self.reach.access;
        match file_and_wait(access, &self.user, line, handle, channel, input).await {
            Filed::Approved(request) => {
                let text = format!(
                    "request {} approved by {}: connecting to {}\n",
                    request.id,
                    request.decided_by.unwrap_or_default(),
                    self.target
                );
                say(handle, channel, &text).await;
                Ok(())
            }
            Filed::Left => Err(1),
            Filed::Refused(exit_code) => Err(exit_code),
        }
    }

    /// Reads one line with echo; `None` on Ctrl-C, Ctrl-D, EOF or a closed channel.
    async fn ask(&self, question: &str, input: &mut mpsc::Receiver<ClientEvent>) -> Option<String> {
        say(&self.handle, self.channel, question).await;
        let mut editor = LineEditor::default();
        while let Some(event) = input.recv().await {
            let bytes = match event {
                ClientEvent::Data(bytes) => bytes,
                ClientEvent::Eof => return None,
                ClientEvent::Resize { .. } | ClientEvent::Signal(_) => continue,
            };
            if bytes.contains(&0x03) {
                say(&self.handle, self.channel, "^C\n").await;
                return None;
            }
            for action in editor.feed(&bytes) {
                match action {
                    Action::Echo(echo) => {
                        let _ = self.handle.data(self.channel, echo).await;
                    }
                    Action::Run(line) => return Some(line),
                    Action::Exit => return None,
                }
            }
        }
        None
    }

    /// Opens the session and a shell on the target, with its recording and pump.
    async fn connect(&self) -> Result<Connected, String> {
        let live = self
            .reach
            .connect(&self.user, &self.target, self.handle.clone())
            .await
            .map_err(|refused| refused.why)?;
        let opened = relay::open_upstream_channel(&live.upstream).await;
        let Ok(upstream_channel) = opened else {
            let why = format!("target {} refused a new channel", self.target);
            live.close().await;
            return Err(why);
        };
        let (read, write) = upstream_channel.split();
        let index = live.session.next_channel();
        let record_input = record_input(live.session.target());
        let recorder = SharedRecorder::default();
        if let Ok(mut open) = live.live.lock() {
            open.insert(self.channel, true);
        }
        // The client's own requests were answered by the bastion already: no replies wanted.
        let pty = &self.pty;
        let requested = write
            .request_pty(false, &pty.term, pty.width, pty.height, 0, 0, &pty.modes)
            .await;
        let plan = RecordingPlan {
            index,
            pty: Some(pty),
            command: None,
            env: Vec::new(),
        };
        let started = start_recording(
            &self.reach.access,
            &live.session,
            plan,
            &recorder,
            &self.reach.casts,
        )
        .await;
        match started {
            RecordingStart::Started => {}
            RecordingStart::Refused => {
                live.close().await;
                return Err(UNRECORDABLE.to_string());
            }
            RecordingStart::Broken => {
                live.close().await;
                return Err("the bastion failed to start the recording".to_string());
            }
        }
        let shell = match &live.container {
            Some(target) => {
                let line = container::host_command(target.runtime, &target.container, true, None);
                write.exec(false, line).await
            }
            None => write.request_shell(false).await,
        };
        if requested.is_err() || shell.is_err() {
            live.close().await;
            return Err(format!("target {} refused the shell", self.target));
        }
        tokio::spawn(relay::pump(
            read,
            self.handle.clone(),
            self.channel,
            index,
            live.session.clone(),
            recorder.clone(),
            live.live.clone(),
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            None,
            SharedTransfer::default(),
            // This path writes the engineer's input itself, in `relay` below, once the shell
            // has started (so the target's window is open).
            None,
        ));
        Ok(Connected {
            live,
            write,
            recorder,
            record_input,
        })
    }

    /// Forwards the client's side of the channel to the target until the client closes it.
    async fn relay(&self, connected: Connected, mut input: mpsc::Receiver<ClientEvent>) {
        let Connected {
            live,
            write,
            recorder,
            record_input,
        } = connected;
        // A terminal shell: no file transfer to follow.
        let no_transfer = SharedTransfer::default();
        while let Some(event) = input.recv().await {
            match event {
                ClientEvent::Data(bytes) => {
                    let input = relay::ClientInput {
                        session: &live.session,
                        recorder: &recorder,
                        record_input,
                        transfer: &no_transfer,
                        forward: None,
                    };
                    if let Err(why) = input.accept(&bytes).await {
                        let _ = write.close().await;
                        relay::cut(&self.handle, self.channel, true, why).await;
                        break;
                    }
                    let _ = write.data_bytes(bytes).await;
                }
                ClientEvent::Resize {
                    width,
                    height,
                    pixel_width,
                    pixel_height,
                } => {
                    let _ = write
                        .window_change(width, height, pixel_width, pixel_height)
                        .await;
                    if let Some(cast) = recorder.get() {
                        cast.resize(width, height).await;
                    }
                }
                ClientEvent::Signal(signal) => {
                    let _ = write.signal(signal).await;
                }
                ClientEvent::Eof => {
                    let _ = write.eof().await;
                }
            }
        }
        let _ = write.close().await;
        live.close().await;
    }
}

/// A shell on the target, relayed.
struct Connected {
    live: LiveTarget,
    write: russh::ChannelWriteHalf<russh::client::Msg>,
    recorder: SharedRecorder,
    record_input: bool,
}
