//! The russh `Handler` of one client connection: authentication and channel requests.
//!
//! Kept thin on purpose (house style, rule 6): each callback checks what it must, hands work to the
//! core (`Access`, `commands`) on a blocking thread, and writes the answer back through the session
//! handle. Every `auth_*` method is overridden and fails closed; password, keyboard-interactive,
//! "none" and certificate logins are always refused. Agent, X11 and remote forwarding are refused;
//! local forwarding is refused until target sessions exist.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use russh::client;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, ChannelWriteHalf};
use tokio::sync::mpsc;

use super::container;
use super::login::Login;
use super::prompt::{self, ClientEvent};
use super::relay::{self, SharedRecorder};
use super::scp::{Direction as ScpDirection, ScpObserver};
use super::sftp::SftpObserver;
use super::target::{
    LiveTarget, Pty, Reach, RecordingPlan, RecordingStart, UNRECORDABLE, record_input,
    start_recording,
};
use super::wait;
use crate::access::Access;
use crate::commands::{self, CommandOutput};
use crate::config::TargetKind;
use crate::session::admit::{self, LoginRefusal, Proof, Protocol, Refused};
use crate::session::casts::CastWriter;

/// Makes one `Connection` per accepted TCP connection.
pub struct SshServer {
    access: Access,
    /// The port clients reach us on, for the commands we tell them to run.
    port: u16,
    client_key: Arc<PrivateKey>,
    /// Writes every channel's recording.
    casts: CastWriter,
}

impl SshServer {
    pub fn new(access: Access, port: u16, client_key: Arc<PrivateKey>, casts: CastWriter) -> Self {
        SshServer {
            access,
            port,
            client_key,
            casts,
        }
    }
}

impl russh::server::Server for SshServer {
    type Handler = Connection;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Connection {
        Connection {
            access: self.access.clone(),
            source: peer.map_or_else(|| "unknown".to_string(), |peer| peer.ip().to_string()),
            peer,
            port: self.port,
            client_key: self.client_key.clone(),
            casts: self.casts.clone(),
            login: LoginState::Anonymous { attempted: None },
            target: TargetState::NotOpened,
            authenticated: Arc::new(AtomicBool::new(false)),
            channels: HashMap::new(),
        }
    }
}

/// The state of one client connection.
pub struct Connection {
    access: Access,
    /// The client's IP address, as audited.
    source: String,
    peer: Option<SocketAddr>,
    port: u16,
    client_key: Arc<PrivateKey>,
    casts: CastWriter,
    login: LoginState,
    target: TargetState,
    /// Set once authenticated, for the handshake timeout.
    authenticated: Arc<AtomicBool>,
    channels: HashMap<ChannelId, ChannelState>,
}

/// Where a connection's authentication stands.
enum LoginState {
    /// Not logged in; the last login name a key was offered for, to audit a connection that
    /// never authenticated.
    Anonymous {
        attempted: Option<String>,
    },
    LoggedIn(Login),
    /// The client proved its key but the account is locked (issue #17): SSH cannot say why at
    /// authentication, so the login is taken, one channel is told this, and nothing else opens.
    Locked(String),
}

/// Where a target login stands with its target (a command login never opens one).
enum TargetState {
    NotOpened,
    /// The open session and upstream connection.
    Open(LiveTarget),
    /// Refused when first asked, told on every channel; `no_grant`: a terminal shell is
    /// offered to request one and wait.
    Refused {
        why: String,
        no_grant: bool,
    },
}

impl LoginState {
    fn login(&self) -> Option<&Login> {
        match self {
            LoginState::LoggedIn(login) => Some(login),
            _ => None,
        }
    }

    fn locked(&self) -> Option<&str> {
        match self {
            LoginState::Locked(why) => Some(why),
            _ => None,
        }
    }
}

impl TargetState {
    fn live(&self) -> Option<&LiveTarget> {
        match self {
            TargetState::Open(live) => Some(live),
            _ => None,
        }
    }
}

