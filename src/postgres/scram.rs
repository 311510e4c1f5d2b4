//! The SCRAM-SHA-256 client of the upstream login (RFC 5802, RFC 7677), sans-IO.
//!
//! Written here rather than taken from postgres-protocol for one measured reason (issue #18,
//! `bench/postgres.sh` `-C`): the salted password, PBKDF2 with the server's iteration count
//! (4096 by default), was the largest cost of a new connection, and postgres-protocol's client
//! recomputes it every time. A role's salt and iteration count stay the same until its password
//! changes, so the salted password is kept per (password, salt, iterations) in a small process
//! cache: a new connection pays a few HMACs instead of 4096 rounds. The cache holds what the
//! bastion could compute again from the password it already holds, and nothing of it leaves
//! the process. Channel binding is not used (`n,,`), as before.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// A server may not ask for more rounds than this (a hostile target could pin a CPU).
const MAX_ITERATIONS: u32 = 100_000;
/// Salted passwords kept; the cache starts over when full.
const CACHE_ENTRIES: usize = 256;
/// The GS2 header without channel binding, and its base64 (`c=`).
const GS2_HEADER: &str = "n,,";
const GS2_HEADER_BASE64: &str = "biws";

/// Why the exchange failed: what the server sent did not parse or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("the database's SCRAM message is malformed: {0}")]
    Malformed(&'static str),
    #[error("the database's SCRAM nonce does not extend ours")]
    Nonce,
    #[error("the database asks for {0} SCRAM iterations (at most {MAX_ITERATIONS})")]
    Iterations(u32),
    #[error("the database refused SCRAM: {0}")]
    ServerError(String),
    #[error("the database failed SCRAM (its signature does not verify)")]
    Signature,
    #[error("SCRAM messages out of order")]
    Order,
}

/// One client exchange: `first` → `continue_with(server-first)` → `finish(server-final)`.
pub struct ScramClient {
    password: Vec<u8>,
    nonce: String,
    state: State,
    /// The server's signature verified: only then may the login succeed.
    verified: bool,
}

enum State {
    Started,
    /// The client-final message was sent; the server's signature is expected.
    Sent {
        salted: [u8; 32],
        auth_message: String,
    },
    Done,
}

impl ScramClient {
    pub fn new(password: &str) -> ScramClient {
        // As libpq: SASLprep the password, or use its bytes as they are if it does not prepare.
        let password = match stringprep::saslprep(password) {
            Ok(prepared) => prepared.into_owned().into_bytes(),
            Err(_) => password.as_bytes().to_vec(),
        };
        let nonce = STANDARD.encode(rand::random::<[u8; 18]>());
        ScramClient {
            password,
            nonce,
            state: State::Started,
            verified: false,
        }
    }

    /// The client-first message.
    pub fn first(&self) -> Vec<u8> {
        format!("{GS2_HEADER}n=,r={}", self.nonce).into_bytes()
    }

    /// Takes the server-first message and returns the client-final message.
    pub fn continue_with(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::Started) {
            return Err(ScramError::Order);
        }
        let text =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut fields = text.split(',');
        let nonce = attribute(fields.next(), 'r')?;
        let salt = attribute(fields.next(), 's')?;
        let iterations = attribute(fields.next(), 'i')?;
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| ScramError::Malformed("iteration count is not a number"))?;
        if iterations == 0 {
            return Err(ScramError::Malformed("iteration count is zero"));
        }
        if iterations > MAX_ITERATIONS {
            return Err(ScramError::Iterations(iterations));
        }
        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c={GS2_HEADER_BASE64},r={nonce}");
        let auth_message = format!("n=,r={},{text},{without_proof}", self.nonce);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        for (byte, mask) in proof.iter_mut().zip(signature) {
            *byte ^= mask;
        }
        self.state = State::Sent {
            salted,
            auth_message,
        };
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Checks the server-final message: the server proves it knew the password too.
    pub fn finish(&mut self, server_final: &[u8]) -> Result<(), ScramError> {
        let State::Sent {
            salted,
            auth_message,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::Order);
        };
        let text =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(ScramError::ServerError(crate::text::visible(error)));
        }
        let verifier = attribute(text.split(',').next(), 'v')?;
        let verifier = STANDARD
            .decode(verifier)
            .map_err(|_| ScramError::Malformed("verifier is not base64"))?;
        let server_key = hmac(&salted, b"Server Key");
        let mut mac = Hmac::<Sha256>::new_from_slice(&server_key)
            .map_err(|_| ScramError::Malformed("key"))?;
        mac.update(auth_message.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&verifier)
            .map_err(|_| ScramError::Signature)?;
        self.verified = true;
        Ok(())
    }

    /// Whether the server proved it knows the password.
    pub fn verified(&self) -> bool {
        self.verified
    }
}

