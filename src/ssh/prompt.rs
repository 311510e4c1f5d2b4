//! The interactive command prompt: `ssh -p 2222 alice@bastion` with a terminal and no command.
//!
//! A small line editor over the channel (the client's terminal is in raw mode, so the bastion
//! echoes): printable characters, Backspace, Enter runs the line through `commands`, Ctrl-C drops
//! the line, Ctrl-D on an empty line or `exit` leaves. `LineEditor` is sans-IO and tested in memory;
//! `run` connects it to the channel.

use russh::ChannelId;
use russh::server::Handle;
use tokio::sync::mpsc;

use crate::access::Access;
use crate::access::model::{AccessRequest, RequestState};
use crate::commands;

/// What the client sends on a channel the bastion serves itself (the prompt, a waiting request,
/// a wait-and-connect dialog), forwarded by the handler in order.
#[derive(Debug)]
pub enum ClientEvent {
    Data(Vec<u8>),
    Resize(super::target::Size),
    Eof,
}

const PROMPT: &str = "portcullis> ";

/// The longest line accepted; more input is ignored until Enter.
const MAX_LINE: usize = 4096;

/// What a keystroke chunk asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Bytes to echo to the terminal.
    Echo(Vec<u8>),
    /// A complete line to run.
    Run(String),
    /// Leave the prompt.
    Exit,
}

/// Line editing state, sans-IO.
#[derive(Debug, Default)]
pub struct LineEditor {
    line: String,
    pending: Vec<u8>,
}

impl LineEditor {
    /// Feeds raw terminal input; returns what to do, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut echo = Vec::new();
        self.pending.extend_from_slice(bytes);
        let input = std::mem::take(&mut self.pending);
        let mut index = 0;
        while index < input.len() {
            let byte = input[index];
            match byte {
                b'\r' | b'\n' => {
                    // A CRLF from a pipe counts once.
                    if byte == b'\r' && input.get(index + 1) == Some(&b'\n') {
                        index += 1;
                    }
                    echo.extend_from_slice(b"\r\n");
                    flush(&mut actions, &mut echo);
                    actions.push(Action::Run(std::mem::take(&mut self.line)));
                }
                0x7f | 0x08 if !self.line.is_empty() => {
                    self.line.pop();
                    echo.extend_from_slice(b"\x08 \x08");
                }
                0x03 => {
                    self.line.clear();
                    echo.extend_from_slice(b"^C\r\n");
                    echo.extend_from_slice(PROMPT.as_bytes());
                }
                0x04 if self.line.is_empty() => {
                    flush(&mut actions, &mut echo);
                    actions.push(Action::Exit);
                    return actions;
                }
                0x1b => {
                    // Escape sequences (arrows, function keys) are not edited: skip them.
                    index += 1;
                    if input.get(index) == Some(&b'[') {
                        while index + 1 < input.len() && !(0x40..=0x7e).contains(&input[index + 1])
                        {
                            index += 1;
                        }
                        index += 1;
                    }
                }
                0x20..=0x7e if self.line.len() < MAX_LINE => {
                    self.line.push(byte as char);
                    echo.push(byte);
                }
                0x80..=0xff => {
                    // A UTF-8 character: take it whole or wait for the rest.
                    let length = match byte {
                        0xc0..=0xdf => 2,
                        0xe0..=0xef => 3,
                        0xf0..=0xf7 => 4,
                        _ => 1,
                    };
                    if index + length > input.len() {
                        self.pending = input[index..].to_vec();
                        break;
                    }
                    if let Ok(text) = std::str::from_utf8(&input[index..index + length])
                        && self.line.len() + length <= MAX_LINE
                    {
                        self.line.push_str(text);
                        echo.extend_from_slice(text.as_bytes());
                    }
                    index += length - 1;
                }
                _ => {}
            }
            index += 1;
        }
        flush(&mut actions, &mut echo);
        actions
    }
}

fn flush(actions: &mut Vec<Action>, echo: &mut Vec<u8>) {
    if !echo.is_empty() {
        actions.push(Action::Echo(std::mem::take(echo)));
    }
}

