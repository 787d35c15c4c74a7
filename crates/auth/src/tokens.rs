//! Issuing tokens: signed access tokens and opaque refresh tokens.
//!
//! An access token is a JWT (RFC 9068 profile, `typ: at+jwt`) signed with
//! the current key of the [`KeySet`]; any service verifies it offline with
//! the published JWKS. It cannot be revoked, so it lives for minutes.
//!
//! A refresh token is the opposite: 32 random bytes that mean nothing by
//! themselves, checked against this service's database on every use, so it
//! can be rotated and revoked. Only its SHA-256 is stored: a leaked table
//! hands out no usable tokens. (A plain hash suffices, unlike for passwords,
//! because the token has 256 bits of entropy; there is nothing to guess.)

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{Algorithm, Header};
use rand::Rng as _;
use sha2::{Digest, Sha256};
use signalbox_platform::tokens::{now_secs, AccessClaims};
use uuid::Uuid;

use crate::{config::TokenSettings, keys::KeySet, scope::Scopes};

/// The JWT `typ` of an access token (RFC 9068 §2.1), so an access token
/// cannot be passed off as some other kind of JWT signed by the same key;
/// verifiers refuse any other `typ`.
pub const ACCESS_TOKEN_TYPE: &str = signalbox_platform::tokens::ACCESS_TOKEN_TYPE;
/// Random bytes in a refresh token.
pub const REFRESH_TOKEN_BYTES: usize = 32;

/// A freshly signed access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Its `scope` claim.
    pub scope: String,
}

/// Signs access tokens with the current key.
#[derive(Debug)]
pub struct TokenIssuer {
    keys: KeySet,
    issuer: String,
    audience: String,
    access_ttl_secs: u64,
}

impl TokenIssuer {
    pub fn new(keys: KeySet, settings: &TokenSettings) -> Self {
        Self {
            keys,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            access_ttl_secs: settings.access_ttl_secs,
        }
    }

    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    pub fn access_ttl_secs(&self) -> u64 {
        self.access_ttl_secs
    }

    /// Signs a token for `subject` (a user id, or a service account's client
    /// id, then also given as `client_id`) granting `scopes`.
    pub fn issue(
        &self,
        subject: &str,
        scopes: &Scopes,
        client_id: Option<&str>,
    ) -> Result<AccessToken, jsonwebtoken::errors::Error> {
        let key = self.keys.current();
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
        header.kid = Some(key.kid().to_owned());

        let iat = now_secs();
        let claims = AccessClaims {
            sub: subject.to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: iat + self.access_ttl_secs,
            iat,
            jti: Uuid::new_v4().to_string(),
            scope: scopes.to_string(),
            client_id: client_id.map(str::to_owned),
        };
        let token = jsonwebtoken::encode(&header, &claims, key.encoding_key())?;
        Ok(AccessToken {
            token,
            expires_in: self.access_ttl_secs,
            scope: claims.scope,
        })
    }
}

/// A new refresh token: what the client gets and what the database keeps.
pub struct NewRefreshToken {
    pub token: String,
    pub hash: Vec<u8>,
}

impl NewRefreshToken {
    pub fn generate() -> Self {
        let mut bytes = [0u8; REFRESH_TOKEN_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let hash = refresh_token_hash(&token);
        Self { token, hash }
    }
}

/// The stored form of a refresh token.
pub fn refresh_token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};

    use super::*;
    use crate::keys::SigningKey;

    #[test]
    fn an_access_token_carries_the_expected_header_and_claims() {
        let issuer = TokenIssuer::new(
            KeySet::new(SigningKey::generate(None).unwrap()),
            &TokenSettings::default(),
        );
        let user_id = Uuid::now_v7();
        let scopes = Scopes::parse("orders:read orders:write").unwrap();
        let issued = issuer.issue(&user_id.to_string(), &scopes, None).unwrap();

        let header = decode_header(&issued.token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some(issuer.keys().current().kid()));

        let key = DecodingKey::from_ed_components(issuer.keys().current().public().x()).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["signalbox"]);
        validation.set_issuer(&["signalbox-auth"]);
        let claims = decode::<AccessClaims>(&issued.token, &key, &validation)
            .unwrap()
            .claims;
        assert_eq!(claims.sub, user_id.to_string());
        assert_eq!(claims.scope, "orders:read orders:write");
        assert_eq!(claims.client_id, None);
        assert_eq!(claims.exp - claims.iat, 300);
        assert_eq!(issued.expires_in, 300);
        assert_eq!(Uuid::parse_str(&claims.jti).unwrap().get_version_num(), 4);
    }

    #[test]
    fn a_refresh_token_is_32_random_bytes_and_stored_as_its_sha256() {
        let first = NewRefreshToken::generate();
        let second = NewRefreshToken::generate();

        assert_eq!(URL_SAFE_NO_PAD.decode(&first.token).unwrap().len(), 32);
        assert!(!first.token.contains('='));
        assert_ne!(first.token, second.token);
        assert_eq!(first.hash, refresh_token_hash(&first.token));
        assert_eq!(first.hash.len(), 32);
    }
}
