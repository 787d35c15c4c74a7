//! The gRPC face of the auth service; the gateway calls it for
//! `/api/auth/*`, `/oauth/token` and the JWKS.

use std::sync::Arc;

use signalbox_proto::auth::v1::{
    auth_service_server::AuthService, GetJwksRequest, GetJwksResponse, LoginRequest,
    RefreshRequest, RegisterRequest, RegisterResponse, TokenResponse,
};
use tonic::{Request, Response, Status};

use crate::{
    http::JwksDocument,
    service::{Auth, Session},
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
            user_id: session.user_id.to_string(),
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
        let session = self.auth.refresh(&request.get_ref().refresh_token).await?;
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
}
