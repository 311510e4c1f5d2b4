//! One task per client connection: it owns the connection's state and acts on what the client
//! asks, in order.
//!
//! The russh `Handler` (`handler.rs`) only authenticates and turns each callback into an `Event`
//! for this task (house style, rule 6; issue #17: the handler had grown its state in `Option`
//! fields and a second relay in `wait.rs`). State is enums: the target is not opened, open or
//! refused; each channel is pending (a target channel before its command), relayed, or served by
//! the bastion itself. A channel's target session opens when its first command starts, so the
//! environment it forwards is in `session.started` (issue #17).
//!
//! The task never waits on the client's session handle: the handler's callbacks wait on this
//! task's queue, so a task waiting on the session loop could wait for itself. What it tells the
//! client it hands to a spawned task; replies to started commands come from the target through
//! the channel's pump.

use std::collections::HashMap;
use std::sync::Arc;

use russh::server::{ChannelOpenHandle, Handle};
use russh::{ChannelId, ChannelOpenFailure, ChannelWriteHalf, client};
use tokio::sync::mpsc;

use super::container;
use super::local;
use super::login::Login;
use super::prompt::ClientEvent;
use super::relay::{self, SharedRecorder, SharedTransfer};
use super::scp::{Direction as ScpDirection, ScpObserver};
use super::sftp::SftpObserver;
use super::target::{
    LiveTarget, Pty, Reach, RecordingPlan, RecordingStart, Size, UNRECORDABLE, record_input,
    start_recording,
};
use crate::config::TargetKind;
use crate::session::admit;

/// What the client asked for, as the handler saw it.
pub(super) enum Event {
    OpenSession {
        channel: ChannelId,
        reply: ChannelOpenHandle,
    },
    OpenForward {
        channel: ChannelId,
        destination: Destination,
        reply: ChannelOpenHandle,
    },
    /// Already answered by the handler.
    Pty {
        channel: ChannelId,
        pty: Pty,
    },
    /// An allowed variable, already answered by the handler.
    Env {
        channel: ChannelId,
        name: String,
        value: String,
    },
    Start {
        channel: ChannelId,
        start: Start,
    },
    Data {
        channel: ChannelId,
        data: Vec<u8>,
    },
    Resize {
        channel: ChannelId,
        size: Size,
    },
    Signal {
        channel: ChannelId,
        signal: russh::Sig,
    },
    Eof {
        channel: ChannelId,
    },
    Close {
        channel: ChannelId,
    },
}

/// Where an `ssh -L` forward asks to go.
pub(super) struct Destination {
    pub host: String,
    pub port: u32,
    pub originator_address: String,
    pub originator_port: u32,
}

/// What a channel starts.
pub(super) enum Start {
    Shell,
    Exec(Vec<u8>),
    Subsystem(String),
}

/// How the authenticated connection was admitted.
pub(super) enum Admitted {
    Login(Login),
    /// The client proved its key but the account is locked (issue #17): SSH cannot say why at
    /// authentication, so the login is taken, one channel is told this, and nothing else opens.
    Locked(String),
}

/// A wait-and-connect dialog's approval, handed back to the task that owns the channel.
pub(super) struct Approval {
    pub channel: ChannelId,
    /// What the client sent that the dialog had not read, in order.
    pub unread: Vec<ClientEvent>,
}

/// Where a target login stands with its target (a command login never opens one).
enum TargetState {
    NotOpened,
    Open(LiveTarget),
    /// Refused when first asked, told on every channel; `no_grant`: a terminal shell is offered
    /// to request one and wait.
    Refused {
        why: String,
        no_grant: bool,
    },
}

/// One channel of the connection.
enum Channel {
    /// A target login's session channel before its command starts.
    Pending(Pending),
    /// Carried to and from the target (a started command, or a port forward).
    Relayed(Relayed),
    /// Served by the bastion: the command interface, a wait-and-connect dialog, or a refusal.
    Local(Local),
    /// Cut by the bastion (its recording or audit failed): what the client sends is dropped.
    Cut,
}

