//! Wiring: bind listeners, connect to PostgreSQL and migrate, load the
//! signing key, then serve gRPC (auth, health, reflection) and HTTP (JWKS,
//! health) until shutdown, registered in the service registry meanwhile
//! when discovery runs in `registry` mode.

use std::sync::Arc;

use signalbox_discovery::DiscoverySettings;
use signalbox_platform::{health::Health, serve};
use signalbox_proto::auth::v1::auth_service_server::AuthServiceServer;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    grpc::AuthGrpc,
    http::{self, JwksDocument},
    keys::KeySet,
    passwords::Passwords,
    service::Auth,
    tokens::TokenIssuer,
    Settings,
};

pub struct Application {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    pool: PgPool,
    auth: Arc<Auth>,
    jwks: JwksDocument,
    discovery: DiscoverySettings,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let grpc_listener = serve::bind(&settings.grpc).await?;
        let http_listener = serve::bind(&settings.http).await?;

        let pool = serve::database(&settings.database).await?;
        sqlx::migrate!("../../migrations/auth").run(&pool).await?;

        let keys = KeySet::from_settings(&settings.tokens)?;
        let jwks = JwksDocument::new(&keys);
        let issuer = TokenIssuer::new(keys, &settings.tokens);
        // Computes the dummy hash now, so the first login for an unknown
        // email costs no more than any other.
        let passwords = Passwords::new().await?;
        let auth = Arc::new(Auth::new(pool.clone(), passwords, issuer, &settings)?);

        Ok(Self {
            grpc_listener,
            http_listener,
            pool,
            auth,
            jwks,
            discovery: settings.discovery,
        })
    }

    pub fn grpc_port(&self) -> u16 {
        serve::port(&self.grpc_listener)
    }

    pub fn http_port(&self) -> u16 {
        serve::port(&self.http_listener)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(
            grpc_port = self.grpc_port(),
            http_port = self.http_port(),
            "auth service listening"
        );
        // Registry mode: announce this instance's gRPC address now that it
        // is bound and its database migrated (dns mode: nothing).
        let registration =
            signalbox_discovery::register("auth", self.grpc_port(), &self.discovery)?;
        let Self {
            grpc_listener,
            http_listener,
            pool,
            auth,
            jwks,
            discovery: _,
        } = self;

        // Ready while the database answers: over HTTP and in the gRPC
        // health protocol alike.
        let readiness = Health::new().database(pool.clone());
        let grpc = serve::grpc(
            grpc_listener,
            AuthServiceServer::new(AuthGrpc::new(auth, jwks.clone())),
            signalbox_proto::FILE_DESCRIPTOR_SET,
            readiness.clone(),
            shutdown.clone(),
        );

        let router = http::router(jwks).merge(readiness.router());
        let http = serve::http(http_listener, router, shutdown.clone());
        let registered = registration.hold_until(shutdown.clone());

        let result = serve::run_all(
            shutdown,
            vec![
                // Register, Login, Refresh, Token, Revoke, GetJwks for the
                // gateway, plus the gRPC health protocol and reflection.
                serve::task("grpc", grpc),
                // The JWKS for token verifiers, and liveness / readiness.
                serve::task("http", http),
                // Keeps the registration while serving; withdraws it as
                // soon as shutdown begins, so callers stop choosing this
                // instance while its in-flight calls drain.
                serve::background("registration", registered),
            ],
        )
        .await;
        pool.close().await;
        result
    }
}
