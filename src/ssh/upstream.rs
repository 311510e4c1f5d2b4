//! The bastion's own SSH connection to a target: host-key verification and injected credentials.
//!
//! The engineer never sees the credential: it is the bastion's client key, a private key file or a
//! password read from a file or env var at connect time. The target's host key is checked against
//! the pinned key, a known_hosts file, or (for `accept-first`) the key remembered in state the first
//! time; anything else refuses the session and is reported as a target problem (issue #3).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, AuthResult, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};

use crate::access::Access;
use crate::config::{HostKeyPolicy, SshCredential, SshTarget};

/// How long connecting and authenticating to a target may take.

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("target {target} is unreachable: {why}")]
    Unreachable { target: String, why: String },
    #[error(
        "target {target} presented a host key that does not match the one on record; \
         this is a target problem (or an attack): tell the bastion operators"
    )]
    HostKeyMismatch { target: String },
    #[error("target {target} has no pinned host key; the bastion operators must set one")]
    HostKeyUnpinned { target: String },
    #[error("target {target} refused the bastion's credential; this is a target problem")]
    AuthRejected { target: String },
    #[error("the bastion cannot load its credential for {target}: {why}")]
    Credential { target: String, why: String },
}

/// Verifies the target's host key per its policy and remembers why it refused.
pub struct Verifier {
    access: Access,
    target: String,
    host: String,
    port: u16,
    policy: HostKeyPolicy,
    problem: Arc<Mutex<Option<UpstreamError>>>,
}

impl Verifier {
    fn refuse(&self, problem: UpstreamError) -> bool {
        if let Ok(mut slot) = self.problem.lock() {
            *slot = Some(problem);
        }
        false
    }

    async fn verify(&self, key: &PublicKey) -> bool {
        let mismatch = || UpstreamError::HostKeyMismatch {
            target: self.target.clone(),
        };
        match &self.policy {
            HostKeyPolicy::Pinned(pinned) => {
                pinned.key_data() == key.key_data() || self.refuse(mismatch())
            }
            HostKeyPolicy::KnownHostsFile(path) => {
                match russh::keys::check_known_hosts_path(&self.host, self.port, key, path) {
                    Ok(true) => true,
                    Ok(false) => self.refuse(UpstreamError::HostKeyUnpinned {
                        target: self.target.clone(),
                    }),
                    Err(_) => self.refuse(mismatch()),
                }
            }
            HostKeyPolicy::AcceptFirst => {
                let Ok(line) = key.to_openssh() else {
                    return self.refuse(mismatch());
                };
                let access = self.access.clone();
                let target = self.target.clone();
                let offered = key.clone();
                let checked = tokio::task::spawn_blocking(move || {
                    let now = access.now();
                    access.store().write(|tx| match tx.known_host(&target)? {
                        Some(known) => Ok(PublicKey::from_openssh(&known)
                            .is_ok_and(|known| known.key_data() == offered.key_data())),
                        None => {
                            tx.remember_host(&target, &line, now)?;
                            Ok(true)
                        }
                    })
                })
                .await;
                matches!(checked, Ok(Ok(true))) || self.refuse(mismatch())
            }
            HostKeyPolicy::Unpinned => self.refuse(UpstreamError::HostKeyUnpinned {
                target: self.target.clone(),
            }),
        }
    }
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => Ok(self.verify(key).await),
            // Host certificates are not part of any policy yet: refuse rather than guess.
            _ => Ok(self.refuse(UpstreamError::HostKeyUnpinned {
                target: self.target.clone(),
            })),
        }
    }
}

/// An authenticated connection to a target.
pub type Upstream = Handle<Verifier>;

/// Connects to `target` and logs in with its credential.
pub async fn connect(
    access: &Access,
    target_name: &str,
    target: &SshTarget,
    client_key: Arc<PrivateKey>,
) -> Result<Upstream, UpstreamError> {
    let unreachable = |why: String| UpstreamError::Unreachable {
        target: target_name.to_string(),
        why,
    };
    let (host, port) =
        split_address(&target.address).ok_or_else(|| unreachable("bad address".into()))?;
    let problem = Arc::new(Mutex::new(None));
    let verifier = Verifier {
        access: access.clone(),
        target: target_name.to_string(),
        host: host.clone(),
        port,
        policy: target.host_key.clone(),
        problem: problem.clone(),
    };
    // The bastion chooses the upstream cipher: AES-GCM runs on the CPU's AES instructions and
    // is the fastest of the safe ciphers here; the rest of russh's safe defaults follow.
    let preferred = russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(&[
            russh::cipher::AES_256_GCM,
            russh::cipher::AES_128_GCM,
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_256_CTR,
        ]),
        ..russh::Preferred::default()
    };
    let config = Arc::new(client::Config {
        preferred,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    });
    let connecting = client::connect(config, (host.as_str(), port), verifier);
    let deadline = access.config().limits.upstream_connect_timeout;
    let mut handle = match tokio::time::timeout(deadline, connecting).await {
        Ok(Ok(handle)) => handle,
        Ok(Err(error)) => {
            let recorded = problem.lock().ok().and_then(|mut slot| slot.take());
            return Err(recorded.unwrap_or_else(|| unreachable(error.to_string())));
        }
        Err(_) => return Err(unreachable("timed out".into())),
    };
    let login = target.login.clone();
    let authenticated = match &target.credential {
        SshCredential::ClientKey => publickey(&mut handle, &login, client_key).await,
        SshCredential::PrivateKeyFile(path) => {
            let key = russh::keys::load_secret_key(path, None).map_err(|error| {
                UpstreamError::Credential {
                    target: target_name.to_string(),
                    why: error.to_string(),
                }
            })?;
            publickey(&mut handle, &login, Arc::new(key)).await
        }
        SshCredential::Password(source) => {
            let password = source.read().map_err(|error| UpstreamError::Credential {
                target: target_name.to_string(),
                why: error.to_string(),
            })?;
            handle
                .authenticate_password(login, password.expose().as_str())
                .await
        }
    };
    match authenticated {
        Ok(AuthResult::Success) => Ok(handle),
        Ok(AuthResult::Failure { .. }) => Err(UpstreamError::AuthRejected {
            target: target_name.to_string(),
        }),
        Err(error) => Err(unreachable(error.to_string())),
    }
}

async fn publickey(
    handle: &mut Upstream,
    login: &str,
    key: Arc<PrivateKey>,
) -> Result<AuthResult, russh::Error> {
    let hash = handle.best_supported_rsa_hash().await?.flatten();
    handle
        .authenticate_publickey(login, PrivateKeyWithHashAlg::new(key, hash))
        .await
}

/// `host:port` or `[v6]:port` into its parts.
fn split_address(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}
