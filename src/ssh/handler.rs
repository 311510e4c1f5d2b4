//! The russh `Handler` of one client connection: authentication and channel requests.
//!
//! Kept thin on purpose (house style, rule 6): each callback checks what it must, hands work to the
//! core (`Access`, `commands`) on a blocking thread, and writes the answer back through the session
//! handle. Every `auth_*` method is overridden and fails closed; password, keyboard-interactive,
//! "none" and certificate logins are always refused. Agent, X11 and remote forwarding are refused;
//! local forwarding is refused until target sessions exist.

use std::collections::HashMap;
use std::net::SocketAddr;

use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure};

use super::login::Login;
use crate::access::Access;
use crate::audit::AuditEvent;
use crate::commands::{self, CommandOutput};

/// Makes one `Connection` per accepted TCP connection.
pub struct SshServer {
    access: Access,
    /// The port clients reach us on, for the commands we tell them to run.
    port: u16,
}

impl SshServer {
    pub fn new(access: Access, port: u16) -> Self {
        SshServer { access, port }
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
            login: None,
            attempted: None,
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
    /// Set once public-key authentication succeeded.
    login: Option<Login>,
    /// The last login name a key was offered for, to audit a connection that never authenticated.
    attempted: Option<String>,
    channels: HashMap<ChannelId, ChannelState>,
}

#[derive(Debug, Default)]
struct ChannelState {
    pty: bool,
}

impl Connection {
    /// Is `key` one of the configured keys of the user named in `login`, connecting from an
    /// address the user is allowed to use?
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
        if let Some(networks) = &user.ip_allow {
            let allowed = self
                .peer
                .is_some_and(|peer| networks.iter().any(|network| network.contains(&peer.ip())));
            if !allowed {
                return Err("source address not in the user's ip_allow");
            }
        }
        Ok(login)
    }

    fn reject(&mut self, user: &str) -> Auth {
        self.attempted = Some(user.to_string());
        Auth::reject()
    }
}

impl Drop for Connection {
    /// A connection that tried a login and never authenticated is one failed authentication,
    /// however many keys the client offered.
    fn drop(&mut self) {
        if self.login.is_some() {
            return;
        }
        let Some(user) = self.attempted.take() else {
            return;
        };
        let access = self.access.clone();
        let source = self.source.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || {
                let user = Login::parse(&user).map_or(user, |login| login.user);
                if let Err(error) =
                    access.record_auth_failure(&user, &source, "ssh", "no accepted public key")
                {
                    tracing::error!(%error, "cannot audit a failed ssh authentication");
                }
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
        let access = self.access.clone();
        let (name, source, target) = (
            login.user.clone(),
            self.source.clone(),
            login.target.clone(),
        );
        let recorded = tokio::task::spawn_blocking(move || {
            access.record_login(&name, &source, "ssh", target.as_deref())
        })
        .await;
        if !matches!(recorded, Ok(Ok(()))) {
            // Fail closed: a login that cannot be audited does not happen.
            tracing::error!(source = %self.source, "cannot audit an ssh login; refusing it");
            return Ok(Auth::reject());
        }
        tracing::info!(user = %login.user, target = ?login.target, source = %self.source,
            "ssh login");
        self.login = Some(login);
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.login.is_none() {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        self.channels.insert(channel.id(), ChannelState::default());
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
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
        self.channels.remove(&channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(state) => {
                state.pty = true;
                session.channel_success(channel)
            }
            None => session.channel_failure(channel),
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = matches!(variable_name, "LANG" | "TERM") || variable_name.starts_with("LC_");
        if allowed {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
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
        self.start(channel, None, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let line = String::from_utf8_lossy(data).into_owned();
        self.start(channel, Some(line), session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match &self.login {
            Some(Login {
                target: Some(_), ..
            }) => self.start(channel, None, session),
            _ => session.channel_failure(channel),
        }
    }
}

impl Connection {
    /// Starts the work of a shell, exec or subsystem request on its own task.
    fn start(
        &mut self,
        channel: ChannelId,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let (Some(login), Some(state)) = (self.login.clone(), self.channels.get(&channel)) else {
            return session.channel_failure(channel);
        };
        session.channel_success(channel)?;
        let access = self.access.clone();
        let source = self.source.clone();
        let pty = state.pty;
        let port = self.port;
        let handle = session.handle();
        tokio::spawn(async move {
            let output = tokio::task::spawn_blocking(move || match (&login.target, command) {
                (Some(target), _) => refuse_target(&access, &login.user, target, &source, port),
                (None, Some(line)) => commands::run_line(&access, &login.user, &line),
                (None, None) => interactive_unavailable(&access, &login.user),
            })
            .await
            .unwrap_or_else(|_| CommandOutput {
                stdout: String::new(),
                stderr: "error: the bastion failed on this request; nothing was changed\n"
                    .to_string(),
                exit_code: 1,
            });
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

/// A session on a target. Until the relay exists (issue #3) every such session is refused, with
/// the exact `request` command when there is no grant.
fn refuse_target(
    access: &Access,
    user: &str,
    target: &str,
    source: &str,
    port: u16,
) -> CommandOutput {
    let config = access.config();
    let why = if config.target(target).is_none() {
        format!("unknown target {target}; list the ones you may request with: targets")
    } else {
        match access.active_grant(user, target) {
            Ok(None) => format!(
                "no active grant for {target}; request one with: {}",
                request_hint(access, user, target, port)
            ),
            Ok(Some(_)) => format!(
                "you have access to {target}, but this bastion build cannot open target sessions \
                 yet; nothing was connected"
            ),
            Err(_) => "the bastion could not check your access; nothing was connected".to_string(),
        }
    };
    let event = AuditEvent::SessionRefused {
        user: user.to_string(),
        target: target.to_string(),
        source: source.to_string(),
        why: why.clone(),
    };
    if let Err(error) = access.record(&event) {
        tracing::error!(%error, "cannot audit a refused session");
    }
    CommandOutput {
        stdout: String::new(),
        stderr: format!("error: {why}\n"),
        exit_code: 1,
    }
}

/// `ssh -p 2222 alice@bastion request web-1 --for 1h --reason "..."`, with this bastion's address.
pub fn request_hint(access: &Access, user: &str, target: &str, port: u16) -> String {
    let config = access.config();
    let host = config
        .server
        .public_url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ':']).next())
        .filter(|host| !host.is_empty())
        .unwrap_or("bastion");
    format!("ssh -p {port} {user}@{host} request {target} --for 1h --reason \"...\"")
}

fn interactive_unavailable(access: &Access, user: &str) -> CommandOutput {
    let help = commands::run(access, user, &["help".to_string()]);
    CommandOutput {
        stdout: format!(
            "portcullis: the interactive prompt is not available yet; run one command per \
             connection, for example: ssh <bastion> targets\n\n{}",
            help.stdout
        ),
        stderr: String::new(),
        exit_code: 0,
    }
}