#[derive(Default)]
struct ChannelState {
    pty: Option<Pty>,
    /// The same, for the pump.
    pty_flag: Arc<AtomicBool>,
    /// The target's side of a relayed channel, for requests.
    upstream: Option<Arc<ChannelWriteHalf<client::Msg>>>,
    /// The engineer's data and EOF on their way to the target.
    to_target: Option<relay::TargetInput>,
    /// The channel's index within the session.
    index: u32,
    recorder: SharedRecorder,
    record_input: bool,
    /// Why this channel will not reach a target.
    refused: Option<String>,
    /// Set for a port forward.
    forward: Option<Arc<relay::Forward>>,
    /// Set once the channel runs a file transfer (sftp, or a legacy scp exec).
    transfer: relay::SharedTransfer,
    /// What the client sends, when the bastion serves this channel itself (prompt, waiting).
    input: Option<mpsc::Sender<ClientEvent>>,
    /// A relayed channel's shell, exec or subsystem started on the target (a forward from the
    /// start). Until then its data and EOF are held (issue #17): data sent before the command
    /// would otherwise reach its stdin unrecorded.
    started: bool,
    /// Data the client sent before the command started, recorded and sent once it does.
    early: Vec<u8>,
    /// Environment variables forwarded to the target, for the recording's header.
    env: Vec<(String, String)>,
    /// EOF the client sent before the command started, sent after `early`.
    early_eof: bool,
}

/// Environment variables kept for a channel's recording header (a client may send any number).
const MAX_ENV: usize = 64;

/// Data a client may send on a channel before its command starts; past it the channel closes.
/// OpenSSH sends none; russh's window lets a client send 2 MiB.
const MAX_EARLY: usize = 2 * 1024 * 1024;

impl Connection {
    /// A flag that turns true once this connection has authenticated.
    pub fn authenticated(&self) -> Arc<AtomicBool> {
        self.authenticated.clone()
    }

    /// Is `key` one of the configured keys of the user named in `login`? The proof of the
    /// login; everything else about it (address, lock, audit) is the admission gate's.
    fn key_allowed(&self, login: &str, key: &PublicKey) -> Result<Login, &'static str> {
        let login = Login::parse(login).ok_or("malformed login")?;
        let user = self
            .access
            .config()
            .user(&login.user)
            .ok_or("unknown user")?;
        if !user
            .ssh_keys
            .iter()
            .any(|known| known.key_data() == key.key_data())
        {
            return Err("public key not configured for this user");
        }
        Ok(login)
    }

    fn reject(&mut self, user: &str) -> Auth {
        if let LoginState::Anonymous { attempted } = &mut self.login {
            *attempted = Some(user.to_string());
        }
        Auth::reject()
    }
}