/// Runs the prompt on `channel` until the user leaves or the channel closes.
pub async fn run(
    access: Access,
    user: String,
    handle: Handle,
    channel: ChannelId,
    mut input: mpsc::Receiver<ClientEvent>,
) {
    let greeting = format!(
        "portcullis: signed in as {user}. Type help for the commands, exit to leave.\r\n{PROMPT}"
    );
    let _ = handle.data(channel, greeting.into_bytes()).await;
    let mut editor = LineEditor::default();
    'session: while let Some(event) = input.recv().await {
        let ClientEvent::Data(bytes) = event else {
            continue;
        };
        for action in editor.feed(&bytes) {
            match action {
                Action::Echo(bytes) => {
                    let _ = handle.data(channel, bytes).await;
                }
                Action::Exit => break 'session,
                Action::Run(line) if line.trim() == "exit" || line.trim() == "quit" => {
                    break 'session;
                }
                Action::Run(line) => {
                    let mut out = String::new();
                    if !line.trim().is_empty() {
                        let (access, user) = (access.clone(), user.clone());
                        let output = tokio::task::spawn_blocking(move || {
                            commands::run_line(&access, &user, &line)
                        })
                        .await;
                        if let Ok(output) = output {
                            out.push_str(&output.stdout);
                            out.push_str(&output.stderr);
                        }
                    }
                    out.push_str(PROMPT);
                    let _ = handle
                        .data(channel, out.replace('\n', "\r\n").into_bytes())
                        .await;
                }
            }
        }
    }
    let _ = handle.data(channel, b"\r\n".to_vec()).await;
    let _ = handle.exit_status_request(channel, 0).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// Is `line` a `request` command whose decision a terminal user would wait for (not `--json`)?
pub fn waits_for_decision(line: &str) -> bool {
    let words = shell_words::split(line).unwrap_or_default();
    words.first().is_some_and(|word| word == "request")
        && !words.iter().any(|word| word == "--json")
}

/// `request` with a terminal: files the request, then waits for the decision and shows it.
/// Ctrl-C stops waiting and leaves the request pending (issue #3).
pub async fn request_and_wait(
    access: Access,
    user: String,
    handle: Handle,
    channel: ChannelId,
    mut input: mpsc::Receiver<ClientEvent>,
    line: String,
) {
    let exit_code = match file_and_wait(&access, &user, line, &handle, channel, &mut input).await {
        Filed::Approved(request) => {
            let text = format!(
                "request {} approved by {}: connect with ssh {}+{}@<bastion>\n",
                request.id,
                request.decided_by.unwrap_or_default(),
                user,
                request.target
            );
            say(&handle, channel, &text).await;
            0
        }
        Filed::Left => 0,
        Filed::Refused(exit_code) => exit_code,
    };
    let _ = handle.exit_status_request(channel, exit_code).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// How filing a request and waiting for its decision ended; all of it already told.
#[derive(Debug)]
pub enum Filed {
    Approved(Box<AccessRequest>),
    /// Ctrl-C or a closed channel while waiting: the request stays pending.
    Left,
    /// Not filed, denied, expired, cancelled, or unreadable: the exit status to end with.
    Refused(u32),
}

/// Files a request with the command-interface `line` (`request TARGET ...`), shows the answer
/// and waits for the decision. The prompt's `request` and wait-and-connect share it.
pub async fn file_and_wait(
    access: &Access,
    user: &str,
    line: String,
    handle: &Handle,
    channel: ChannelId,
    input: &mut mpsc::Receiver<ClientEvent>,
) -> Filed {
    let filed = {
        let (access, user) = (access.clone(), user.to_string());
        tokio::task::spawn_blocking(move || commands::run_line(&access, &user, &line)).await
    };
    let output = match filed {
        Ok(output) if output.exit_code == 0 => output,
        Ok(output) => {
            let text = format!("{}{}", output.stdout, output.stderr);
            say(handle, channel, &text).await;
            return Filed::Refused(output.exit_code);
        }
        Err(_) => {
            let text = "error: the bastion failed to file the request\n";
            say(handle, channel, text).await;
            return Filed::Refused(1);
        }
    };
    say(handle, channel, &output.stdout).await;
    // The text answer starts `request <id> filed: ...`.
    let id = output
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    match wait_for_decision(access, &id, handle, channel, input).await {
        Waited::Approved(request) => Filed::Approved(request),
        Waited::Left => Filed::Left,
        Waited::Refused | Waited::Failed => Filed::Refused(1),
    }
}

/// How waiting for a decision ended.
#[derive(Debug)]
pub enum Waited {
    Approved(Box<AccessRequest>),
    /// Denied, expired or cancelled; already told.
    Refused,
    /// The user pressed Ctrl-C or went away; the request stays pending.
    Left,
    /// The bastion could not read the request; already told.
    Failed,
}

/// Waits for request `id` to be decided, telling the terminal each new approval; Ctrl-C leaves
/// the request pending.
pub async fn wait_for_decision(
    access: &Access,
    id: &str,
    handle: &Handle,
    channel: ChannelId,
    input: &mut mpsc::Receiver<ClientEvent>,
) -> Waited {
    say(
        handle,
        channel,
        "waiting for a decision (Ctrl-C leaves the request pending)\n",
    )
    .await;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut approvals_told = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (access, id) = (access.clone(), id.to_string());
                let found = tokio::task::spawn_blocking(move || access.request_by_id(&id)).await;
                let Ok(Ok(Some(request))) = found else {
                    say(handle, channel, "error: the bastion could not read the request\n").await;
                    return Waited::Failed;
                };
                for approval in request.approvals.iter().skip(approvals_told) {
                    say(handle, channel, &format!("approved by {}\n", approval.approver)).await;
                }
                approvals_told = request.approvals.len();
                match request.state {
                    RequestState::Pending => continue,
                    RequestState::Approved => return Waited::Approved(Box::new(request)),
                    RequestState::Denied => {
                        let text = format!(
                            "request {} denied by {}: {}\n",
                            request.id,
                            request.decided_by.unwrap_or_default(),
                            request.decision_reason.unwrap_or_default()
                        );
                        say(handle, channel, &text).await;
                        return Waited::Refused;
                    }
                    other => {
                        say(handle, channel, &format!("request {} is {other}\n", request.id)).await;
                        return Waited::Refused;
                    }
                }
            }
            received = input.recv() => match received {
                Some(ClientEvent::Data(bytes)) if bytes.contains(&0x03) => {
                    say(handle, channel, &format!("\nleft pending: {id} (check with: status {id})\n")).await;
                    return Waited::Left;
                }
                Some(_) => {}
                None => return Waited::Left,
            },
        }
    }
}

