//! What a browser gets from the gateway besides the API: the live page of
//! the order scenario at `/`, the interactive API reference at `/api/docs`,
//! and the page's settings at `GET /api/config`.
//!
//! Every file is embedded in the binary (`include_str!` /
//! `include_bytes!`), so the gateway serves them wherever it runs, with no
//! CDN and nothing to build at run time. The page is plain HTML, CSS and
//! JavaScript (`static/`): it uses the public contract like any client —
//! REST through the gateway, then the realtime socket with the first-frame
//! `auth` — and learns where the socket is from `GET /api/config`. The API
//! reference is Swagger UI, its files vendored from npm (`web/`, with the
//! lockfile) and pointed at `GET /api/openapi.json`.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{config::PageSettings, openapi};

/// `GET /api/config`: where the page opens its socket.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClientConfig {
    pub realtime: RealtimeConfig,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RealtimeConfig {
    /// WebSocket URLs of the realtime instances; `{host}` stands for the
    /// host name the page was loaded from.
    #[schema(example = json!(["ws://{host}:8081/ws", "ws://{host}:8091/ws"]))]
    pub urls: Vec<String>,
    /// The subprotocol to offer.
    #[schema(example = "signalbox.v1")]
    pub subprotocol: &'static str,
}

/// The realtime protocol the page speaks (`signalbox_realtime::frames`).
const SUBPROTOCOL: &str = "signalbox.v1";

/// The documented routes of this module: the page's settings and the
/// OpenAPI document itself.
pub fn api() -> OpenApiRouter<Arc<ClientConfig>> {
    OpenApiRouter::new()
        .routes(routes!(config))
        .routes(routes!(openapi::serve))
}

/// The documented routes with their state.
pub fn api_router(settings: &PageSettings) -> Router {
    let config = Arc::new(ClientConfig {
        realtime: RealtimeConfig {
            urls: settings.realtime_urls.clone(),
            subprotocol: SUBPROTOCOL,
        },
    });
    let (router, _) = api().split_for_parts();
    router.with_state(config)
}

/// The page's settings.
#[utoipa::path(
    get,
    path = "/api/config",
    tag = "meta",
    operation_id = "client_config",
    summary = "Settings of the live page: where the realtime socket is",
    responses((status = 200, description = "The page's settings", body = ClientConfig)),
)]
pub async fn config(State(config): State<Arc<ClientConfig>>) -> Json<ClientConfig> {
    Json(config.as_ref().clone())
}

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// Vendored files never change within a build; ours may, so browsers
    /// revalidate them.
    immutable: bool,
}

const ASSETS: [Asset; 7] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../static/index.html"),
        immutable: false,
    },
    Asset {
        path: "/static/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../static/app.js"),
        immutable: false,
    },
    Asset {
        path: "/static/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../static/app.css"),
        immutable: false,
    },
    Asset {
        path: "/api/docs",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../static/docs.html"),
        immutable: false,
    },
    Asset {
        path: "/api/docs/init.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../static/docs-init.js"),
        immutable: false,
    },
    Asset {
        path: "/api/docs/swagger-ui-bundle.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/vendor/swagger-ui-bundle.js"),
        immutable: true,
    },
    Asset {
        path: "/api/docs/swagger-ui.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../web/vendor/swagger-ui.css"),
        immutable: true,
    },
];

/// The static files: the page and the API reference.
pub fn assets() -> Router {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        let cache = if asset.immutable {
            "public, max-age=86400"
        } else {
            "no-cache"
        };
        let headers = [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ];
        let body = asset.body;
        router.route(
            asset.path,
            get(move || async move { (headers, body).into_response() as Response }),
        )
    })
}