impl Drop for Connection {
    /// A connection that tried a login and never authenticated is one failed authentication,
    /// however many keys the client offered.
    fn drop(&mut self) {
        if let TargetState::Open(live) = std::mem::replace(&mut self.target, TargetState::NotOpened)
        {
            tokio::spawn(live.close());
        }
        let LoginState::Anonymous {
            attempted: Some(user),
        } = std::mem::replace(&mut self.login, LoginState::Anonymous { attempted: None })
        else {
            return;
        };
        let (access, Some(peer)) = (self.access.clone(), self.peer) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || {
                let user = Login::parse(&user).map_or(user, |login| login.user);
                // The gate audits and counts the failure.
                let _ = admit::login(
                    &access,
                    &user,
                    peer.ip(),
                    Protocol::Ssh,
                    Proof::Invalid("no accepted public key"),
                    None,
                );
            });
        }
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::reject())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(self.reject(user))
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.reject(user))
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        _certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        Ok(self.reject(user))
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.key_allowed(user, offer.public_key) {
            Ok(_) => Ok(Auth::Accept),
            Err(_) => Ok(self.reject(user)),
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let login = match self.key_allowed(user, key.public_key) {
            Ok(login) => login,
            Err(why) => {
                tracing::info!(source = %self.source, why, "ssh authentication refused");
                return Ok(self.reject(user));
            }
        };
        let Some(peer) = self.peer else {
            return Ok(Auth::reject());
        };
        // The client has proven its key: the handshake deadline is for slow or silent clients,
        // not for the bastion's own audit write (slow under a burst of logins). Re-armed below if
        // the login is refused.
        self.authenticated.store(true, Ordering::SeqCst);
        let access = self.access.clone();
        let (name, target) = (login.user.clone(), login.target.clone());
        let admitted = tokio::task::spawn_blocking(move || {
            admit::login(
                &access,
                &name,
                peer.ip(),
                Protocol::Ssh,
                Proof::Valid,
                target.as_deref(),
            )
        })
        .await;
        // The gate audited the outcome, failures included: nothing is left for `Drop`.
        self.login = LoginState::Anonymous { attempted: None };
        match admitted {
            Ok(Ok(())) => {}
            Ok(Err(Refused {
                refusal:
                    refusal @ (LoginRefusal::LockedAtSource { .. }
                    | LoginRefusal::LockedEverywhere { .. }),
                ..
            })) => {
                // Taken, so the engineer reads why on every channel; nothing else opens.
                tracing::info!(source = %self.source, "ssh login of a locked account");
                // Not authenticated as far as the handshake deadline goes: the connection is cut
                // when it passes (issue #17 review: it stayed open until the idle timeout).
                self.authenticated.store(false, Ordering::SeqCst);
                self.login = LoginState::Locked(refusal.to_string());
                return Ok(Auth::Accept);
            }
            Ok(Err(Refused { delay, .. })) => {
                self.authenticated.store(false, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                return Ok(Auth::reject());
            }
            Err(_) => {
                // Fail closed: a login that cannot be checked or audited does not happen.
                tracing::error!(source = %self.source, "cannot admit an ssh login; refusing it");
                self.authenticated.store(false, Ordering::SeqCst);
                return Ok(Auth::reject());
            }
        }
        tracing::info!(user = %login.user, target = ?login.target, source = %self.source,
            "ssh login");
        self.login = LoginState::LoggedIn(login);
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.login.locked().is_some() && self.channels.is_empty() {
            // One channel, to say why the account is locked.
            self.channels.insert(channel.id(), ChannelState::default());
            reply.accept().await;
            return Ok(());
        }
        let Some(login) = self.login.login().cloned() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let cap = self.access.config().limits.max_channels_per_connection as usize;
        if self.channels.len() >= cap {
            tracing::info!(source = %self.source, cap, "channel refused: too many open channels");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let mut state = ChannelState::default();
        if let Some(target) = &login.target {
            if let Err(why) = self.ensure_target(&login.user, target, session).await {
                state.refused = Some(why);
            } else if let Some(live) = self.target.live() {
                match relay::open_upstream_channel(&live.upstream).await {
                    Ok(upstream_channel) => {
                        let (read, write) = upstream_channel.split();
                        let index = live.session.next_channel();
                        state.index = index;
                        let write = Arc::new(write);
                        let (to_target, input_stop) = relay::TargetInput::start(write.clone());
                        state.to_target = Some(to_target);
                        state.upstream = Some(write);
                        state.record_input = record_input(live.session.target());
                        if let Ok(mut open) = live.live.lock() {
                            open.insert(channel.id(), false);
                        }
                        tokio::spawn(relay::pump(
                            read,
                            session.handle(),
                            channel.id(),
                            index,
                            live.session.clone(),
                            state.recorder.clone(),
                            live.live.clone(),
                            state.pty_flag.clone(),
                            None,
                            state.transfer.clone(),
                            Some(input_stop),
                        ));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot open a channel on the target");
                        state.refused = Some(format!("target {target} refused a new channel"));
                    }
                }
            }
        }
        self.channels.insert(channel.id(), state);
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let destination = format!("{host_to_connect}:{port_to_connect}");
        let opened = self
            .open_forward(
                &destination,
                host_to_connect,
                port_to_connect,
                originator_address,
                originator_port,
                session,
            )
            .await;
        match opened {
            Ok(upstream_channel) => {
                let (read, write) = upstream_channel.split();
                let forward = Arc::new(relay::Forward {
                    destination,
                    bytes_up: Default::default(),
                    bytes_down: Default::default(),
                });
                let write = Arc::new(write);
                let (to_target, input_stop) = relay::TargetInput::start(write.clone());
                let mut state = ChannelState {
                    to_target: Some(to_target),
                    upstream: Some(write),
                    forward: Some(forward.clone()),
                    started: true,
                    ..ChannelState::default()
                };
                if let Some(live) = self.target.live() {
                    state.index = live.session.next_channel();
                    tokio::spawn(relay::pump(
                        read,
                        session.handle(),
                        channel.id(),
                        state.index,
                        live.session.clone(),
                        state.recorder.clone(),
                        live.live.clone(),
                        state.pty_flag.clone(),
                        Some(forward),
                        state.transfer.clone(),
                        Some(input_stop),
                    ));
                }
                self.channels.insert(channel.id(), state);
                reply.accept().await;
            }
            Err(why) => {
                let refusal = admit::Refusal::Forward {
                    user: self
                        .login
                        .login()
                        .map(|login| login.user.clone())
                        .unwrap_or_default(),
                    target: self
                        .login
                        .login()
                        .and_then(|login| login.target.clone())
                        .unwrap_or_default(),
                    destination,
                    why: why.to_string(),
                };
                admit::refused(&self.access, refusal).await;
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
            }
        }
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(state) = self.channels.remove(&channel)
            && let Some(upstream) = state.upstream
        {
            let _ = upstream.close().await;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(state) = self.channels.get_mut(&channel)
            && state.to_target.is_some()
            && !state.started
        {
            state.early_eof = true;
        } else if let Some(to_target) = self
            .channels
            .get(&channel)
            .and_then(|state| state.to_target.as_ref())
        {
            to_target.eof().await;
        } else if let Some(input) = self.input_of(channel) {
            let _ = input.send(ClientEvent::Eof).await;
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(input) = self.input_of(channel) {
            // The prompt reads at its own pace; a full queue slows the client down.
            let _ = input.send(ClientEvent::Data(data.to_vec())).await;
            return Ok(());
        }
        let Some(state) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        if state.upstream.is_some() && !state.started {
            if state.early.len() + data.len() > MAX_EARLY {
                tracing::info!(source = %self.source, "channel closed: too much data before its command");
                if let Some(upstream) = &state.upstream {
                    let _ = upstream.close().await;
                }
                let _ = session.close(channel);
                return Ok(());
            }
            state.early.extend_from_slice(data);
            return Ok(());
        }
        self.forward_input(channel, data, session).await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(state) = self.channels.get_mut(&channel) else {
            return session.channel_failure(channel);
        };
        state.pty = Some(Pty {
            term: term.to_string(),
            width: col_width,
            height: row_height,
            modes: modes.to_vec(),
        });
        state.pty_flag.store(true, Ordering::Relaxed);
        if let Some(live) = self.target.live()
            && let Ok(mut open) = live.live.lock()
            && let Some(flag) = open.get_mut(&channel)
        {
            *flag = true;
        }
        match &state.upstream {
            // The target's answer is relayed by the pump.
            Some(upstream) => {
                let forwarded = upstream
                    .request_pty(
                        true, term, col_width, row_height, pix_width, pix_height, modes,
                    )
                    .await;
                if forwarded.is_err() {
                    return session.channel_failure(channel);
                }
                Ok(())
            }
            None => session.channel_success(channel),
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Only locale and terminal type reach a target (issue #3); nothing else can change how
        // the target's shell behaves.
        let allowed = matches!(variable_name, "LANG" | "TERM") || variable_name.starts_with("LC_");
        match self.upstream_of(channel) {
            Some(upstream) if allowed => {
                if upstream
                    .set_env(true, variable_name, variable_value)
                    .await
                    .is_err()
                {
                    return session.channel_failure(channel);
                }
                if let Some(state) = self.channels.get_mut(&channel)
                    && state.env.len() < MAX_ENV
                {
                    state
                        .env
                        .push((variable_name.to_string(), variable_value.to_string()));
                }
                Ok(())
            }
            None if allowed => session.channel_success(channel),
            _ => session.channel_failure(channel),
        }
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(input) = self.input_of(channel) {
            let resize = ClientEvent::Resize {
                width: col_width,
                height: row_height,
                pixel_width: pix_width,
                pixel_height: pix_height,
            };
            let _ = input.send(resize).await;
        }
        if let (Some(_), Some(state)) = (self.target.live(), self.channels.get(&channel)) {
            if let Some(upstream) = &state.upstream {
                let _ = upstream
                    .window_change(col_width, row_height, pix_width, pix_height)
                    .await;
            }
            if let Some(cast) = state.recorder.get() {
                cast.resize(col_width, row_height).await;
            }
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: russh::Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(upstream) = self.upstream_of(channel) {
            let _ = upstream.signal(signal).await;
        } else if let Some(input) = self.input_of(channel) {
            let _ = input.send(ClientEvent::Signal(signal)).await;
        }
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.relayed(channel) {
            return self.start_relayed(channel, Start::Shell, session).await;
        }
        if self.login.locked().is_some() {
            return self.tell_locked(channel, session);
        }
        self.start(channel, None, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.relayed(channel) {
            return self
                .start_relayed(channel, Start::Exec(data.to_vec()), session)
                .await;
        }
        if self.login.locked().is_some() {
            return self.tell_locked(channel, session);
        }
        let line = String::from_utf8_lossy(data).into_owned();
        self.start(channel, Some(line), session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.relayed(channel) {
            return self
                .start_relayed(channel, Start::Subsystem(name.to_string()), session)
                .await;
        }
        if self.login.locked().is_some() {
            return self.tell_locked(channel, session);
        }
        match self.login.login() {
            Some(Login {
                target: Some(_), ..
            }) => self.start(channel, None, session),
            _ => session.channel_failure(channel),
        }
    }
}

/// What a relayed channel starts on the target.
enum Start {
    Shell,
    Exec(Vec<u8>),
    Subsystem(String),
}

impl Connection {
    /// Counts, records and observes what the client sent on a started relayed channel, then
    /// sends it to the target.
    async fn forward_input(&self, channel: ChannelId, data: &[u8], session: &mut Session) {
        let (Some(live), Some(state)) = (self.target.live(), self.channels.get(&channel)) else {
            return;
        };
        let Some(upstream) = &state.upstream else {
            return;
        };
        let input = relay::ClientInput {
            session: &live.session,
            recorder: &state.recorder,
            record_input: state.record_input,
            transfer: &state.transfer,
            forward: state.forward.as_deref(),
        };
        if let Err(why) = input.accept(data).await {
            // Fail closed: what cannot be recorded or audited does not reach the target.
            let pty = state.pty_flag.load(Ordering::Relaxed);
            let _ = upstream.close().await;
            relay::cut(&session.handle(), channel, pty, why).await;
            return;
        }
        if let Some(to_target) = &state.to_target
            && !to_target.data(data).await
        {
            tracing::debug!("upstream channel closed while writing");
        }
    }

    /// The command started on the target: what the client sent before goes now, recorded.
    async fn release_early(&mut self, channel: ChannelId, session: &mut Session) {
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        state.started = true;
        let early = std::mem::take(&mut state.early);
        let eof = std::mem::take(&mut state.early_eof);
        if !early.is_empty() {
            self.forward_input(channel, &early, session).await;
        }
        if eof
            && let Some(to_target) = self
                .channels
                .get(&channel)
                .and_then(|state| state.to_target.as_ref())
        {
            to_target.eof().await;
        }
    }

    /// Tells a locked account's channel why, and closes it.
    fn tell_locked(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(why) = self.login.locked().map(str::to_string) else {
            return session.channel_failure(channel);
        };
        session.channel_success(channel)?;
        let pty = self
            .channels
            .get(&channel)
            .is_some_and(|state| state.pty.is_some());
        let handle = session.handle();
        tokio::spawn(async move {
            let output = CommandOutput {
                stdout: String::new(),
                stderr: format!("error: {why}\n"),
                exit_code: 1,
            };
            finish(&handle, channel, output, pty).await;
        });
        Ok(())
    }

    fn upstream_of(&self, channel: ChannelId) -> Option<&ChannelWriteHalf<client::Msg>> {
        self.channels
            .get(&channel)
            .and_then(|state| state.upstream.as_deref())
    }

    fn input_of(&self, channel: ChannelId) -> Option<mpsc::Sender<ClientEvent>> {
        self.channels
            .get(&channel)
            .and_then(|state| state.input.clone())
    }

    fn relayed(&self, channel: ChannelId) -> bool {
        self.upstream_of(channel).is_some()
    }

    /// Opens a direct-tcpip channel on the target for `ssh -L`, only where the target allows it.
    async fn open_forward(
        &mut self,
        destination: &str,
        host: &str,
        port: u32,
        originator_address: &str,
        originator_port: u32,
        session: &mut Session,
    ) -> Result<russh::Channel<client::Msg>, &'static str> {
        let Some(Login {
            user,
            target: Some(target),
        }) = self.login.login().cloned()
        else {
            return Err("port forwarding needs a target login (user+target)");
        };
        let allowed = self.access.config().target(&target).is_some_and(
            |config| matches!(&config.kind, TargetKind::Ssh(ssh) if ssh.allow_port_forwarding),
        );
        if !allowed {
            return Err("the target does not allow port forwarding");
        }
        if self.ensure_target(&user, &target, session).await.is_err() {
            return Err("no session on the target");
        }
        let Some(live) = self.target.live() else {
            return Err("no session on the target");
        };
        tracing::info!(user = %user, target = %target, destination, "port forward");
        live.upstream
            .channel_open_direct_tcpip(host, port, originator_address, originator_port)
            .await
            .map_err(|_| "the target refused the forward")
    }

    /// Opens the session and the upstream connection on the first channel of a target login.
    /// `Err` is the line to tell the engineer; the refusal is already audited.
    async fn ensure_target(
        &mut self,
        user: &str,
        target: &str,
        session: &mut Session,
    ) -> Result<(), String> {
        match &self.target {
            TargetState::Open(_) => return Ok(()),
            TargetState::Refused { why, .. } => return Err(why.clone()),
            TargetState::NotOpened => {}
        }
        let reach = Reach {
            access: self.access.clone(),
            source: self.source.clone(),
            port: self.port,
            client_key: self.client_key.clone(),
            casts: self.casts.clone(),
        };
        match reach.connect(user, target, session.handle()).await {
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

    /// Starts a shell, exec or subsystem on the target, with its recording.
    async fn start_relayed(
        &mut self,
        channel: ChannelId,
        start: Start,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let (Some(live), Some(state)) = (self.target.live(), self.channels.get(&channel)) else {
            return session.channel_failure(channel);
        };
        let Some(upstream) = &state.upstream else {
            return session.channel_failure(channel);
        };
        if state.started {
            // One command per channel (issue #17 review: a second request replaced the
            // channel's transfer observer, and an open upload went unaudited).
            return session.channel_failure(channel);
        }
        if let Start::Subsystem(name) = &start
            && (name != "sftp" || live.container.is_some())
        {
            // Issue #17: only SFTP is observed, so any other subsystem would run unrecorded; and
            // file transfer into containers is not offered (it would land on the host).
            let (session_core, name) = (live.session.clone(), name.clone());
            let _ =
                tokio::task::spawn_blocking(move || session_core.subsystem_refused(&name)).await;
            return session.channel_failure(channel);
        }
        let command = match &start {
            Start::Exec(command) => Some(String::from_utf8_lossy(command).into_owned()),
            _ => None,
        };
        // SFTP and scp traffic is not a terminal: it is audited per file operation, not cast.
        if !matches!(start, Start::Subsystem(_)) {
            let plan = RecordingPlan {
                index: state.index,
                pty: state.pty.as_ref(),
                command,
                env: state.env.clone(),
            };
            let started = start_recording(
                &self.access,
                &live.session,
                plan,
                &state.recorder,
                &self.casts,
            )
            .await;
            match started {
                RecordingStart::Started => {}
                RecordingStart::Refused => {
                    // Fail closed: a session that cannot be recorded does not run.
                    session.channel_success(channel)?;
                    let pty = state.pty.is_some();
                    let _ = upstream.close().await;
                    relay::cut(&session.handle(), channel, pty, UNRECORDABLE).await;
                    return Ok(());
                }
                RecordingStart::Broken => return session.channel_failure(channel),
            }
        }
        let forwarded = match (&live.container, start) {
            (None, Start::Shell) => upstream.request_shell(true).await,
            (None, Start::Exec(command)) => {
                let line = String::from_utf8_lossy(&command);
                if let Ok(mut slot) = state.transfer.lock() {
                    if let Some((direction, root)) = ScpDirection::of_command(&line) {
                        *slot = Some(relay::Transfer::Scp(ScpObserver::new(direction, root)));
                    } else if runs_sftp_server(&line) {
                        // The sftp subsystem by another name (issue #17 review).
                        *slot = Some(relay::Transfer::Sftp(SftpObserver::default()));
                    }
                }
                upstream.exec(true, command).await
            }
            (None, Start::Subsystem(name)) => {
                // Only `sftp` gets here (`start_relayed` refuses the others).
                if let Ok(mut slot) = state.transfer.lock() {
                    *slot = Some(relay::Transfer::Sftp(SftpObserver::default()));
                }
                upstream.request_subsystem(true, name).await
            }
            (Some(container), Start::Shell) => {
                let line = container::host_command(
                    container.runtime,
                    &container.container,
                    state.pty.is_some(),
                    None,
                );
                upstream.exec(true, line).await
            }
            (Some(container), Start::Exec(command)) => {
                let line = container::host_command(
                    container.runtime,
                    &container.container,
                    state.pty.is_some(),
                    Some(&String::from_utf8_lossy(&command)),
                );
                upstream.exec(true, line).await
            }
            // Refused above.
            (Some(_), Start::Subsystem(_)) => return session.channel_failure(channel),
        };
        if forwarded.is_err() {
            return session.channel_failure(channel);
        }
        self.release_early(channel, session).await;
        Ok(())
    }

    /// Answers a shell, exec or subsystem request that is not relayed: the command interface,
    /// or the refusal of a target session (already audited when it was decided).
    fn start(
        &mut self,
        channel: ChannelId,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let (Some(login), Some(state)) =
            (self.login.login().cloned(), self.channels.get_mut(&channel))
        else {
            return session.channel_failure(channel);
        };
        session.channel_success(channel)?;
        let access = self.access.clone();
        let pty = state.pty.is_some();
        if pty && login.target.is_none() && command.is_none() {
            let (sender, receiver) = mpsc::channel(64);
            state.input = Some(sender);
            tokio::spawn(prompt::run(
                access,
                login.user,
                session.handle(),
                channel,
                receiver,
            ));
            return Ok(());
        }
        if pty
            && login.target.is_none()
            && let Some(line) = command
                .as_deref()
                .filter(|line| prompt::waits_for_decision(line))
        {
            let (sender, receiver) = mpsc::channel(64);
            state.input = Some(sender);
            tokio::spawn(prompt::request_and_wait(
                access,
                login.user,
                session.handle(),
                channel,
                receiver,
                line.to_string(),
            ));
            return Ok(());
        }
        if let (Some(target), Some(pty), None, true) = (
            &login.target,
            &state.pty,
            &command,
            matches!(self.target, TargetState::Refused { no_grant: true, .. }),
        ) {
            // Issue #3: a terminal without a grant is offered to request access and wait.
            let (sender, receiver) = mpsc::channel(64);
            state.input = Some(sender);
            let dialog = wait::Dialog {
                reach: Reach {
                    access,
                    source: self.source.clone(),
                    port: self.port,
                    client_key: self.client_key.clone(),
                    casts: self.casts.clone(),
                },
                user: login.user,
                target: target.clone(),
                handle: session.handle(),
                channel,
                pty: pty.clone(),
            };
            tokio::spawn(dialog.run(receiver));
            return Ok(());
        }
        let refused = state.refused.clone();
        let handle = session.handle();
        tokio::spawn(async move {
            let output = match (&login.target, command) {
                (Some(_), _) => CommandOutput {
                    stdout: String::new(),
                    stderr: format!(
                        "error: {}\n",
                        refused.unwrap_or_else(|| "this session was refused".to_string())
                    ),
                    exit_code: 1,
                },
                (None, command) => tokio::task::spawn_blocking(move || match command {
                    Some(line) => commands::run_line(&access, &login.user, &line),
                    None => interactive_unavailable(&access, &login.user),
                })
                .await
                .unwrap_or_else(|_| CommandOutput {
                    stdout: String::new(),
                    stderr: "error: the bastion failed on this request; nothing was changed\n"
                        .to_string(),
                    exit_code: 1,
                }),
            };
            finish(&handle, channel, output, pty).await;
        });
        Ok(())
    }
}

/// Writes a command's output, its exit status, EOF and close, in the order OpenSSH expects.
async fn finish(
    handle: &russh::server::Handle,
    channel: ChannelId,
    output: CommandOutput,
    pty: bool,
) {
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

/// Does this exec command run an SFTP server (`/usr/lib/openssh/sftp-server`, `sh -c
/// 'exec sftp-server'`, `internal-sftp`)? A command that only names one (`man sftp-server`) gets
/// the observer too, which ends it as an untrackable transfer: the safe side of a guess.
fn runs_sftp_server(line: &str) -> bool {
    line.contains("sftp-server") || line.contains("internal-sftp")
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
