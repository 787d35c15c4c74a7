use secrecy::{ExposeSecret, SecretString};
use signalbox_auth::{Application, Settings};
use signalbox_platform::{
    config::{ListenSettings, VerifierSettings},
    telemetry,
    tokens::TokenVerifier,
};
use signalbox_proto::auth::v1::{
    auth_service_client::AuthServiceClient, token_grant_response, LoginRequest, RefreshRequest,
    RegisterRequest, RegisterResponse, RevokeRequest, TokenError, TokenGrantResponse, TokenRequest,
    TokenResponse,
};
use signalbox_testkit::{broker::random_namespace, db};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

pub const PASSWORD: &str = "correct horse battery staple";

/// A running auth service with its own database.
pub struct TestApp {
    pub grpc_port: u16,
    pub http_port: u16,
    pub settings: Settings,
    pub client: AuthServiceClient<Channel>,
    /// Direct access to the service's database, for assertions.
    pub db: PgPool,
    db_name: String,
    shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], with settings adjusted by `configure` first.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    // Logs only on request: `TEST_LOG=1 cargo test -p signalbox-auth`.
    if std::env::var_os("TEST_LOG").is_some() {
        telemetry::init("auth-test", Default::default());
    }

    let database = db::TestDatabase::create(format!("{}_auth", random_namespace()))
        .await
        .expect("create test database");

    let mut settings = Settings {
        grpc: ListenSettings::ephemeral(),
        http: ListenSettings::ephemeral(),
        database: database.settings(10),
        ..Settings::default()
    };
    configure(&mut settings);

    let app = Application::build(settings.clone())
        .await
        .expect("build the auth service");
    let grpc_port = app.grpc_port();
    let http_port = app.http_port();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let client = AuthServiceClient::new(grpc_channel(grpc_port).await);
    let db = PgPool::connect(settings.database.url.expose_secret())
        .await
        .expect("connect to the test database");

    TestApp {
        grpc_port,
        http_port,
        settings,
        client,
        db,
        db_name: database.name,
        shutdown,
        server: Some(server),
    }
}

impl TestApp {
    pub async fn register(
        &self,
        email: &str,
        password: &str,
    ) -> Result<RegisterResponse, tonic::Status> {
        self.client
            .clone()
            .register(RegisterRequest {
                email: email.to_owned(),
                password: password.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<TokenResponse, tonic::Status> {
        self.client
            .clone()
            .login(LoginRequest {
                email: email.to_owned(),
                password: password.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenResponse, tonic::Status> {
        self.client
            .clone()
            .refresh(RefreshRequest {
                refresh_token: refresh_token.to_owned(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Calls the token endpoint; `Ok` holds the protocol's answer (tokens or
    /// an RFC 6749 error), `Err` a gRPC failure such as throttling.
    pub async fn token(
        &self,
        request: TokenRequest,
    ) -> Result<Result<TokenResponse, TokenError>, tonic::Status> {
        let answer: TokenGrantResponse = self.client.clone().token(request).await?.into_inner();
        match answer.result {
            Some(token_grant_response::Result::Tokens(tokens)) => Ok(Ok(tokens)),
            Some(token_grant_response::Result::Error(error)) => Ok(Err(error)),
            None => panic!("a token answer without a result"),
        }
    }

    /// Revokes a refresh token's family; whether anything was revoked.
    pub async fn revoke(&self, token: &str) -> bool {
        self.client
            .clone()
            .revoke(RevokeRequest {
                token: token.to_owned(),
            })
            .await
            .expect("revoke answers")
            .into_inner()
            .revoked
    }

    /// Creates a service account directly in the database, as
    /// `auth create-client` does; returns its secret.
    pub async fn create_client(&self, client_id: &str, scopes: &str) -> String {
        signalbox_auth::clients::create(&self.db, client_id, scopes)
            .await
            .expect("create the service account")
            .secret
    }

    /// Registers a fresh user and logs in.
    pub async fn logged_in_user(&self) -> TokenResponse {
        let email = format!("{}@example.org", Uuid::new_v4().simple());
        self.register(&email, PASSWORD).await.expect("register");
        self.login(&email, PASSWORD).await.expect("login")
    }

    pub fn jwks_url(&self) -> String {
        format!("http://127.0.0.1:{}/.well-known/jwks.json", self.http_port)
    }

    /// A verifier configured as the gateway's would be, against this app.
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier::new(VerifierSettings {
            jwks_url: self.jwks_url(),
            issuer: self.settings.tokens.issuer.clone(),
            audience: self.settings.tokens.audience.clone(),
            leeway_secs: 0,
        })
    }
}

/// Stops the server and drops the database, also when the test failed.
impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
        let db_name = std::mem::take(&mut self.db_name);
        // `Drop` cannot await; a separate thread with its own runtime can.
        let dropped =
            signalbox_testkit::block_on_thread(async move { db::drop_database(&db_name).await });
        if let Err(error) = dropped {
            eprintln!("could not drop the test database: {error:#}");
        }
    }
}

/// A connection to the gRPC port of a test app.
pub async fn grpc_channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("a valid endpoint")
        .connect()
        .await
        .expect("connect to the auth service")
}

/// A signing key as an operator would configure it.
pub fn pem_key() -> SecretString {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rng());
    let pem = key
        .to_pkcs8_pem(Default::default())
        .expect("encode the key");
    SecretString::from(pem.to_string())
}