/// What the client asked of a channel before its command, applied when it starts.
#[derive(Default)]
struct Requested {
    pty: Option<Pty>,
    /// Environment variables for the target (issue #17: in `session.started` and the recording).
    env: Vec<(String, String)>,
}

#[derive(Default)]
struct Pending {
    requested: Requested,
    /// Data the client sent before the command started, recorded and sent once it does
    /// (issue #17: it reached the command's stdin unrecorded).
    early: Vec<u8>,
    /// EOF the client sent before the command started, sent after `early`.
    early_eof: bool,
}

struct Relayed {
    /// The target's side, for requests.
    upstream: Arc<ChannelWriteHalf<client::Msg>>,
    /// The engineer's data and EOF on their way to the target.
    to_target: relay::TargetInput,
    /// The channel's index within the session.
    index: u32,
    recorder: SharedRecorder,
    record_input: bool,
    transfer: SharedTransfer,
    forward: Option<Arc<relay::Forward>>,
    pty: bool,
}

#[derive(Default)]
struct Local {
    requested: Requested,
    /// Its one start request came (issue #17 review: a second one ran a second command).
    started: bool,
    /// What the client sends, while a task of the bastion's reads it (prompt, dialog).
    input: Option<mpsc::Sender<ClientEvent>>,
    /// Why this channel does not reach its target, when that is the channel's own fault.
    refusal: Option<String>,
    /// Sent after the reading task stopped (a dialog that was approved), kept for the target.
    held: Pending,
}

/// Data a client may send on a channel before its command starts; past it the channel closes.
/// OpenSSH sends none; russh's window lets a client send 2 MiB.
const MAX_EARLY: usize = 2 * 1024 * 1024;

/// Environment variables kept per channel (a client may send any number).
const MAX_ENV: usize = 64;

/// Told when the bastion fails to start a channel.
const BROKEN: &str = "the bastion failed to start this channel; nothing ran";

/// Events from the handler that may wait for the task; a full queue slows the client down.
const EVENT_QUEUE: usize = 64;

/// Starts the task of an admitted connection; it ends when the handler drops the sender (the
/// connection closed), and closes the target session then.
pub(super) fn spawn(reach: Reach, handle: Handle, admitted: Admitted) -> mpsc::Sender<Event> {
    let (events, received) = mpsc::channel(EVENT_QUEUE);
    let (approvals, approved) = mpsc::unbounded_channel();
    let task = ConnectionTask {
        reach,
        handle,
        admitted,
        target: TargetState::NotOpened,
        channels: HashMap::new(),
        approvals,
        told_locked: false,
    };
    tokio::spawn(task.run(received, approved));
    events
}

struct ConnectionTask {
    reach: Reach,
    handle: Handle,
    admitted: Admitted,
    target: TargetState,
    channels: HashMap<ChannelId, Channel>,
    /// Given to wait-and-connect dialogs.
    approvals: mpsc::UnboundedSender<Approval>,
    /// A locked account's one channel was opened.
    told_locked: bool,
}

