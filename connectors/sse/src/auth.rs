//! Dashboard tokens: a JWT names the tenant and, optionally, the users its holder may see.
//!
//! ```json
//! { "tenant": "acme", "users": ["u-1", "u-2"], "exp": 1795000000, "sub": "dispatcher-7" }
//! ```
//!
//! Signed with HS256 (shared secret) or RS256 / ES256 (public keys from config).

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{PushConfig, PushError};

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub tenant: String,
    /// The users the holder may see (absent: all of the tenant's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    /// Expiry, s since the epoch (required).
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    pub fn allowed_users(&self) -> Option<HashSet<&str>> {
        self.users
            .as_ref()
            .map(|u| u.iter().map(String::as_str).collect())
    }
}

/// The latest expiry a token may name (the end of the year 9999, s since the epoch): any
/// later one is refused, so no deadline computed from it can overflow.
const MAX_EXP: u64 = 253_402_300_799;

/// Checks tokens against the configured keys.
pub struct Authenticator {
    keys: Vec<(Algorithm, DecodingKey)>,
    issuer: String,
    audience: String,
    leeway_s: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<Algorithm> = self.keys.iter().map(|(a, _)| *a).collect();
        f.debug_struct("Authenticator")
            .field("algorithms", &algs)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn from_config(cfg: &PushConfig) -> Result<Authenticator, PushError> {
        let mut keys = vec![];
        if !cfg.jwt_hs256_secret.is_empty() {
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(cfg.jwt_hs256_secret.expose().as_bytes()),
            ));
        }
        for path in &cfg.jwt_public_key_files {
            let pem = std::fs::read(path).map_err(|e| {
                PushError::Config(format!(
                    "push.jwt_public_key_files: cannot read {path}: {e}"
                ))
            })?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                keys.push((Algorithm::RS256, k));
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                keys.push((Algorithm::ES256, k));
            } else {
                return Err(PushError::Config(format!(
                    "push.jwt_public_key_files: {path} is neither an RSA nor an EC P-256 public \
                     key in PEM"
                )));
            }
        }
        if keys.is_empty() {
            return Err(PushError::Config(
                "set push.jwt_hs256_secret or push.jwt_public_key_files: the push stage needs a \
                 key to check dashboard tokens"
                    .into(),
            ));
        }
        Ok(Authenticator {
            keys,
            issuer: cfg.jwt_issuer.clone(),
            audience: cfg.jwt_audience.clone(),
            leeway_s: cfg.jwt_leeway_s,
        })
    }

    /// The claims of a valid token, or why it is not valid (safe to show the client).
    pub fn check(&self, token: &str) -> Result<Claims, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("bad token: {e}"))?;
        let mut last = format!("tokens signed with {:?} are not accepted", header.alg);
        for (alg, key) in self.keys.iter().filter(|(a, _)| *a == header.alg) {
            let mut v = Validation::new(*alg);
            v.leeway = self.leeway_s;
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp"]);
            if !self.issuer.is_empty() {
                v.set_issuer(&[&self.issuer]);
                v.required_spec_claims.insert("iss".into());
            }
            if self.audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&[&self.audience]);
                v.required_spec_claims.insert("aud".into());
            }
            match jsonwebtoken::decode::<Claims>(token, key, &v) {
                Ok(data) => {
                    let c = data.claims;
                    if c.tenant.is_empty() {
                        return Err("bad token: empty tenant claim".into());
                    }
                    if c.exp > MAX_EXP {
                        return Err("bad token: exp is past the year 9999".into());
                    }
                    return Ok(c);
                }
                Err(e) => last = format!("bad token: {e}"),
            }
        }
        Err(last)
    }
}

