//! The admission gate (issue #17): the one place the login sequence runs, for every front end.
//!
//! identity → source address allowed (`[access] ip_allow`, checked when the connection is
//! accepted, and the user's own `ip_allow`: both must allow) → not locked → the credential the
//! front end verified → login audited (fails closed). The front end checks the credential
//! itself (an SSH signature, a token's signature), because only it speaks the protocol, and
//! hands the gate the outcome; what follows (target, grant, session) is `Session::open`. Every
//! refusal is audited and counted here, and returned as a `LoginRefusal` the front end only
//! words for its protocol.
//!
//! **Architecture Invariant:** no front end audits a login or a failed login itself, or
//! decides a lockout; the two front ends cannot drift apart because neither holds the sequence.

use std::net::IpAddr;
use std::time::Duration;

use time::OffsetDateTime;

use crate::access::lockout::{ConnectionRefusal, Failure, Lock};
use crate::access::{Access, AccessError};
use crate::audit::AuditEvent;
use crate::session::Cause;

/// The front ends, as audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Ssh,
    Postgres,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Ssh => "ssh",
            Protocol::Postgres => "postgres",
        }
    }
}

/// What the front end found of the client's credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Verified (a key signature, a token's signature and claims).
    Valid,
    /// Missing or wrong, with why (audited, never shown as more than "refused").
    Invalid(&'static str),
}

/// Why a login was refused. Who caused it decides the wording: all but `Bastion` are the
/// client's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefusal {
    #[error("unknown user {0}")]
    UnknownUser(String),
    #[error("{user} may not log in from {address}")]
    AddressNotAllowed { user: String, address: String },
    #[error(
        "account {user} is locked at {address} until {} after too many failed logins; \
         try again then, or ask an operator to run: portcullis unlock {user}",
        crate::clock::rfc3339(*until)
    )]
    LockedAtSource {
        user: String,
        address: String,
        until: OffsetDateTime,
    },
    #[error(
        "account {user} is locked by an operator; ask an operator to run: portcullis unlock {user}"
    )]
    LockedEverywhere { user: String },
    #[error("invalid credential: {0}")]
    BadProof(&'static str),
    #[error("the bastion cannot check or record this login, so it is refused")]
    Bastion,
}

impl LoginRefusal {
    /// Who caused it: the client, but for a bastion that cannot check or record the login.
    pub fn cause(&self) -> Cause {
        match self {
            LoginRefusal::Bastion => Cause::Bastion,
            _ => Cause::Client,
        }
    }
}

/// A refusal and how long the front end waits before answering it (repeated failures from one
/// address are answered later and later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub refusal: LoginRefusal,
    pub delay: Duration,
}

/// Runs the sequence for a login of `user` from `source` with `proof`; `target` is what the
/// login names, if anything (audited with it). Call on a blocking thread: it writes the store.
pub fn login(
    access: &Access,
    user: &str,
    source: IpAddr,
    protocol: Protocol,
    proof: Proof,
    target: Option<&str>,
) -> Result<(), Refused> {
    let address = source.to_string();
    // Failures and locks are counted per IPv4 address and per IPv6 /64, the block one client
    // holds: rotating addresses inside it must not reset the count (issue #17 review).
    let counted_as = source_key(source);
    let refuse = |refusal: LoginRefusal, failure: Failure| -> Refused {
        let why = refusal.to_string();
        // Without a valid credential the client learns no more than that (issue #17 review:
        // an address or lock refusal told a stranger the name was a user's).
        let refusal = match proof {
            Proof::Invalid(why) => LoginRefusal::BadProof(why),
            Proof::Valid => refusal,
        };
        match access.login_failed(user, &counted_as, protocol.as_str(), &why, failure) {
            Ok(delay) => Refused { refusal, delay },
            Err(error) => {
                tracing::error!(%error, "cannot audit a failed login");
                Refused {
                    refusal,
                    delay: Duration::ZERO,
                }
            }
        }
    };
    let config = access.config();
    let Some(configured) = config.user(user) else {
        return Err(refuse(
            LoginRefusal::UnknownUser(user.to_string()),
            Failure::Other,
        ));
    };
    if !config.access.source_allowed(source) || !configured.source_allowed(source) {
        return Err(refuse(
            LoginRefusal::AddressNotAllowed {
                user: user.to_string(),
                address: address.clone(),
            },
            Failure::Other,
        ));
    }
    match access.lock_of(user, &counted_as) {
        Ok(None) => {}
        Ok(Some(Lock::AtSource { until })) => {
            return Err(refuse(
                LoginRefusal::LockedAtSource {
                    user: user.to_string(),
                    address: counted_as.clone(),
                    until,
                },
                Failure::Other,
            ));
        }
        Ok(Some(Lock::Everywhere { .. })) => {
            return Err(refuse(
                LoginRefusal::LockedEverywhere {
                    user: user.to_string(),
                },
                Failure::Other,
            ));
        }
        Err(error) => return Err(bastion(error)),
    }
    if let Proof::Invalid(why) = proof {
        return Err(refuse(LoginRefusal::BadProof(why), Failure::Credential));
    }
    // Fail closed: a login that cannot be audited does not happen.
    access
        .record_login(user, &address, protocol.as_str(), target)
        .map_err(bastion)
}

