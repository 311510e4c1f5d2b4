//! The russh `Handler` of one client connection: authentication, then events for the
//! connection's task.
//!
//! Thin on purpose (house style, rule 6; issue #17): authentication runs here through the
//! admission gate, and every channel callback becomes an `Event` for the connection task
//! (`connection.rs`) that owns the state. Every `auth_*` method is overridden and fails closed;
//! password, keyboard-interactive, "none" and certificate logins are always refused. Agent, X11
//! and remote forwarding are refused here. The only replies given here are to pty and
//! environment requests, at once, so they reach the client before anything the task answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use tokio::sync::mpsc;

use super::connection::{self, Admitted, Destination, Event, Start};
use super::login::Login;
use super::target::{Pty, Reach, Size};
use crate::access::Access;
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
        let source = peer.map_or_else(|| "unknown".to_string(), |peer| peer.ip().to_string());
        Connection {
            reach: Reach {
                access: self.access.clone(),
                source,
                port: self.port,
                client_key: self.client_key.clone(),
                casts: self.casts.clone(),
            },
            peer,
            login: LoginState::Anonymous { attempted: None },
            authenticated: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// One client connection, as russh sees it.
pub struct Connection {
    /// What the connection task needs to reach targets; `reach.source` is the client's address.
    reach: Reach,
    peer: Option<SocketAddr>,
    login: LoginState,
    /// Set once authenticated, for the handshake timeout.
    authenticated: Arc<AtomicBool>,
}

/// Where a connection's authentication stands.
enum LoginState {
    /// Not logged in; the last login name a key was offered for, to audit a connection that
    /// never authenticated.
    Anonymous { attempted: Option<String> },
    /// Admitted; the connection task starts with the first channel (it needs the session's
    /// handle, which the authentication callbacks do not have).
    Admitted(Admitted),
    /// The connection task runs: every channel event goes to it.
    Running(mpsc::Sender<Event>),
    /// The connection task is gone; nothing more is served.
    Ended,
}

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
            .reach
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

    /// Hands an event to the connection task, starting it with the first; false when there is
    /// no task to take it (not admitted, or ended).
    async fn send(&mut self, event: Event, session: &mut Session) -> bool {
        if let LoginState::Admitted(_) = &self.login
            && let LoginState::Admitted(admitted) =
                std::mem::replace(&mut self.login, LoginState::Ended)
        {
            let events = connection::spawn(self.reach.clone(), session.handle(), admitted);
            self.login = LoginState::Running(events);
        }
        let LoginState::Running(events) = &self.login else {
            return false;
        };
        if events.send(event).await.is_err() {
            self.login = LoginState::Ended;
            return false;
        }
        true
    }
}

impl Drop for Connection {
    /// A connection that tried a login and never authenticated is one failed authentication,
    /// however many keys the client offered. (The connection task closes the target session
    /// when this handler, and so its queue, is gone.)
    fn drop(&mut self) {
        let LoginState::Anonymous {
            attempted: Some(user),
        } = std::mem::replace(&mut self.login, LoginState::Ended)
        else {
            return;
        };
        let (access, Some(peer)) = (self.reach.access.clone(), self.peer) else {
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
                tracing::info!(source = %self.reach.source, why, "ssh authentication refused");
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
        let access = self.reach.access.clone();
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
                tracing::info!(source = %self.reach.source, "ssh login of a locked account");
                // Not authenticated as far as the handshake deadline goes: the connection is cut
                // when it passes (issue #17 review: it stayed open until the idle timeout).
                self.authenticated.store(false, Ordering::SeqCst);
                self.login = LoginState::Admitted(Admitted::Locked(refusal.to_string()));
                return Ok(Auth::Accept);
            }
            Ok(Err(Refused { delay, .. })) => {
                self.authenticated.store(false, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                return Ok(Auth::reject());
            }
            Err(_) => {
                // Fail closed: a login that cannot be checked or audited does not happen.
                tracing::error!(source = %self.reach.source, "cannot admit an ssh login; refusing it");
                self.authenticated.store(false, Ordering::SeqCst);
                return Ok(Auth::reject());
            }
        }
        tracing::info!(user = %login.user, target = ?login.target, source = %self.reach.source,
            "ssh login");
        self.login = LoginState::Admitted(Admitted::Login(login));
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The task answers; a reply dropped unanswered (no task) is a refusal.
        let event = Event::OpenSession {
            channel: channel.id(),
            reply,
        };
        self.send(event, session).await;
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
        let event = Event::OpenForward {
            channel: channel.id(),
            destination: Destination {
                host: host_to_connect.to_string(),
                port: port_to_connect,
                originator_address: originator_address.to_string(),
                originator_port,
            },
            reply,
        };
        self.send(event, session).await;
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
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(Event::Close { channel }, session).await;
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(Event::Eof { channel }, session).await;
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let event = Event::Data {
            channel,
            data: data.to_vec(),
        };
        self.send(event, session).await;
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
        let pty = Pty {
            term: term.to_string(),
            size: Size {
                width: col_width,
                height: row_height,
                pixel_width: pix_width,
                pixel_height: pix_height,
            },
            modes: modes.to_vec(),
        };
        if self.send(Event::Pty { channel, pty }, session).await {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
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
        let event = Event::Env {
            channel,
            name: variable_name.to_string(),
            value: variable_value.to_string(),
        };
        if allowed && self.send(event, session).await {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let size = Size {
            width: col_width,
            height: row_height,
            pixel_width: pix_width,
            pixel_height: pix_height,
        };
        self.send(Event::Resize { channel, size }, session).await;
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: russh::Sig,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(Event::Signal { channel, signal }, session).await;
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
        self.start(channel, Start::Shell, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, Start::Exec(data.to_vec()), session)
            .await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, Start::Subsystem(name.to_string()), session)
            .await
    }
}

impl Connection {
    /// Hands a shell, exec or subsystem request to the task, which answers it.
    async fn start(
        &mut self,
        channel: ChannelId,
        start: Start,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        if self.send(Event::Start { channel, start }, session).await {
            Ok(())
        } else {
            session.channel_failure(channel)
        }
    }
}
