//! Access tokens for the PostgreSQL front end (issue #4): JWTs that stand in for a password.
//!
//! `ssh alice@bastion token prod-db` issues one for the caller's active grant on the target:
//! subject = user, `target`, `grant`, audience `portcullis-postgres`, `iat`, `exp` = the grant's
//! end, and a unique `jti`. They are HS256-signed with a 256-bit key generated on first start in
//! the state dir. Verification pins the algorithm (no `none`, no switching to another), checks
//! the signature, audience and expiry against the bastion's clock; whether the grant is still
//! active is the caller's check against the store, so a revoked grant's token is dead at once.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::access::model::Grant;
use crate::keys::{KeyError, write_new_file};

pub const AUDIENCE: &str = "portcullis-postgres";
pub const TOKEN_KEY_FILE: &str = "token_hs256.key";

/// The claims of a token, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub target: String,
    pub grant: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is not valid")]
    Invalid,
    #[error("the token has expired")]
    Expired,
}

/// Signs and verifies tokens with the bastion's key.
#[derive(Clone)]
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TokenKey(<secret>)")
    }
}

impl TokenKey {
    pub fn from_secret(secret: &[u8]) -> TokenKey {
        TokenKey {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// Loads the key in `state_dir`, creating it (0600) on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<TokenKey, KeyError> {
        let path = state_dir.join(TOKEN_KEY_FILE);
        loop {
            match std::fs::read(&path) {
                Ok(bytes) if bytes.len() == 64 => {
                    let secret = hex::decode(&bytes).map_err(|error| KeyError::Parse {
                        path: path.clone(),
                        message: error.to_string(),
                    })?;
                    return Ok(TokenKey::from_secret(&secret));
                }
                Ok(_) => {
                    return Err(KeyError::Parse {
                        path,
                        message: "expected 64 hex digits".to_string(),
                    });
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    let mut secret = [0u8; 32];
                    rand::rngs::OsRng.fill_bytes(&mut secret);
                    write_new_file(&path, hex::encode(secret).as_bytes())?;
                    secret.fill(0);
                }
                Err(source) => return Err(KeyError::Read { path, source }),
            }
        }
    }

    /// A token for `grant`, valid until the grant's end.
    pub fn issue(&self, grant: &Grant, now: OffsetDateTime) -> Result<String, TokenError> {
        self.issue_with_id(grant, now).map(|(token, _)| token)
    }

    /// A token and its `jti`, the id its issue is audited under (issue #17).
    pub fn issue_with_id(
        &self,
        grant: &Grant,
        now: OffsetDateTime,
    ) -> Result<(String, String), TokenError> {
        let mut jti = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut jti);
        let claims = Claims {
            sub: grant.user.clone(),
            target: grant.target.clone(),
            grant: grant.id.clone(),
            aud: AUDIENCE.to_string(),
            iat: now.unix_timestamp(),
            exp: grant.ends_at.unix_timestamp(),
            jti: hex::encode(jti),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)?;
        Ok((token, claims.jti))
    }

    /// The claims of a well-signed HS256 token for our audience that has not expired at `now`.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Claims, TokenError> {
        let claims = self.verify_signature(token)?;
        if claims.exp <= now.unix_timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// The claims of a well-signed HS256 token for our audience, expired or not: an expired
    /// token still proves who its holder is (issue #17: a login whose grant ended is refused
    /// for the grant, like an SSH key without one, and does not count towards a lockout).
    pub fn verify_signature(&self, token: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        // Expiry is the caller's to check, against the bastion's clock (tests move it).
        validation.validate_exp = false;
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| TokenError::Invalid)?;
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::model::GrantState;
    use time::macros::datetime;

    fn grant() -> Grant {
        Grant {
            id: "g-2345".into(),
            request_id: "r-2345".into(),
            user: "alice".into(),
            target: "prod-db".into(),
            state: GrantState::Active,
            starts_at: datetime!(2026-11-23 10:00 UTC),
            ends_at: datetime!(2026-11-23 11:00 UTC),
            ended_at: None,
            revoked_by: None,
            revoke_reason: None,
        }
    }

    #[test]
    fn tokens_verify_until_the_grant_ends_and_only_with_our_key_and_algorithm() {
        let key = TokenKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let now = datetime!(2026-11-23 10:30 UTC);
        let token = key.issue(&grant(), now).unwrap_or_default();
        let claims = key.verify(&token, now);
        assert_eq!(
            claims.as_ref().map(|claims| claims.grant.as_str()),
            Ok("g-2345")
        );
        assert_eq!(
            key.verify(&token, datetime!(2026-11-23 11:00 UTC)),
            Err(TokenError::Expired)
        );
        let other = TokenKey::from_secret(b"another key, another key, another");
        assert_eq!(other.verify(&token, now), Err(TokenError::Invalid));
        // alg=none with the same claims.
        let parts: Vec<&str> = token.split('.').collect();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
        assert_eq!(key.verify(&none, now), Err(TokenError::Invalid));
        // HS512 signed with the same key is an algorithm switch.
        let switched = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &key.verify(&token, now).ok(),
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap_or_default();
        assert_eq!(key.verify(&switched, now), Err(TokenError::Invalid));
        assert_eq!(key.verify("garbage", now), Err(TokenError::Invalid));
    }
}