/// Writes text to a terminal channel, with the CRLF line ends a raw-mode terminal needs.
pub async fn say(handle: &Handle, channel: ChannelId, text: &str) {
    let _ = handle
        .data(channel, text.replace('\n', "\r\n").into_bytes())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Run(line) => Some(line.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lines_are_edited_like_a_terminal() {
        let mut editor = LineEditor::default();
        assert_eq!(runs(&editor.feed(b"targetz\x7fs\r")), ["targets"]);
        assert_eq!(runs(&editor.feed(b"reque")), Vec::<String>::new());
        assert_eq!(
            runs(&editor.feed(b"st web-1 --reason x\r\n")),
            ["request web-1 --reason x"]
        );
        assert_eq!(runs(&editor.feed(b"junk\x03grants\r")), ["grants"]);
        assert_eq!(runs(&editor.feed(b"\x1b[Astatus\r")), ["status"]);
        let arrow = "→".as_bytes();
        assert!(runs(&editor.feed(&arrow[..1])).is_empty());
        assert_eq!(runs(&editor.feed(&[arrow[1], arrow[2], b'\r'])), ["→"]);
        assert_eq!(editor.feed(b"\x04"), [Action::Exit]);
    }

    #[test]
    fn only_human_requests_wait() {
        assert!(waits_for_decision("request web-1 --reason 'x y'"));
        assert!(!waits_for_decision("request web-1 --reason x --json"));
        assert!(!waits_for_decision("status r-2345"));
    }

    #[test]
    fn no_input_makes_it_panic_or_grow() {
        let mut editor = LineEditor::default();
        for value in 0..=255u8 {
            let _ = editor.feed(&[value, value, 0x1b, b'[', value]);
        }
        let _ = editor.feed(&vec![b'a'; 10 * MAX_LINE]);
        assert!(editor.line.len() <= MAX_LINE);
    }
}
