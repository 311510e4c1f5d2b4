//! Channels the bastion serves itself: a command of the command interface, the interactive
//! prompt, and the line that tells an engineer why a session or channel was refused.
//!
//! Each runs in a task of its own, which answers the client's start request first and then writes
//! the output, so the connection task (`connection.rs`) never waits on the client.

use std::future::Future;

use russh::ChannelId;
use russh::server::Handle;
use tokio::sync::mpsc;

use super::prompt::{self, ClientEvent};
use crate::access::Access;
use crate::commands::{self, CommandOutput};

/// Queue of what the client sends to the prompt; a full queue slows the client down.
const INPUT_QUEUE: usize = 64;

/// One channel the bastion answers itself.
pub(super) struct Serve {
    pub access: Access,
    pub handle: Handle,
    pub channel: ChannelId,
    pub pty: bool,
    /// The client's start request was answered already (an approved dialog's shell).
    pub answered: bool,
}

impl Serve {
    /// Tells the engineer why the channel cannot run, and ends it with status 1.
    pub fn tell(self, why: String) {
        let output = CommandOutput {
            stdout: String::new(),
            stderr: format!("error: {why}\n"),
            exit_code: 1,
        };
        let (handle, channel, pty) = (self.handle.clone(), self.channel, self.pty);
        tokio::spawn(self.answer_then(async move { finish(&handle, channel, output, pty).await }));
    }

    /// Runs a command login's shell or command. With a terminal, the prompt and `request` read
    /// the client: the sender is where the connection task hands what the client sends.
    pub fn command(
        self,
        user: String,
        command: Option<String>,
    ) -> Option<mpsc::Sender<ClientEvent>> {
        let (access, handle, channel, pty) = (
            self.access.clone(),
            self.handle.clone(),
            self.channel,
            self.pty,
        );
        match command {
            None if pty => {
                let (sender, receiver) = mpsc::channel(INPUT_QUEUE);
                let prompt = prompt::run(access, user, handle, channel, receiver);
                tokio::spawn(self.answer_then(prompt));
                Some(sender)
            }
            Some(line) if pty && super::review::streams(&line) => {
                let (sender, receiver) = mpsc::channel(INPUT_QUEUE);
                let review = super::review::run(access, user, handle, channel, receiver, line);
                tokio::spawn(self.answer_then(review));
                Some(sender)
            }
            Some(line) if pty && prompt::waits_for_decision(&line) => {
                let (sender, receiver) = mpsc::channel(INPUT_QUEUE);
                let waiting =
                    prompt::request_and_wait(access, user, handle, channel, receiver, line);
                tokio::spawn(self.answer_then(waiting));
                Some(sender)
            }
            command => {
                let run = async move {
                    let output = tokio::task::spawn_blocking(move || match command {
                        Some(line) => commands::run_line(&access, &user, &line),
                        None => interactive_unavailable(&access, &user),
                    })
                    .await
                    .unwrap_or_else(|_| CommandOutput {
                        stdout: String::new(),
                        stderr: "error: the bastion failed on this request; nothing was changed\n"
                            .to_string(),
                        exit_code: 1,
                    });
                    finish(&handle, channel, output, pty).await;
                };
                tokio::spawn(self.answer_then(run));
                None
            }
        }
    }

    /// Answers the start request, unless it was answered already, then runs `work`.
    pub async fn answer_then(self, work: impl Future<Output = ()>) {
        if !self.answered {
            let _ = self.handle.channel_success(self.channel).await;
        }
        work.await
    }
}

/// Writes a command's output, its exit status, EOF and close, in the order OpenSSH expects.
pub(super) async fn finish(handle: &Handle, channel: ChannelId, output: CommandOutput, pty: bool) {
    // A pty has one stream and wants CRLF line ends.
    let fix = |text: String| {
        if pty {
            text.replace('\n', "\r\n")
        } else {
            text
        }
    };
    if !output.stdout.is_empty() {
        let _ = handle.data(channel, fix(output.stdout).into_bytes()).await;
    }
    if !output.stderr.is_empty() {
        let stderr = fix(output.stderr).into_bytes();
        if pty {
            let _ = handle.data(channel, stderr).await;
        } else {
            let _ = handle.extended_data(channel, 1, stderr).await;
        }
    }
    let _ = handle.exit_status_request(channel, output.exit_code).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

fn interactive_unavailable(access: &Access, user: &str) -> CommandOutput {
    let help = commands::run(access, user, &["help".to_string()]);
    CommandOutput {
        stdout: format!(
            "portcullis: connect with a terminal for the interactive prompt, or run one command \
             per connection, for example: ssh <bastion> targets\n\n{}",
            help.stdout
        ),
        stderr: String::new(),
        exit_code: 0,
    }
}