/// Whether a connection from `source` may be served at all (`[access] ip_allow`), checked when
/// it is accepted, before anything is read; a refused one is audited off the runtime, folded
/// per address and minute. Call from async code.
pub fn accepted(access: &Access, source: IpAddr, protocol: Protocol) -> bool {
    if access.config().access.source_allowed(source) {
        return true;
    }
    let (access, source) = (access.clone(), source.to_string());
    tokio::task::spawn_blocking(move || {
        let refused = access.connection_refused(
            &source_key_text(&source),
            protocol.as_str(),
            ConnectionRefusal::AddressNotAllowed,
        );
        if refused.is_err() {
            tracing::error!("cannot audit a refused connection");
        }
    });
    false
}

/// Audits a target session refused after the login (no grant, an unreachable target, a refused
/// startup parameter).
pub async fn session_refused(access: &Access, user: &str, target: &str, source: &str, why: &str) {
    let refusal = Refusal::Session {
        user: user.to_string(),
        target: target.to_string(),
        source: source.to_string(),
        why: why.to_string(),
    };
    refused(access, refusal).await;
}

/// A refusal after the login, which the core audits: the front ends only say which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A target session refused (no grant, unreachable target, a refused startup parameter).
    Session {
        user: String,
        target: String,
        source: String,
        why: String,
    },
    /// A port forward refused.
    Forward {
        user: String,
        target: String,
        destination: String,
        why: String,
    },
    /// An HTTP request to an approval endpoint that failed verification.
    Webhook { path: String, why: String },
}

/// Audits a refusal off the runtime. `false` when it could not be written (the refusal stands).
pub async fn refused(access: &Access, refusal: Refusal) -> bool {
    let event = match refusal {
        Refusal::Session {
            user,
            target,
            source,
            why,
        } => AuditEvent::SessionRefused {
            user,
            target,
            source,
            why,
        },
        Refusal::Forward {
            user,
            target,
            destination,
            why,
        } => AuditEvent::PortForwardRefused {
            user,
            target,
            destination,
            why,
        },
        Refusal::Webhook { path, why } => AuditEvent::WebhookRejected { path, why },
    };
    let access = access.clone();
    let recorded = tokio::task::spawn_blocking(move || access.record(&event)).await;
    let written = matches!(recorded, Ok(Ok(())));
    if !written {
        tracing::error!("cannot audit a refusal");
    }
    written
}

/// What failures from `source` are counted under: an IPv4 address (an IPv4 client on a
/// dual-stack socket included), or the /64 an IPv6 address is in.
pub fn source_key(source: IpAddr) -> String {
    match source {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let segments = v6.segments();
                let prefix = std::net::Ipv6Addr::new(
                    segments[0],
                    segments[1],
                    segments[2],
                    segments[3],
                    0,
                    0,
                    0,
                    0,
                );
                format!("{prefix}/64")
            }
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// `source_key` of an address as text (left as it is when it is not an address).
fn source_key_text(source: &str) -> String {
    source
        .parse::<IpAddr>()
        .map_or_else(|_| source.to_string(), source_key)
}

fn bastion(error: AccessError) -> Refused {
    tracing::error!(%error, "cannot check or audit a login; refusing it");
    Refused {
        refusal: LoginRefusal::Bastion,
        delay: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_per_ipv4_address_and_per_ipv6_64() {
        for (address, key) in [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
            ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
            ("::1", "::/64"),
        ] {
            let parsed: IpAddr = address.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            assert_eq!(source_key(parsed), key, "{address}");
        }
    }
}
