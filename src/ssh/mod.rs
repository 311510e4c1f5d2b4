//! The SSH front end (russh): engineers and leaders connect with stock OpenSSH clients.
//!
//! `alice@bastion` reaches the command interface (`commands`), `alice+web-1@bastion` a target.
//! This module turns SSH events into calls on the protocol-blind core and writes the answers back;
//! it decides nothing itself. Authentication is public key only, every `auth_*` callback is
//! overridden and fails closed (issue #3).

mod handler;
mod login;
mod relay;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use russh::MethodKind;
use russh::keys::PrivateKey;
use russh::server::Server as _;

use crate::access::Access;
pub use login::Login;

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
    let mut server = handler::SshServer::new(access, port, Arc::new(client_key));
    let running = server.run_on_socket(config, &listener);
    let handle = running.handle();
    tokio::spawn(async move {
        shutdown.await;
        handle.shutdown("the bastion is shutting down".to_string());
    });
    running.await
}
