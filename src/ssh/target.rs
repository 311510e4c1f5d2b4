//! Reaching a target: opening a target login's session and a channel's recording.
//!
//! `Reach::connect` opens the session (grant check, audit) and the bastion's own connection to
//! the target, and starts the grant supervisor; `start_recording` opens a channel's asciicast
//! recording. The connection task (`connection.rs`) calls both, for every target channel,
//! wait-and-connect's included; a dialog holds a `Reach` only to file its request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use russh::keys::PrivateKey;
use tokio::sync::oneshot;

use super::relay::{self, LiveChannels, SharedRecorder};
use super::upstream::{self, Upstream};
use crate::access::Access;
use crate::commands;
use crate::config::TargetKind;
use crate::recording::Capture;
use crate::recording::asciicast::{DEFAULT_SIZE, Header};
use crate::session::admit;
use crate::session::casts::CastWriter;
use crate::session::{EndReason, SessionRefusal};

/// A target login's live session.
pub(super) struct LiveTarget {
    pub session: crate::session::Session,
    pub upstream: Arc<Upstream>,
    pub live: LiveChannels,
    /// Set for a container target: channels run inside it.
    pub container: Option<crate::config::ContainerTarget>,
    /// Fires when the supervisor cuts the session; every channel's pump watches it.
    pub cut: relay::CutSignal,
    /// Dropping it stops the grant supervisor.
    _stop: oneshot::Sender<()>,
}

impl LiveTarget {
    /// Disconnects from the target and ends the session: the client went away.
    pub(super) async fn close(self) {
        let _ = self
            .upstream
            .disconnect(
                russh::Disconnect::ByApplication,
                "client disconnected",
                "en",
            )
            .await;
        end_session(&self.session, EndReason::Closed).await;
    }
}

#[derive(Debug, Clone)]
pub(super) struct Pty {
    pub term: String,
    pub size: Size,
    /// Terminal modes as the client asked for them, sent when the command starts.
    pub modes: Vec<(russh::Pty, u32)>,
}

/// A terminal's size in characters and pixels.
#[derive(Debug, Clone, Copy)]
pub(super) struct Size {
    pub width: u32,
    pub height: u32,
    pub pixel_width: u32,
    pub pixel_height: u32,
}

/// What a target login needs to reach its target: held by the connection, and by a
/// wait-and-connect dialog that connects once its request is approved.
#[derive(Clone)]
pub(super) struct Reach {
    pub access: Access,
    /// The client's IP address, as audited.
    pub source: String,
    pub port: u16,
    pub client_key: Arc<PrivateKey>,
    pub casts: CastWriter,
}

/// Why a target session was refused; the refusal is already audited.
pub(super) struct TargetRefused {
    /// The line to tell the engineer.
    pub why: String,
    /// No active grant (the one refusal a request can fix).
    pub no_grant: bool,
}

impl Reach {
    /// Opens the session (grant check, audit, with the environment the first channel forwards as
    /// its `parameters`) and the upstream connection, and starts the grant supervisor that warns
    /// and cuts the session's channels.
    pub(super) async fn connect(
        &self,
        user: &str,
        target: &str,
        parameters: Vec<(String, String)>,
        handle: russh::server::Handle,
    ) -> Result<LiveTarget, TargetRefused> {
        let refused = |why: String| TargetRefused {
            why,
            no_grant: false,
        };
        let access = self.access.clone();
        let (name, target_name, source) =
            (user.to_string(), target.to_string(), self.source.clone());
        let opened = tokio::task::spawn_blocking(move || {
            crate::session::Session::open(&access, &name, &target_name, "ssh", &source, parameters)
        })
        .await;
        let opened = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(refusal)) => {
                let no_grant = matches!(refusal, SessionRefusal::NoGrant { .. });
                let why = match refusal {
                    SessionRefusal::NoGrant { target } => format!(
                        "no active grant for {target}; request one with: {}",
                        commands::request_hint(&self.access, user, &target, self.port)
                    ),
                    other => other.to_string(),
                };
                self.audit_refusal(user, target, &why).await;
                return Err(TargetRefused { why, no_grant });
            }
            Err(_) => {
                return Err(refused(
                    "the bastion failed to open the session".to_string(),
                ));
            }
        };
        // A container is reached through its host: the host's address, credential and host key.
        let (host_name, ssh_target, container) = match &opened.target().kind {
            TargetKind::Ssh(ssh) => (target.to_string(), ssh.clone(), None),
            TargetKind::Container(container) => {
                let host =
                    self.access
                        .config()
                        .target(&container.host)
                        .and_then(|host| match &host.kind {
                            TargetKind::Ssh(ssh) => Some(ssh.clone()),
                            _ => None,
                        });
                match host {
                    Some(ssh) => (container.host.clone(), ssh, Some(container.clone())),
                    None => {
                        let why =
                            format!("the host of container target {target} is not an ssh target");
                        self.audit_refusal(user, target, &why).await;
                        end_session(&opened, EndReason::Refused).await;
                        return Err(refused(why));
                    }
                }
            }
            TargetKind::Postgres(_) => {
                let why =
                    format!("{target} is a PostgreSQL target: connect with psql to the bastion");
                self.audit_refusal(user, target, &why).await;
                end_session(&opened, EndReason::Refused).await;
                return Err(refused(why));
            }
        };
        match upstream::connect(
            &self.access,
            &host_name,
            &ssh_target,
            self.client_key.clone(),
        )
        .await
        {
            Ok(upstream) => {
                let upstream = Arc::new(upstream);
                let live: LiveChannels = Arc::new(Mutex::new(HashMap::new()));
                let (stop, stopped) = oneshot::channel();
                let (cutting, cut) = tokio::sync::watch::channel(false);
                tokio::spawn(relay::supervise(
                    opened.clone(),
                    handle,
                    upstream.clone(),
                    live.clone(),
                    stopped,
                    cutting,
                ));
                Ok(LiveTarget {
                    session: opened,
                    upstream,
                    live,
                    container,
                    cut,
                    _stop: stop,
                })
            }
            Err(error) => {
                let why = error.to_string();
                tracing::warn!(target, %error, "cannot reach the target");
                self.audit_refusal(user, target, &why).await;
                end_session(&opened, EndReason::TargetUnreachable).await;
                Err(refused(why))
            }
        }
    }

    async fn audit_refusal(&self, user: &str, target: &str, why: &str) {
        admit::session_refused(&self.access, user, target, &self.source, why).await;
    }
}