impl ConnectionTask {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut approved: mpsc::UnboundedReceiver<Approval>,
    ) {
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on(event).await,
                    None => break,
                },
                Some(approval) = approved.recv() => self.approved(approval).await,
            }
        }
        for (_, channel) in self.channels.drain() {
            if let Channel::Relayed(relayed) = channel {
                let _ = relayed.upstream.close().await;
            }
        }
        if let TargetState::Open(live) = std::mem::replace(&mut self.target, TargetState::NotOpened)
        {
            live.close().await;
        }
    }

    async fn on(&mut self, event: Event) {
        match event {
            Event::OpenSession { channel, reply } => self.open_session(channel, reply).await,
            Event::OpenForward {
                channel,
                destination,
                reply,
            } => self.open_forward(channel, destination, reply).await,
            Event::Pty { channel, pty } => self.pty(channel, pty).await,
            Event::Env {
                channel,
                name,
                value,
            } => self.env(channel, name, value).await,
            Event::Start { channel, start } => self.start(channel, start, Reply::Wanted).await,
            Event::Data { channel, data } => self.data(channel, data).await,
            Event::Resize { channel, size } => self.resize(channel, size).await,
            Event::Signal { channel, signal } => self.signal(channel, signal).await,
            Event::Eof { channel } => self.eof(channel).await,
            Event::Close { channel } => {
                if let Some(Channel::Relayed(relayed)) = self.channels.remove(&channel) {
                    let _ = relayed.upstream.close().await;
                }
            }
        }
    }

    async fn open_session(&mut self, channel: ChannelId, reply: ChannelOpenHandle) {
        let channel_state = match &self.admitted {
            // One channel, to say why the account is locked.
            Admitted::Locked(_) if self.told_locked => None,
            Admitted::Locked(_) => {
                self.told_locked = true;
                Some(Channel::Local(Local::default()))
            }
            Admitted::Login(login) => {
                if self.at_channel_cap() {
                    reply.reject(ChannelOpenFailure::ResourceShortage).await;
                    return;
                }
                Some(match login.target {
                    Some(_) => Channel::Pending(Pending::default()),
                    None => Channel::Local(Local::default()),
                })
            }
        };
        match channel_state {
            Some(state) => {
                self.channels.insert(channel, state);
                reply.accept().await;
            }
            None => {
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await
            }
        }
    }

    /// Opens a direct-tcpip channel on the target for `ssh -L`, only where the target allows it;
    /// a refusal is audited.
    async fn open_forward(
        &mut self,
        channel: ChannelId,
        destination: Destination,
        reply: ChannelOpenHandle,
    ) {
        let address = format!("{}:{}", destination.host, destination.port);
        // Issue #17 review: each forward holds an upstream channel and its queues too.
        if self.at_channel_cap() {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return;
        }
        match self.forward_upstream(&address, &destination).await {
            Ok(upstream_channel) => {
                let forward = Arc::new(relay::Forward {
                    destination: address,
                    bytes_up: Default::default(),
                    bytes_down: Default::default(),
                });
                let relay = RelayPlan {
                    channel,
                    pty: false,
                    transfer: SharedTransfer::default(),
                    forward: Some(forward),
                };
                if let Some(relayed) = self.relay(upstream_channel, relay) {
                    self.channels.insert(channel, Channel::Relayed(relayed));
                    reply.accept().await;
                } else {
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                }
            }
            Err(why) => {
                let (user, target) = match &self.admitted {
                    Admitted::Login(login) => (login.user.clone(), login.target.clone()),
                    Admitted::Locked(_) => (String::new(), None),
                };
                let refusal = admit::Refusal::Forward {
                    user,
                    target: target.unwrap_or_default(),
                    destination: address,
                    why: why.to_string(),
                };
                admit::refused(&self.reach.access, refusal).await;
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
            }
        }
    }

    async fn forward_upstream(
        &mut self,
        address: &str,
        destination: &Destination,
    ) -> Result<russh::Channel<client::Msg>, &'static str> {
        let Admitted::Login(Login {
            user,
            target: Some(target),
        }) = &self.admitted
        else {
            return Err("port forwarding needs a target login (user+target)");
        };
        let (user, target) = (user.clone(), target.clone());
        let allowed = self.reach.access.config().target(&target).is_some_and(
            |config| matches!(&config.kind, TargetKind::Ssh(ssh) if ssh.allow_port_forwarding),
        );
        if !allowed {
            return Err("the target does not allow port forwarding");
        }
        if self
            .ensure_target(&user, &target, Vec::new())
            .await
            .is_err()
        {
            return Err("no session on the target");
        }
        let TargetState::Open(live) = &self.target else {
            return Err("no session on the target");
        };
        tracing::info!(user = %user, target = %target, destination = address, "port forward");
        live.upstream
            .channel_open_direct_tcpip(
                destination.host.as_str(),
                destination.port,
                destination.originator_address.as_str(),
                destination.originator_port,
            )
            .await
            .map_err(|_| "the target refused the forward")
    }

    async fn pty(&mut self, channel: ChannelId, pty: Pty) {
        match self.channels.get_mut(&channel) {
            Some(Channel::Pending(pending)) => pending.requested.pty = Some(pty),
            Some(Channel::Local(local)) => local.requested.pty = Some(pty),
            // After the command started a pty changes nothing that is recorded: not sent (issue
            // #17 review; OpenSSH ignores it too).
            Some(Channel::Relayed(_) | Channel::Cut) | None => {}
        }
    }

    async fn env(&mut self, channel: ChannelId, name: String, value: String) {
        let requested = match self.channels.get_mut(&channel) {
            Some(Channel::Pending(pending)) => &mut pending.requested,
            Some(Channel::Local(local)) => &mut local.requested,
            // After the command started it changes nothing on the target, and is not sent.
            Some(Channel::Relayed(_) | Channel::Cut) | None => return,
        };
        if requested.env.len() < MAX_ENV {
            requested.env.push((name, value));
        }
    }

    async fn start(&mut self, channel: ChannelId, start: Start, reply: Reply) {
        match self.channels.remove(&channel) {
            Some(Channel::Pending(pending)) => {
                self.start_target(channel, pending, start, reply).await
            }
            Some(Channel::Local(local)) if !local.started => {
                self.serve_locally(channel, local, start, reply)
            }
            Some(started @ (Channel::Relayed(_) | Channel::Local(_) | Channel::Cut)) => {
                // One command per channel (issue #17 review: a second request replaced the
                // channel's transfer observer, and an open upload went unaudited). Not answered:
                // russh keeps one reply flag per channel, so a failure sent now could take the
                // place of the first request's answer, still on its way.
                tracing::info!(source = %self.reach.source, "second command on a channel ignored");
                self.channels.insert(channel, started);
            }
            None => self.fail(channel),
        }
    }

    /// Starts a target channel's command: opens the session (with this channel's environment)
    /// and the upstream channel, the recording, then the command.
    async fn start_target(
        &mut self,
        channel: ChannelId,
        pending: Pending,
        start: Start,
        reply: Reply,
    ) {
        let Admitted::Login(Login {
            user,
            target: Some(target),
        }) = &self.admitted
        else {
            return self.fail(channel);
        };
        let (user, target) = (user.clone(), target.clone());
        let parameters = pending.requested.env.clone();
        if self
            .ensure_target(&user, &target, parameters)
            .await
            .is_err()
        {
            let local = Local {
                requested: pending.requested,
                ..Local::default()
            };
            return self.serve_locally(channel, local, start, reply);
        }
        let Some(live) = self.live() else {
            return self.fail(channel);
        };
        if let Start::Subsystem(name) = &start
            && (name != "sftp" || live.container.is_some())
        {
            // Issue #17: only SFTP is observed, so any other subsystem would run unrecorded; and
            // file transfer into containers is not offered (it would land on the host).
            let (session, name) = (live.session.clone(), name.clone());
            let _ = tokio::task::spawn_blocking(move || session.subsystem_refused(&name)).await;
            self.channels.insert(channel, Channel::Pending(pending));
            return self.fail(channel);
        }
        let upstream_channel = match relay::open_upstream_channel(&live.upstream).await {
            Ok(upstream_channel) => upstream_channel,
            Err(error) => {
                tracing::warn!(%error, "cannot open a channel on the target");
                let local = Local {
                    requested: pending.requested,
                    refusal: Some(format!("target {target} refused a new channel")),
                    ..Local::default()
                };
                return self.serve_locally(channel, local, start, reply);
            }
        };
        let Pending {
            requested,
            early,
            early_eof,
        } = pending;
        let plan = RelayPlan {
            channel,
            pty: requested.pty.is_some(),
            transfer: SharedTransfer::default(),
            forward: None,
        };
        let Some(relayed) = self.relay(upstream_channel, plan) else {
            return self.fail(channel);
        };
        match self.command(&relayed, &requested, start, reply).await {
            Ok(()) => {}
            Err(why) => {
                let _ = relayed.upstream.close().await;
                return self.refuse(channel, reply, relayed.pty, why);
            }
        }
        self.channels.insert(channel, Channel::Relayed(relayed));
        // What the client sent before goes now, recorded.
        if !early.is_empty() {
            self.relay_input(channel, early).await;
        }
        if early_eof && let Some(Channel::Relayed(relayed)) = self.channels.get(&channel) {
            relayed.to_target.eof().await;
        }
    }

    /// Sends the client's pty and environment requests to a new upstream channel, starts the
    /// recording, then the command. `Err` is why the channel cannot run.
    async fn command(
        &self,
        relayed: &Relayed,
        requested: &Requested,
        start: Start,
        reply: Reply,
    ) -> Result<(), &'static str> {
        let live = self.live().ok_or(BROKEN)?;
        let upstream = &relayed.upstream;
        let subsystem = matches!(start, Start::Subsystem(_));
        // The client's own requests were answered already: the target's answers are not wanted.
        // A subsystem gets neither: SFTP needs no terminal, and what it got would be recorded
        // nowhere (issue #17 review).
        if let Some(pty) = requested.pty.as_ref().filter(|_| !subsystem) {
            let size = pty.size;
            let _ = upstream
                .request_pty(
                    false,
                    &pty.term,
                    size.width,
                    size.height,
                    size.pixel_width,
                    size.pixel_height,
                    &pty.modes,
                )
                .await;
        }
        if live.container.is_none() && !subsystem {
            for (name, value) in &requested.env {
                let _ = upstream.set_env(false, name.as_str(), value.as_str()).await;
            }
        }
        // SFTP and scp traffic is not a terminal: it is audited per file operation, not cast.
        if !matches!(start, Start::Subsystem(_)) {
            let plan = RecordingPlan {
                index: relayed.index,
                pty: requested.pty.as_ref(),
                command: match &start {
                    Start::Exec(command) => Some(String::from_utf8_lossy(command).into_owned()),
                    _ => None,
                },
                env: requested.env.clone(),
            };
            let (access, casts) = (&self.reach.access, &self.reach.casts);
            match start_recording(access, &live.session, plan, &relayed.recorder, casts).await {
                RecordingStart::Started => {}
                // Fail closed: a session that cannot be recorded does not run.
                RecordingStart::Refused => return Err(UNRECORDABLE),
                RecordingStart::Broken => return Err(BROKEN),
            }
        }
        let want_reply = reply == Reply::Wanted;
        let forwarded = match (&live.container, start) {
            (None, Start::Shell) => upstream.request_shell(want_reply).await,
            (None, Start::Exec(command)) => {
                let line = String::from_utf8_lossy(&command);
                if let Ok(mut slot) = relayed.transfer.lock() {
                    if let Some((direction, root)) = ScpDirection::of_command(&line) {
                        *slot = Some(relay::Transfer::Scp(ScpObserver::new(direction, root)));
                    } else if runs_sftp_server(&line) {
                        // The sftp subsystem by another name (issue #17 review).
                        *slot = Some(relay::Transfer::Sftp(SftpObserver::default()));
                    }
                }
                upstream.exec(want_reply, command).await
            }
            (None, Start::Subsystem(name)) => {
                // Only `sftp` gets here (refused before otherwise).
                if let Ok(mut slot) = relayed.transfer.lock() {
                    *slot = Some(relay::Transfer::Sftp(SftpObserver::default()));
                }
                upstream.request_subsystem(want_reply, name).await
            }
            // Refused before; never a container shell in its place.
            (Some(_), Start::Subsystem(_)) => return Err(BROKEN),
            (Some(container), start) => {
                let command = match &start {
                    Start::Exec(command) => Some(String::from_utf8_lossy(command).into_owned()),
                    _ => None,
                };
                let line = container::host_command(
                    container.runtime,
                    &container.container,
                    relayed.pty,
                    command.as_deref(),
                );
                upstream.exec(want_reply, line).await
            }
        };
        forwarded.map_err(|_| "the target refused the command")
    }

    /// Connects a downstream channel to its new upstream channel: the input writer and the pump.
    /// `None` when the target is not open.
    fn relay(&self, upstream: russh::Channel<client::Msg>, plan: RelayPlan) -> Option<Relayed> {
        let live = self.live()?;
        let (read, write) = upstream.split();
        let write = Arc::new(write);
        let (to_target, input_stop) = relay::TargetInput::start(write.clone());
        if let Ok(mut open) = live.live.lock() {
            open.insert(plan.channel, plan.pty);
        }
        let index = live.session.next_channel();
        let recorder = SharedRecorder::default();
        let pump = relay::Pump {
            handle: self.handle.clone(),
            down: plan.channel,
            index,
            session: live.session.clone(),
            recorder: recorder.clone(),
            live: live.live.clone(),
            pty: plan.pty,
            forward: plan.forward.clone(),
            transfer: plan.transfer.clone(),
            input_stop,
            cut: live.cut.clone(),
        };
        tokio::spawn(pump.run(read));
        Some(Relayed {
            upstream: write,
            to_target,
            index,
            recorder,
            record_input: record_input(live.session.target()),
            transfer: plan.transfer,
            forward: plan.forward,
            pty: plan.pty,
        })
    }

    /// Answers a start the bastion serves itself: the command interface, a wait-and-connect
    /// dialog, or the refusal of a target session (already audited when it was decided).
    fn serve_locally(&mut self, channel: ChannelId, mut local: Local, start: Start, reply: Reply) {
        local.started = true;
        let serve = local::Serve {
            access: self.reach.access.clone(),
            handle: self.handle.clone(),
            channel,
            pty: local.requested.pty.is_some(),
            answered: reply == Reply::Given,
        };
        let login = match &self.admitted {
            Admitted::Locked(why) => {
                serve.tell(why.clone());
                self.channels.insert(channel, Channel::Local(local));
                return;
            }
            Admitted::Login(login) => login.clone(),
        };
        let Some(target) = login.target else {
            let command = match start {
                Start::Shell => None,
                Start::Exec(line) => Some(String::from_utf8_lossy(&line).into_owned()),
                Start::Subsystem(_) => {
                    self.channels.insert(channel, Channel::Local(local));
                    return self.fail(channel);
                }
            };
            local.input = serve.command(login.user, command);
            self.channels.insert(channel, Channel::Local(local));
            return;
        };
        let (why, no_grant) = match (&self.target, local.refusal.clone()) {
            (_, Some(refusal)) => (refusal, false),
            (TargetState::Refused { why, no_grant }, None) => (why.clone(), *no_grant),
            _ => ("this session was refused".to_string(), false),
        };
        if no_grant && serve.pty && matches!(start, Start::Shell) {
            // Issue #3: a terminal without a grant is offered to request access and wait.
            let (sender, receiver) = mpsc::channel(EVENT_QUEUE);
            let dialog = super::wait::Dialog {
                reach: self.reach.clone(),
                user: login.user,
                target,
                handle: self.handle.clone(),
                channel,
                approvals: self.approvals.clone(),
            };
            local.input = Some(sender);
            tokio::spawn(serve.answer_then(dialog.run(receiver)));
        } else {
            serve.tell(why);
        }
        self.channels.insert(channel, Channel::Local(local));
    }

    /// A dialog's request was approved: the channel becomes a target channel, and its shell
    /// starts with what the client sent meanwhile as early input.
    async fn approved(&mut self, approval: Approval) {
        if !matches!(
            self.channels.get(&approval.channel),
            Some(Channel::Local(_))
        ) {
            return;
        }
        let Some(Channel::Local(local)) = self.channels.remove(&approval.channel) else {
            return;
        };
        let Local {
            requested, held, ..
        } = local;
        let mut pending = Pending {
            requested,
            ..Pending::default()
        };
        for event in approval.unread {
            hold(&mut pending, event);
        }
        if pending.early.len() + held.early.len() <= MAX_EARLY {
            pending.early.extend_from_slice(&held.early);
        }
        pending.early_eof |= held.early_eof;
        if matches!(self.target, TargetState::Refused { .. }) {
            self.target = TargetState::NotOpened;
        }
        // The client's shell request was answered when the dialog started.
        self.start_target(approval.channel, pending, Start::Shell, Reply::Given)
            .await;
    }

    async fn data(&mut self, channel: ChannelId, data: Vec<u8>) {
        let source = self.reach.source.clone();
        match self.channels.get_mut(&channel) {
            Some(Channel::Relayed(_)) => self.relay_input(channel, data).await,
            Some(Channel::Pending(pending)) => {
                if pending.early.len() + data.len() > MAX_EARLY {
                    tracing::info!(source = %source, "channel closed: too much data before its command");
                    self.channels.remove(&channel);
                    let handle = self.handle.clone();
                    tokio::spawn(async move {
                        let _ = handle.close(channel).await;
                    });
                    return;
                }
                pending.early.extend_from_slice(&data);
            }
            Some(Channel::Local(local)) => local.send(ClientEvent::Data(data)),
            Some(Channel::Cut) | None => {}
        }
    }

    /// Counts, records and observes what the client sent on a relayed channel, then sends it to
    /// the target; cuts the channel when it cannot be recorded or audited.
    async fn relay_input(&mut self, channel: ChannelId, data: Vec<u8>) {
        let (Some(live), Some(Channel::Relayed(relayed))) =
            (self.live(), self.channels.get(&channel))
        else {
            return;
        };
        let input = relay::ClientInput {
            session: &live.session,
            recorder: &relayed.recorder,
            record_input: relayed.record_input,
            transfer: &relayed.transfer,
            forward: relayed.forward.as_deref(),
        };
        if let Err(why) = input.accept(&data).await {
            // Fail closed: what cannot be recorded or audited does not reach the target, nor
            // does anything the client sends after it (issue #17 review).
            let _ = relayed.upstream.close().await;
            let (handle, pty) = (self.handle.clone(), relayed.pty);
            tokio::spawn(async move { relay::cut(&handle, channel, pty, why).await });
            self.channels.insert(channel, Channel::Cut);
            return;
        }
        if !relayed.to_target.data(&data).await {
            tracing::debug!("upstream channel closed while writing");
        }
    }

    async fn resize(&mut self, channel: ChannelId, size: Size) {
        match self.channels.get_mut(&channel) {
            Some(Channel::Relayed(relayed)) => {
                let _ = relayed
                    .upstream
                    .window_change(size.width, size.height, size.pixel_width, size.pixel_height)
                    .await;
                if let Some(cast) = relayed.recorder.get() {
                    cast.resize(size.width, size.height).await;
                }
            }
            Some(Channel::Pending(pending)) => pending.requested.resize(size),
            Some(Channel::Local(local)) => {
                local.requested.resize(size);
                local.send(ClientEvent::Resize(size));
            }
            Some(Channel::Cut) | None => {}
        }
    }

    async fn signal(&mut self, channel: ChannelId, signal: russh::Sig) {
        match self.channels.get_mut(&channel) {
            Some(Channel::Relayed(relayed)) => {
                let _ = relayed.upstream.signal(signal).await;
            }
            // Nothing of the target's runs yet to signal.
            Some(Channel::Local(_) | Channel::Pending(_) | Channel::Cut) | None => {}
        }
    }

    async fn eof(&mut self, channel: ChannelId) {
        match self.channels.get_mut(&channel) {
            Some(Channel::Relayed(relayed)) => relayed.to_target.eof().await,
            Some(Channel::Pending(pending)) => pending.early_eof = true,
            Some(Channel::Local(local)) => local.send(ClientEvent::Eof),
            Some(Channel::Cut) | None => {}
        }
    }

    /// Opens the session and the upstream connection on the first start of a target login.
    /// `Err` is the line to tell the engineer; the refusal is already audited.
    async fn ensure_target(
        &mut self,
        user: &str,
        target: &str,
        parameters: Vec<(String, String)>,
    ) -> Result<(), String> {
        if let TargetState::Open(live) = &self.target
            && live.upstream.is_closed()
        {
            // Cut by its supervisor (grant ended, revoked) or lost: this connection is done with
            // the target.
            self.target = TargetState::Refused {
                why: format!("the session on {target} has ended; connect again"),
                no_grant: false,
            };
        }
        match &self.target {
            TargetState::Open(_) => return Ok(()),
            TargetState::Refused { why, .. } => return Err(why.clone()),
            TargetState::NotOpened => {}
        }
        let opening = self
            .reach
            .connect(user, target, parameters, self.handle.clone());
        match opening.await {
            Ok(live) => {
                self.target = TargetState::Open(live);
                Ok(())
            }
            Err(refused) => {
                self.target = TargetState::Refused {
                    why: refused.why.clone(),
                    no_grant: refused.no_grant,
                };
                Err(refused.why)
            }
        }
    }

    fn live(&self) -> Option<&LiveTarget> {
        match &self.target {
            TargetState::Open(live) => Some(live),
            _ => None,
        }
    }

    /// Tells the engineer why a started channel cannot run, and ends it.
    fn refuse(&self, channel: ChannelId, reply: Reply, pty: bool, why: &'static str) {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            if reply == Reply::Wanted {
                let _ = handle.channel_success(channel).await;
            }
            relay::cut(&handle, channel, pty, why).await;
        });
    }

    /// Whether the connection holds `[limits] max_channels_per_connection` channels already
    /// (session channels and forwards alike); logged when it does.
    fn at_channel_cap(&self) -> bool {
        let cap = self
            .reach
            .access
            .config()
            .limits
            .max_channels_per_connection as usize;
        let full = self.channels.len() >= cap;
        if full {
            tracing::info!(source = %self.reach.source, cap, "channel refused: too many open channels");
        }
        full
    }

    /// Refuses a channel request, from a task of its own (see the module's note).
    fn fail(&self, channel: ChannelId) {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let _ = handle.channel_failure(channel).await;
        });
    }
}

