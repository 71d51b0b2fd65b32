//! Dashboard tokens: a JWT names the tenant and, optionally, the users its holder may see —
//! listed (`users`), or as groups the server resolves (`groups`, see [`crate::groups`]):
//!
//! ```json
//! { "tenant": "acme", "users": ["u-1", "u-2"], "exp": 1795000000, "sub": "dispatcher-7" }
//! { "tenant": "acme", "groups": ["north-depot"], "exp": 1795000000 }
//! { "tenant": "acme", "scope": "groups:write", "exp": 1795000000 }
//! ```
//!
//! A token with neither `users` nor `groups` sees every user of its tenant; with either, the
//! users listed plus the members of the groups named. `scope` (space-separated) grants
//! extra rights: `groups:write` manages the tenant's groups.
//!
//! Signed with HS256 (shared secret) or RS256 / ES256 (public keys from config).

use std::collections::HashSet;
use std::sync::Arc;

use locus_api::ApiError;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{PushConfig, PushError};

/// What a valid token grants.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub tenant: String,
    /// The users the holder may see (absent, and no `groups`: all of the tenant's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    /// Groups of the tenant whose members the holder may see (with `users`, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// Extra rights, space-separated (`groups:write`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
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
    /// Whether the token grants `scope` (one of the space-separated words of `scope`).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|w| w == scope))
    }
}

/// Most groups one token may name.
pub const MAX_TOKEN_GROUPS: usize = 64;

/// Which users of its tenant a token may see, groups resolved.
#[derive(Debug, Clone)]
pub enum Access {
    /// Every user of the tenant.
    All,
    /// The users listed in the token, and the members of its groups (as they were when the
    /// access was resolved).
    Some {
        users: HashSet<String>,
        groups: Vec<Arc<HashSet<String>>>,
    },
}

impl Access {
    pub fn is_all(&self) -> bool {
        matches!(self, Access::All)
    }

    pub fn allows(&self, user: &str) -> bool {
        match self {
            Access::All => true,
            Access::Some { users, groups } => {
                users.contains(user) || groups.iter().any(|g| g.contains(user))
            }
        }
    }

    /// At least as many as the users allowed (the sizes of the sets, added up; `None`: all).
    pub fn size_bound(&self) -> Option<usize> {
        match self {
            Access::All => None,
            Access::Some { users, groups } => {
                Some(users.len() + groups.iter().map(|g| g.len()).sum::<usize>())
            }
        }
    }

    /// Every user allowed, as one set (`None`: all of them).
    pub fn users(&self) -> Option<HashSet<String>> {
        match self {
            Access::All => None,
            Access::Some { users, groups } => {
                let mut all = users.clone();
                for g in groups {
                    all.extend(g.iter().cloned());
                }
                Some(all)
            }
        }
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
    /// Resolves the `groups` claim; without it, a token naming groups is refused.
    groups: Option<Arc<crate::groups::Groups>>,
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
            groups: None,
        })
    }

    /// Resolves the `groups` claim with `groups`.
    pub fn with_groups(mut self, groups: Arc<crate::groups::Groups>) -> Authenticator {
        self.groups = Some(groups);
        self
    }

    /// The groups directory, if this authenticator resolves groups.
    pub fn groups(&self) -> Option<&Arc<crate::groups::Groups>> {
        self.groups.as_ref()
    }

    /// Which users of its tenant `claims` may see. A token naming groups needs the groups
    /// loaded (503 until then); a group that does not exist adds nobody.
    pub fn access(&self, claims: &Claims) -> Result<Access, ApiError> {
        if claims.users.is_none() && claims.groups.is_none() {
            return Ok(Access::All);
        }
        let users: HashSet<String> = claims.users.iter().flatten().cloned().collect();
        let names = claims.groups.as_deref().unwrap_or_default();
        if names.is_empty() {
            return Ok(Access::Some {
                users,
                groups: vec![],
            });
        }
        if names.len() > MAX_TOKEN_GROUPS {
            return Err(ApiError::unauthorized(format!(
                "bad token: it names more than {MAX_TOKEN_GROUPS} groups"
            )));
        }
        let Some(dir) = &self.groups else {
            return Err(ApiError::forbidden(
                "this server does not resolve groups: name users in the token",
            ));
        };
        if !dir.is_loaded() {
            return Err(ApiError::unavailable(
                "the groups are still loading; retry",
                2,
            ));
        }
        // Each group once, however often the token names it.
        let names: HashSet<&String> = names.iter().collect();
        let groups = names
            .into_iter()
            .filter_map(|g| dir.members(&claims.tenant, g))
            .collect();
        Ok(Access::Some { users, groups })
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
            ..Claims::default()
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
    fn groups_resolve_to_their_members_with_the_listed_users() {
        let dir = crate::groups::Groups::new("groups");
        let a = auth().with_groups(dir.clone());
        let token = |users: Option<&[&str]>, groups: Option<&[&str]>| Claims {
            tenant: "acme".into(),
            users: users.map(|u| u.iter().map(|s| s.to_string()).collect()),
            groups: groups.map(|g| g.iter().map(|s| s.to_string()).collect()),
            exp: claims(60).exp,
            ..Claims::default()
        };
        assert!(a.access(&token(None, None)).unwrap().is_all());
        // Not loaded yet: 503, never a guess.
        let e = a.access(&token(None, Some(&["north"]))).unwrap_err();
        assert_eq!(e.status().as_u16(), 503);
        dir.apply(Some(b"acme/north"), Some(br#"{"users":["n1","n2"]}"#), 0, 0);
        dir.apply(Some(b"other/north"), Some(br#"{"users":["x1"]}"#), 0, 1);
        dir.apply(Some(b"acme/west"), Some(br#"{"users":["w1"]}"#), 0, 2);
        dir.set_loaded_for_test();
        let access = a
            .access(&token(Some(&["u1"]), Some(&["north", "nosuch"])))
            .unwrap();
        for (user, allowed) in [
            ("u1", true),
            ("n1", true),
            ("n2", true),
            ("x1", false),
            ("w1", false),
        ] {
            assert_eq!(access.allows(user), allowed, "{user}");
        }
        assert_eq!(access.users().unwrap().len(), 3);
        // Only unknown groups: nobody.
        let none = a.access(&token(None, Some(&["nosuch"]))).unwrap();
        assert!(!none.is_all() && !none.allows("n1"));
        // Too many groups; groups where nothing resolves them.
        let many: Vec<String> = (0..65).map(|i| format!("g{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            a.access(&token(None, Some(&many)))
                .unwrap_err()
                .status()
                .as_u16(),
            401
        );
        let e = auth().access(&token(None, Some(&["north"]))).unwrap_err();
        assert_eq!(e.status().as_u16(), 403);
    }

    #[test]
    fn scopes_are_whole_words() {
        let c = |s: &str| Claims {
            scope: Some(s.into()),
            ..Claims::default()
        };
        assert!(c("read groups:write").has_scope("groups:write"));
        assert!(!c("groups:writer").has_scope("groups:write"));
        assert!(!Claims::default().has_scope("groups:write"));
    }

    #[test]
    fn no_key_is_a_config_error() {
        let e = Authenticator::from_config(&PushConfig::default()).unwrap_err();
        assert!(e.to_string().contains("jwt_hs256_secret"));
    }
}
