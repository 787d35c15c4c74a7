//! The gRPC face of the auth service; the gateway calls it for
//! `/api/auth/*`, `/oauth/token`, `/oauth/revoke` and the JWKS.

use std::sync::Arc;

use signalbox_proto::auth::v1::{
    auth_service_server::AuthService, token_grant_response, GetJwksRequest, GetJwksResponse,
    LoginRequest, RefreshRequest, RegisterRequest, RegisterResponse, RevokeRequest, RevokeResponse,
    TokenError, TokenErrorCode, TokenGrantResponse, TokenRequest, TokenResponse,
};
use tonic::{Request, Response, Status};

use crate::{
    http::JwksDocument,
    service::{self, Auth, GrantErrorCode, Session, TokenFailure},
};

pub struct AuthGrpc {
    auth: Arc<Auth>,
    jwks: JwksDocument,
}

impl AuthGrpc {
    pub fn new(auth: Arc<Auth>, jwks: JwksDocument) -> Self {
        Self { auth, jwks }
    }
}

impl From<Session> for TokenResponse {
    fn from(session: Session) -> Self {
        Self {
            access_token: session.access.token,
            token_type: "Bearer".to_owned(),
            expires_in: u32::try_from(session.access.expires_in).unwrap_or(u32::MAX),
            refresh_token: session.refresh_token,
            user_id: session.subject,
            scope: session.access.scope,
        }
    }
}

impl From<GrantErrorCode> for TokenErrorCode {
    fn from(code: GrantErrorCode) -> Self {
        match code {
            GrantErrorCode::InvalidRequest => Self::InvalidRequest,
            GrantErrorCode::InvalidClient => Self::InvalidClient,
            GrantErrorCode::InvalidGrant => Self::InvalidGrant,
            GrantErrorCode::UnauthorizedClient => Self::UnauthorizedClient,
            GrantErrorCode::UnsupportedGrantType => Self::UnsupportedGrantType,
            GrantErrorCode::InvalidScope => Self::InvalidScope,
        }
    }
}

// Requests carry passwords and tokens: the spans below record none of it.
#[tonic::async_trait]
impl AuthService for AuthGrpc {
    #[tracing::instrument(name = "grpc.register", skip_all)]
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let RegisterRequest { email, password } = request.into_inner();
        let registered = self.auth.register(&email, password).await?;
        Ok(Response::new(RegisterResponse {
            user_id: registered.user_id.to_string(),
            email: registered.email.as_str().to_owned(),
        }))
    }

    #[tracing::instrument(name = "grpc.login", skip_all)]
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<TokenResponse>, Status> {
        let LoginRequest { email, password } = request.into_inner();
        let session = self.auth.login(&email, password).await?;
        Ok(Response::new(session.into()))
    }

    #[tracing::instrument(name = "grpc.refresh", skip_all)]
    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<TokenResponse>, Status> {
        let RefreshRequest {
            refresh_token,
            scope,
        } = request.into_inner();
        let session = self.auth.refresh(&refresh_token, &scope).await?;
        Ok(Response::new(session.into()))
    }

    #[tracing::instrument(name = "grpc.get_jwks", skip_all)]
    async fn get_jwks(
        &self,
        _request: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        Ok(Response::new(GetJwksResponse {
            jwks_json: self.jwks.as_str().to_owned(),
        }))
    }

    #[tracing::instrument(name = "grpc.token", skip_all)]
    async fn token(
        &self,
        request: Request<TokenRequest>,
    ) -> Result<Response<TokenGrantResponse>, Status> {
        let TokenRequest {
            grant_type,
            refresh_token,
            scope,
            client_id,
            client_secret,
        } = request.into_inner();
        // An empty client id means the client did not authenticate.
        let client = (!client_id.is_empty()).then_some((client_id, client_secret));
        let result = match self
            .auth
            .token(service::TokenRequest {
                grant_type,
                refresh_token,
                scope,
                client,
            })
            .await
        {
            Ok(session) => token_grant_response::Result::Tokens(session.into()),
            Err(TokenFailure::Refused(refused)) => {
                token_grant_response::Result::Error(TokenError {
                    code: TokenErrorCode::from(refused.code).into(),
                    description: refused.description,
                })
            }
            Err(TokenFailure::Failed(error)) => return Err(error.into()),
        };
        Ok(Response::new(TokenGrantResponse {
            result: Some(result),
        }))
    }

    #[tracing::instrument(name = "grpc.revoke", skip_all)]
    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let revoked = self.auth.revoke(&request.get_ref().token).await?;
        Ok(Response::new(RevokeResponse { revoked }))
    }
}
