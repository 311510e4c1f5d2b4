//! The SSH front end (russh): engineers and leaders connect with stock OpenSSH clients.
//!
//! `alice@bastion` reaches the command interface (`commands`), `alice+web-1@bastion` a target.
//! This module turns SSH events into calls on the protocol-blind core and writes the answers back;
//! it decides nothing itself. Authentication is public key only, every `auth_*` callback is
//! overridden and fails closed (issue #3).

mod connection;
mod container;
mod handler;
mod local;
mod login;
mod prompt;
mod relay;
mod review;
mod scp;
mod sftp;
mod target;
mod upstream;
mod wait;

use std::sync::Arc;
use std::time::Duration;

use russh::MethodKind;
use russh::keys::PrivateKey;
use russh::server::Server as _;

use crate::access::Access;
pub use login::Login;

/// Input writer tasks alive in this process (for the resource test of issue #3).
pub fn input_writers() -> usize {
    relay::input_writers()
}

/// Notices grant supervisors woke for in this process (for the resource test of issue #17).
pub fn supervisor_wakeups() -> u64 {
    relay::supervisor_wakeups()
}

/// Serves SSH on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    access: Access,
    host_key: PrivateKey,
    client_key: PrivateKey,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard(
            concat!("SSH-2.0-portcullis_", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: russh::MethodSet::from(&[MethodKind::PublicKey][..]),
        // Rejections take a constant time so they reveal nothing; OpenSSH's first "none" probe is
        // not an attempt and is answered at once.
        auth_rejection_time: Duration::from_millis(500),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 6,
        keys: vec![host_key],
        inactivity_timeout: Some(Duration::from_secs(3_600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    });
    let port = listener.local_addr()?.port();
    let limits = access.config().limits.clone();
    let gatekeeper = access.clone();
    let casts = crate::session::casts::CastWriter::start()?;
    let mut server = handler::SshServer::new(access, port, Arc::new(client_key), casts);
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: keep serving the others.
                    tracing::warn!(%error, "ssh accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if !crate::session::admit::accepted(
            &gatekeeper,
            peer.ip(),
            crate::session::admit::Protocol::Ssh,
        ) {
            // Issue #17: `[access] ip_allow` is checked before anything is read.
            drop(socket);
            continue;
        }
        let _ = socket.set_nodelay(true);
        // A second handle on the socket, to shut it down under a session that will not end.
        let (socket, killer) = match split_killer(socket) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "cannot prepare an ssh connection");
                continue;
            }
        };
        let handler = server.new_client(Some(peer));
        let authenticated = handler.authenticated();
        let config = config.clone();
        let stopping = stop.subscribe();
        tokio::spawn(connection(
            config,
            socket,
            killer,
            handler,
            authenticated,
            limits.handshake_timeout,
            stopping,
        ));
    }
    let _ = stop.send(());
    Ok(())
}

/// The socket for the session, and a clone of it that can shut it down from outside.
fn split_killer(
    socket: tokio::net::TcpStream,
) -> std::io::Result<(tokio::net::TcpStream, std::net::TcpStream)> {
    let socket = socket.into_std()?;
    let killer = socket.try_clone()?;
    socket.set_nonblocking(true)?;
    Ok((tokio::net::TcpStream::from_std(socket)?, killer))
}

/// Runs one client connection: the SSH handshake and authentication must finish within
/// `handshake_timeout` (issue #3), and a shutdown disconnects it.
async fn connection(
    config: Arc<russh::server::Config>,
    socket: tokio::net::TcpStream,
    killer: std::net::TcpStream,
    handler: handler::Connection,
    authenticated: Arc<std::sync::atomic::AtomicBool>,
    handshake_timeout: Duration,
    mut stopping: tokio::sync::broadcast::Receiver<()>,
) {
    let started = tokio::time::timeout(
        handshake_timeout,
        russh::server::run_stream(config, socket, handler),
    )
    .await;
    let session = match started {
        Ok(Ok(session)) => session,
        Ok(Err(error)) => {
            tracing::debug!(%error, "ssh connection failed before it started");
            return;
        }
        Err(_) => {
            tracing::debug!("ssh client sent no banner in time");
            return;
        }
    };
    let handle = session.handle();
    let deadline = tokio::time::sleep(handshake_timeout);
    tokio::pin!(deadline, session);
    let (mut deadline_armed, mut listening) = (true, true);
    loop {
        tokio::select! {
            _ = &mut deadline, if deadline_armed => {
                deadline_armed = false;
                if !authenticated.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::info!("ssh handshake or authentication timed out");
                    let _ = handle
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            "authentication timed out".to_string(),
                            "en".to_string(),
                        )
                        .await;
                    // A peer that stalls mid-handshake never lets the session end by itself.
                    if tokio::time::timeout(Duration::from_secs(1), &mut session).await.is_err() {
                        let _ = killer.shutdown(std::net::Shutdown::Both);
                        let _ = tokio::time::timeout(Duration::from_secs(5), &mut session).await;
                    }
                    return;
                }
            }
            _ = stopping.recv(), if listening => {
                listening = false;
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "the bastion is shutting down".to_string(),
                        "en".to_string(),
                    )
                    .await;
            }
            _ = &mut session => return,
        }
    }
}