/// The value of `name=value`, which must be the attribute `name`.
fn attribute(field: Option<&str>, name: char) -> Result<&str, ScramError> {
    let field = field.ok_or(ScramError::Malformed("an attribute is missing"))?;
    let mut chars = field.chars();
    if chars.next() != Some(name) || chars.next() != Some('=') {
        return Err(ScramError::Malformed("unexpected attribute"));
    }
    Ok(&field[2..])
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail; an empty MAC would only fail to verify.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one 32-byte block, SCRAM's `Hi`: the keyed HMAC state is cloned
/// for each round, so a round costs two compressions.
fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let Ok(keyed) = Hmac::<Sha256>::new_from_slice(password) else {
        return [0; 32];
    };
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut round: [u8; 32] = mac.finalize().into_bytes().into();
    let mut result = round;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&round);
        round = mac.finalize().into_bytes().into();
        for (byte, next) in result.iter_mut().zip(round) {
            *byte ^= next;
        }
    }
    result
}

/// The salted password (SCRAM's `Hi`), from the cache when it was computed for
/// the same password, salt and iteration count.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], [u8; 32]>>> = OnceLock::new();
    let mut key = Sha256::new();
    key.update((password.len() as u64).to_be_bytes());
    key.update(password);
    key.update(salt);
    key.update(iterations.to_be_bytes());
    let key: [u8; 32] = key.finalize().into();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Ok(cache) = cache.lock()
        && let Some(salted) = cache.get(&key)
    {
        return *salted;
    }
    let salted = pbkdf2(password, salt, iterations);
    if let Ok(mut cache) = cache.lock() {
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, salted);
    }
    salted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example exchange (user "user", password "pencil"), with its nonce.
    #[test]
    fn the_rfc_7677_exchange_verifies() {
        let mut client = ScramClient::new("pencil");
        client.nonce = "rOprNGfwEbeRWgbNEkqO".to_string();
        assert_eq!(client.first(), b"n,,n=,r=rOprNGfwEbeRWgbNEkqO");
        // The RFC's client-first carries n=user; PostgreSQL sends n= (the user is in the
        // startup message), so the proof differs from the RFC's but the server's check is the
        // same computation: verify against a server built from the RFC's salt and count.
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = client.continue_with(server_first.as_bytes()).unwrap();
        let client_final = String::from_utf8(client_final).unwrap();
        let (without_proof, proof) = client_final.split_once(",p=").unwrap();
        assert_eq!(
            without_proof,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        );
        // The server side: StoredKey from the password, then check the proof.
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = pbkdf2(b"pencil", &salt, 4096);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let auth_message = format!("n=,r=rOprNGfwEbeRWgbNEkqO,{server_first},{without_proof}");
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof = STANDARD.decode(proof).unwrap();
        let recovered: Vec<u8> = proof.iter().zip(signature).map(|(a, b)| a ^ b).collect();
        assert_eq!(Sha256::digest(&recovered).as_slice(), stored_key);
        let server_signature = hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes());
        let server_final = format!("v={}", STANDARD.encode(server_signature));
        client.finish(server_final.as_bytes()).unwrap();
    }

    #[test]
    fn hostile_server_messages_are_refused() {
        let cases: &[(&str, ScramError)] = &[
            ("r=someoneelse,s=AAAA,i=4096", ScramError::Nonce),
            (
                "s=AAAA,r=NONCEx,i=4096",
                ScramError::Malformed("unexpected attribute"),
            ),
            (
                "r=NONCEx,s=AAAA",
                ScramError::Malformed("an attribute is missing"),
            ),
            (
                "r=NONCEx,s=!!,i=4096",
                ScramError::Malformed("salt is not base64"),
            ),
            (
                "r=NONCEx,s=AAAA,i=0",
                ScramError::Malformed("iteration count is zero"),
            ),
            (
                "r=NONCEx,s=AAAA,i=4000000000",
                ScramError::Iterations(4_000_000_000),
            ),
            ("r=NONCE,s=AAAA,i=4096", ScramError::Nonce),
        ];
        for (message, expected) in cases {
            let mut client = ScramClient::new("secret");
            client.nonce = "NONCE".to_string();
            assert_eq!(
                client.continue_with(message.as_bytes()).as_ref(),
                Err(expected),
                "{message}"
            );
        }
        let mut client = ScramClient::new("secret");
        client.nonce = "NONCE".to_string();
        client
            .continue_with(b"r=NONCEx,s=AAAA,i=16")
            .expect("accepted");
        assert_eq!(
            client.finish(b"v=AAAA"),
            Err(ScramError::Signature),
            "a server that does not know the password"
        );
        assert_eq!(client.finish(b"v=AAAA"), Err(ScramError::Order));
    }

    /// RFC 7914 section 11 (PBKDF2-HMAC-SHA256 test vectors), first 32 bytes.
    #[test]
    fn pbkdf2_matches_the_published_vectors() {
        assert_eq!(
            hex::encode(pbkdf2(b"passwd", b"salt", 1)),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
        assert_eq!(
            hex::encode(pbkdf2(b"Password", b"NaCl", 80000)),
            "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"
        );
    }

    #[test]
    fn the_salted_password_is_computed_once_per_salt() {
        let first = salted_password(b"pw", b"salt-one", 4096);
        assert_eq!(salted_password(b"pw", b"salt-one", 4096), first);
        assert_ne!(salted_password(b"pw", b"salt-two", 4096), first);
        assert_ne!(salted_password(b"pw", b"salt-one", 4097), first);
        assert_ne!(salted_password(b"other", b"salt-one", 4096), first);
    }
}