/// Whether the client waits for the answer to a start request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Wanted,
    /// Answered already (a dialog's shell, answered when the dialog started).
    Given,
}

/// How to connect a new upstream channel.
struct RelayPlan {
    channel: ChannelId,
    pty: bool,
    transfer: SharedTransfer,
    forward: Option<Arc<relay::Forward>>,
}

impl Requested {
    fn resize(&mut self, size: Size) {
        if let Some(pty) = &mut self.pty {
            pty.size = size;
        }
    }
}

impl Local {
    /// Hands an event to the task reading this channel; once that task stopped reading (an
    /// approved dialog closes its queue), keeps it for the target.
    fn send(&mut self, event: ClientEvent) {
        let Some(input) = &self.input else {
            return;
        };
        // Never waited for (issue #17 review): the reader writes to the client, and a client
        // that stops reading would stop this task, then the handler, then its session loop.
        match input.try_send(event) {
            Ok(()) => {}
            // Typed faster than the bastion's own prompt answers: nothing reaches a target.
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!("input to a bastion prompt dropped: its queue is full")
            }
            Err(mpsc::error::TrySendError::Closed(event)) => hold(&mut self.held, event),
        }
    }
}

/// Keeps what a client sent for a channel whose command has not started.
fn hold(pending: &mut Pending, event: ClientEvent) {
    match event {
        ClientEvent::Data(bytes) if pending.early.len() + bytes.len() <= MAX_EARLY => {
            pending.early.extend_from_slice(&bytes)
        }
        // Past the bound it is dropped: it never reached the target.
        ClientEvent::Data(_) => {}
        ClientEvent::Eof => pending.early_eof = true,
        ClientEvent::Resize(size) => pending.requested.resize(size),
    }
}

/// Does this exec command run an SFTP server (`/usr/lib/openssh/sftp-server`, `sh -c
/// 'exec sftp-server'`, `internal-sftp`)? A command that only names one (`man sftp-server`) gets
/// the observer too, which ends it as an untrackable transfer: the safe side of a guess.
fn runs_sftp_server(line: &str) -> bool {
    line.contains("sftp-server") || line.contains("internal-sftp")
}