/// Signs an HS256 token (for `locus push token`, the demo and tests).
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, PushError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| PushError::Config(format!("cannot sign token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_schemas::Secret;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth() -> Authenticator {
        let cfg = PushConfig {
            jwt_hs256_secret: Secret::new(SECRET),
            ..PushConfig::default()
        };
        Authenticator::from_config(&cfg).expect("hs256 config")
    }

    fn claims(exp_in: i64) -> Claims {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Claims {
            tenant: "acme".into(),
            users: Some(vec!["u1".into()]),
            exp: (now + exp_in) as u64,
            sub: None,
            iss: None,
            aud: None,
        }
    }

    #[test]
    fn accepts_a_valid_token_and_reads_its_scope() {
        let t = mint_hs256(SECRET, &claims(60)).expect("sign");
        let c = auth().check(&t).expect("valid");
        assert_eq!(c.tenant, "acme");
        assert_eq!(c.users.as_deref(), Some(&["u1".to_string()][..]));
    }

    #[test]
    fn absurd_expiry_missing_issuer_and_future_nbf_are_refused() {
        let a = auth();
        let mut c = claims(60);
        c.exp = u64::MAX / 2;
        let t = mint_hs256(SECRET, &c).expect("sign");
        assert!(a.check(&t).unwrap_err().contains("exp"), "huge exp");

        let cfg = PushConfig {
            jwt_hs256_secret: Secret::new(SECRET),
            jwt_issuer: "https://id.example".into(),
            ..PushConfig::default()
        };
        let with_iss = Authenticator::from_config(&cfg).expect("config");
        let no_iss = mint_hs256(SECRET, &claims(60)).expect("sign");
        assert!(
            with_iss.check(&no_iss).is_err(),
            "iss is required when configured"
        );
        let mut c = claims(60);
        c.iss = Some("https://id.example".into());
        assert!(
            with_iss
                .check(&mint_hs256(SECRET, &c).expect("sign"))
                .is_ok()
        );

        #[derive(Serialize)]
        struct WithNbf {
            tenant: String,
            exp: u64,
            nbf: u64,
        }
        let now = claims(0).exp;
        let early = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &WithNbf {
                tenant: "acme".into(),
                exp: now + 7200,
                nbf: now + 3600,
            },
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign");
        assert!(a.check(&early).unwrap_err().contains("ImmatureSignature"));
    }

    #[test]
    fn rejects_expired_forged_and_garbage_tokens() {
        let a = auth();
        let expired = mint_hs256(SECRET, &claims(-3600)).expect("sign");
        assert!(a.check(&expired).unwrap_err().contains("Expired"));
        let forged = mint_hs256("another-secret-another-secret-xx", &claims(60)).expect("sign");
        assert!(a.check(&forged).unwrap_err().contains("InvalidSignature"));
        assert!(a.check("not.a.token").is_err());
        assert!(a.check("").is_err());
    }

    fn keys(name: &str) -> (String, Vec<u8>) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
        let public = format!("{dir}/{name}.pub.pem");
        let private = std::fs::read(format!("{dir}/{name}.key.pem")).expect("test key");
        (public, private)
    }

    #[test]
    fn accepts_rs256_and_es256_tokens_from_configured_public_keys() {
        let (rsa_pub, rsa_key) = keys("rs256");
        let (ec_pub, ec_key) = keys("es256");
        let cfg = PushConfig {
            jwt_public_key_files: vec![rsa_pub, ec_pub],
            ..PushConfig::default()
        };
        let a = Authenticator::from_config(&cfg).expect("public keys");
        let rs = jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &claims(60),
            &EncodingKey::from_rsa_pem(&rsa_key).expect("rsa key"),
        )
        .expect("sign rs256");
        let es = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims(60),
            &EncodingKey::from_ec_pem(&ec_key).expect("ec key"),
        )
        .expect("sign es256");
        assert_eq!(a.check(&rs).expect("rs256").tenant, "acme");
        assert_eq!(a.check(&es).expect("es256").tenant, "acme");
        // HS256 is not configured here: an HS256 token is refused, whatever its secret.
        let hs = mint_hs256(SECRET, &claims(60)).expect("sign");
        assert!(a.check(&hs).unwrap_err().contains("HS256"));
    }

    #[test]
    fn a_file_that_is_not_a_public_key_is_a_config_error() {
        let cfg = PushConfig {
            jwt_public_key_files: vec![concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").into()],
            ..PushConfig::default()
        };
        let e = Authenticator::from_config(&cfg).unwrap_err();
        assert!(e.to_string().contains("neither an RSA nor an EC"), "{e}");
    }

    #[test]
    fn no_key_is_a_config_error() {
        let e = Authenticator::from_config(&PushConfig::default()).unwrap_err();
        assert!(e.to_string().contains("jwt_hs256_secret"));
    }
}
