//! Wait-and-connect (issue #3): `ssh -t alice+web-1@bastion` without a grant asks for a reason and
//! a duration, files the request through the command interface, shows its progress, and connects
//! the same terminal to the target as soon as it is approved.
//!
//! Once approved, the dialog hands the channel back to its connection task (`connection.rs`)
//! with whatever the client typed that it had not read; the task then starts the shell the way it
//! starts any target channel, one relay path for both (issue #17: this file had a relay of its
//! own). Ctrl-C while asking or waiting leaves, with the request pending.

use russh::ChannelId;
use russh::server::Handle;
use tokio::sync::mpsc;

use super::connection::Approval;
use super::prompt::{Action, ClientEvent, Filed, LineEditor, file_and_wait, say};
use super::target::Reach;
use crate::commands;
use crate::config::parse_duration;

/// One terminal waiting for access to one target.
pub(super) struct Dialog {
    pub reach: Reach,
    pub user: String,
    pub target: String,
    pub handle: Handle,
    pub channel: ChannelId,
    /// Where the approval goes.
    pub approvals: mpsc::UnboundedSender<Approval>,
}

impl Dialog {
    /// Runs the dialog; once access is approved, hands the channel back to its connection task.
    pub async fn run(self, mut input: mpsc::Receiver<ClientEvent>) {
        let exit_code = match self.request_and_wait(&mut input).await {
            Err(exit_code) => exit_code,
            Ok(()) => {
                // Nothing more is queued for the dialog; what is, goes to the target.
                input.close();
                let mut unread = Vec::new();
                while let Ok(event) = input.try_recv() {
                    unread.push(event);
                }
                let approval = Approval {
                    channel: self.channel,
                    unread,
                };
                if self.approvals.send(approval).is_ok() {
                    return;
                }
                1
            }
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
                ClientEvent::Resize(_) => continue,
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
}
