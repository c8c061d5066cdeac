//! JWT auth tokens (`--auth-token jwt,pub-key=...,priv-key=...,sign-method=RS256,ttl=5m`), as
//! etcd's: claims `username`, `revision` (the auth revision at minting) and `exp`, signed with
//! the configured private key and checked with the public key, so a token minted by any member
//! is valid on every member that has the public key.
//!
//! Invariant: a token is accepted only with a valid signature under the configured algorithm
//! and an `exp` in the future; anything else is `invalid auth token`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::config::JwtOptions;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{AuthError, Caller};

/// Why the JWT settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// A key file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key or the sign method is not usable.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// Mints and checks JWT tokens.
pub struct Jwt {
    alg: Algorithm,
    sign: Option<EncodingKey>,
    verify: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("alg", &self.alg)
            .field("signs", &self.sign.is_some())
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, JwtError> {
    std::fs::read(path).map_err(|source| JwtError::Read {
        path: path.clone(),
        source,
    })
}

impl Jwt {
    /// Loads the keys named in `o`.
    pub fn load(o: &JwtOptions) -> Result<Jwt, JwtError> {
        let alg: Algorithm = o
            .sign_method
            .parse()
            .map_err(|_| JwtError::Invalid(format!("unknown sign-method {:?}", o.sign_method)))?;
        let bad = |what: &str, e: jsonwebtoken::errors::Error| {
            JwtError::Invalid(format!("{what} is not a {alg:?} PEM key: {e}"))
        };
        let public = read(&o.pub_key)?;
        let verify = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => DecodingKey::from_rsa_pem(&public),
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&public),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(&public),
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                return Err(JwtError::Invalid(
                    "HMAC sign methods are not supported; use an RSA or ECDSA key pair".into(),
                ))
            }
        }
        .map_err(|e| bad("pub-key", e))?;
        let sign = match &o.priv_key {
            None => None,
            Some(p) => {
                let private = read(p)?;
                Some(
                    match alg {
                        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&private),
                        Algorithm::EdDSA => EncodingKey::from_ed_pem(&private),
                        _ => EncodingKey::from_rsa_pem(&private),
                    }
                    .map_err(|e| bad("priv-key", e))?,
                )
            }
        };
        Ok(Jwt {
            alg,
            sign,
            verify,
            ttl: o.ttl,
        })
    }

    /// A token for `user` at auth revision `revision`, valid for the TTL.
    pub fn mint(&self, user: &str, revision: u64) -> Result<String, AuthError> {
        let key = self.sign.as_ref().ok_or(AuthError::InvalidToken)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: now + self.ttl.as_secs().max(1),
        };
        encode(&Header::new(self.alg), &claims, key).map_err(|e| {
            tracing::error!(error = %e, "signing an auth token");
            AuthError::InvalidToken
        })
    }

    /// The caller a token names, if its signature and expiry hold.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let mut v = Validation::new(self.alg);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp"]);
        let data =
            decode::<Claims>(token, &self.verify, &v).map_err(|_| AuthError::InvalidToken)?;
        Ok(Caller {
            user: data.claims.username,
            revision: data.claims.revision,
        })
    }
}