/// Told to the engineer when a channel cannot be recorded and the target fails closed.
pub(super) const UNRECORDABLE: &str =
    "this session cannot be recorded, so it cannot run; tell the bastion operators";

/// How starting a channel's recording went.
pub(super) enum RecordingStart {
    /// Recording (or the target continues without it, as its config says; audited).
    Started,
    /// The recording cannot be written and the target fails closed: cut the channel.
    Refused,
    /// The bastion failed; refuse the channel request.
    Broken,
}

/// What a channel's recording starts with.
pub(super) struct RecordingPlan<'a> {
    /// The channel's index within the session.
    pub index: u32,
    pub pty: Option<&'a Pty>,
    /// For exec channels.
    pub command: Option<String>,
    /// Environment variables forwarded to the target (issue #17: everything that changes the
    /// session is in its record).
    pub env: Vec<(String, String)>,
}

/// Opens the asciicast recording of a shell or exec channel and puts it in `recorder`.
pub(super) async fn start_recording(
    access: &Access,
    session: &crate::session::Session,
    plan: RecordingPlan<'_>,
    recorder: &SharedRecorder,
    casts: &CastWriter,
) -> RecordingStart {
    let RecordingPlan {
        index,
        pty,
        command,
        env,
    } = plan;
    let capture = Capture {
        input: record_input(session.target()),
        terminal: pty.is_some(),
    };
    let (width, height) = match pty {
        Some(pty) if pty.size.width > 0 && pty.size.height > 0 => (pty.size.width, pty.size.height),
        _ => DEFAULT_SIZE,
    };
    let header = Header {
        width,
        height,
        timestamp: access.now().unix_timestamp(),
        title: session.title(),
        command,
        term: pty.map(|pty| pty.term.clone()),
        env,
    };
    let recording_session = session.clone();
    let created = tokio::task::spawn_blocking(move || {
        recording_session.start_recording(index, &header, capture)
    })
    .await;
    match created {
        Ok(Ok(started)) => {
            // Set once: a channel starts one shell or exec.
            let _ = recorder.set(casts.channel(session.clone(), index, started));
            RecordingStart::Started
        }
        Ok(Err(error)) if session.recording_failed(&error) => RecordingStart::Refused,
        Ok(Err(_)) => RecordingStart::Started,
        Err(_) => RecordingStart::Broken,
    }
}

/// Does a target with this config record keystrokes?
pub(super) fn record_input(target: &crate::config::Target) -> bool {
    match &target.kind {
        crate::config::TargetKind::Ssh(ssh) => ssh.record_input,
        crate::config::TargetKind::Container(container) => container.record_input,
        crate::config::TargetKind::Postgres(_) => true,
    }
}

/// Ends a session from async code.
async fn end_session(session: &crate::session::Session, reason: EndReason) {
    let session = session.clone();
    let _ = tokio::task::spawn_blocking(move || session.end(reason)).await;
}
