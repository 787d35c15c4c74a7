//! The gateway's OpenAPI 3.1 document, generated from the code.
//!
//! Every route is registered through utoipa-axum's `routes!` from the
//! handler's own `#[utoipa::path]` (see [`crate::routes::api`]): the path
//! and method the router serves are the ones the document describes, so
//! the two cannot drift apart. Request and response bodies are the
//! handlers' own types, deriving `ToSchema` beside their `Serialize` /
//! `Deserialize`.
//!
//! What every route shares is added here, once, by [`EdgeResponses`]: the
//! RFC 9457 problem shape with its stable `code` (the enum is
//! `signalbox_platform::ErrorCode::ALL`, so a new code shows up here
//! without anyone remembering to), the answers of the edge itself (rate
//! limit, header size, request budget, upstream unavailable), the bearer
//! security scheme with the scopes the routes require, and the links that
//! let a stateful client (schemathesis) follow an order from its creation
//! to its reads and its cancellation.
//!
//! Served as `GET /api/openapi.json`; `GET /api/docs` renders it (see
//! [`crate::page`]).

use std::sync::LazyLock;

use axum::{
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use signalbox_platform::ErrorCode;
use utoipa::{
    openapi::{
        self,
        content::ContentBuilder,
        header::HeaderBuilder,
        link::LinkBuilder,
        path::Operation,
        response::{Response as ApiResponse, ResponseBuilder},
        schema::{ObjectBuilder, SchemaType, Type},
        security::{
            ClientCredentials, Flow, HttpAuthScheme, HttpBuilder, OAuth2, Scopes, SecurityScheme,
        },
        tag::TagBuilder,
        Ref, RefOr,
    },
    Modify, OpenApi, PartialSchema, ToSchema,
};

use crate::{page, routes};

/// The media type of every error of the `/api` routes (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The name of the bearer security scheme in the document.
pub const BEARER: &str = "bearer";

/// The scopes a token may carry, and what each lets it do. The routes'
/// `security` requirements name them.
const SCOPES: [(&str, &str); 4] = [
    ("orders:read", "read the caller's own orders"),
    (
        "orders:write",
        "place, revise and cancel the caller's own orders",
    ),
    (
        "catalog:admin",
        "change products' prices and stock (operators)",
    ),
    (
        "system:admin",
        "read the gateway's upstream guards (operators)",
    ),
];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Signalbox gateway",
        description = "The public REST edge of Signalbox. Register and log in for a bearer \
token, browse the catalog, place orders and read them back; watch them change state live on \
the realtime socket (`GET /api/config` names it). Every error of the `/api` routes is an RFC \
9457 problem (`application/problem+json`) with a stable `code`; the OAuth endpoints answer in \
the RFC 6749 format.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    components(schemas(Problem, ProblemCode)),
    modifiers(&EdgeResponses),
)]
struct ApiDoc;

/// The whole document: the base above with the paths of every router.
pub fn document() -> openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(routes::api().into_openapi());
    doc.merge(routes::system::api().into_openapi());
    doc.merge(page::api().into_openapi());
    // The modifier ran on the base, before the paths were merged in; the
    // shared answers are added to the merged paths now.
    EdgeResponses.modify(&mut doc);
    doc
}

/// The document as served, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    document().to_json().unwrap_or_else(|error| {
        format!(r#"{{"error":"the document failed to serialise: {error}"}}"#)
    })
});

/// `GET /api/openapi.json`.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    summary = "This document",
    responses((status = 200, description = "The OpenAPI 3.1 document of the gateway",
        content_type = "application/json", body = Object)),
)]
pub async fn serve() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// The wire shape of `signalbox_platform::Problem` (RFC 9457), which lives
/// in a crate that knows nothing of OpenAPI; a test checks a real problem
/// has exactly these fields.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:signalbox:problem:not_found",
    "title": "Not found",
    "status": 404,
    "detail": "order 0192f1e4-7b1c-7a51-9a53-6f0cbbfa2c11 not found",
    "code": "not_found"
}))]
#[allow(dead_code)]
pub struct Problem {
    /// `urn:signalbox:problem:<code>`.
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    kind: String,
    /// A short summary of the code, the same for every problem of that code.
    title: String,
    /// The HTTP status of the answer.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong this time, for a human.
    detail: String,
    #[schema(value_type = ProblemCode)]
    code: String,
}

/// The stable, machine-readable error code: clients switch on it, not on
/// `detail`.
pub struct ProblemCode;

impl PartialSchema for ProblemCode {
    fn schema() -> RefOr<openapi::schema::Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .description(Some(
                "Stable, machine-readable; clients switch on this, not on `detail`.",
            ))
            .enum_values(Some(ErrorCode::ALL.map(ErrorCode::as_str)))
            .into()
    }
}

impl ToSchema for ProblemCode {}

/// An error of the OAuth endpoints (RFC 6749 §5.2).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": "invalid_grant", "error_description": "the refresh token is not valid"}))]
#[allow(dead_code)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_client`, `invalid_grant`,
    /// `unauthorized_client`, `unsupported_grant_type`, `invalid_scope`,
    /// `slow_down` (429), `temporarily_unavailable` (503), `server_error`
    /// (500).
    error: String,
    error_description: String,
}

/// The answers every route shares, the security schemes, and the links.
struct EdgeResponses;

/// The shared answers, by name under `components/responses`: (name, status,
/// description); `problem_response` adds the headers a status carries.
const SHARED: [(&str, u16, &str); 11] = [
    ("InvalidInput", 400, "The request is invalid (`invalid_input`): a body, path or query value that does not parse"),
    ("Unauthenticated", 401, "No valid bearer token (`unauthenticated`); the `WWW-Authenticate` challenge says why (RFC 6750)"),
    ("Forbidden", 403, "The token lacks the scope the route needs (`forbidden`, `error=\"insufficient_scope\"`)"),
    ("NotFound", 404, "No such resource, or no route for the path (`not_found`)"),
    ("PayloadTooLarge", 413, "The request body exceeds the size limit (`payload_too_large`)"),
    ("UnsupportedMediaType", 415, "The body must be JSON, sent with `Content-Type: application/json` (`unsupported_media_type`)"),
    ("RateLimited", 429, "Too many requests from this client or user (`rate_limited`); retry after `Retry-After` seconds"),
    ("HeadersTooLarge", 431, "The request headers exceed the size limit (`request_header_fields_too_large`)"),
    ("Internal", 500, "An internal error (`internal`); the detail never carries internals"),
    ("Unavailable", 503, "A service behind the gateway is unavailable (`unavailable`), failing with its calls paused (`upstream_unavailable`, with `Retry-After`), or too busy (`overloaded`)"),
    ("Timeout", 504, "The request or a call it made ran out of time (`timeout`, `upstream_timeout`)"),
];

fn problem_response(description: &str, status: u16) -> ApiResponse {
    let mut response = ResponseBuilder::new().description(description).content(
        PROBLEM_JSON,
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(Problem::name())))
            .build(),
    );
    let integer = || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
    };
    match status {
        429 | 503 => {
            response = response.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(Some(integer()))
                    .description(Some("Seconds after which a retry may succeed"))
                    .build(),
            );
        }
        401 | 403 => {
            response = response.header(
                "WWW-Authenticate",
                HeaderBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .description(Some("The Bearer challenge (RFC 6750 §3)"))
                    .build(),
            );
        }
        _ => {}
    }
    response.build()
}

fn oauth_error_response(description: &str) -> ApiResponse {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(OAuthErrorBody::name())))
                .build(),
        )
        .build()
}

fn shared(name: &str) -> RefOr<ApiResponse> {
    RefOr::Ref(Ref::from_response_name(name))
}

/// Adds `status` to `operation` unless it documents that status itself.
fn add(operation: &mut Operation, status: u16, response: RefOr<ApiResponse>) {
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert(response);
}

impl Modify for EdgeResponses {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, status, description) in SHARED {
            components.responses.insert(
                name.to_owned(),
                problem_response(description, status).into(),
            );
        }
        let (name, schema) = (OAuthErrorBody::name(), OAuthErrorBody::schema());
        components.schemas.insert(name.into_owned(), schema);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(format!(
                        "An access token from `POST /api/auth/login` (users: {}) or `POST \
                         /oauth/token` with `grant_type=client_credentials` (service accounts, \
                         with the scopes they were created with). Scopes: {}.",
                        "`orders:read orders:write`",
                        SCOPES
                            .iter()
                            .map(|(scope, what)| format!("`{scope}` to {what}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    )))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "oauth2",
            SecurityScheme::OAuth2(OAuth2::with_description(
                [Flow::ClientCredentials(ClientCredentials::new(
                    "/oauth/token",
                    Scopes::from_iter(SCOPES),
                ))],
                "Service accounts: client credentials at `/oauth/token`; the token is the same \
                 bearer token.",
            )),
        );

        doc.tags = Some(
            [
                ("auth", "Accounts and tokens (→ auth service)"),
                (
                    "oauth",
                    "OAuth 2.0 token and revocation endpoints (RFC 6749, RFC 7009)",
                ),
                ("catalog", "Products (→ catalog service)"),
                (
                    "orders",
                    "The caller's orders (→ orders service, aggregated with catalog)",
                ),
                ("system", "The running system and the gateway's guards"),
                ("meta", "This document and the live page's settings"),
            ]
            .into_iter()
            .map(|(name, description)| {
                TagBuilder::new()
                    .name(name)
                    .description(Some(description))
                    .build()
            })
            .collect(),
        );

        for (path, item) in doc.paths.paths.iter_mut() {
            let oauth = path.starts_with("/oauth/");
            for operation in [
                item.get.as_mut(),
                item.post.as_mut(),
                item.patch.as_mut(),
                item.put.as_mut(),
                item.delete.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                edge_responses(operation, oauth);
            }
        }
        link_orders(doc);
    }
}

/// The answers any route may give besides its own.
fn edge_responses(operation: &mut Operation, oauth: bool) {
    // The edge's own answers, before any route runs: problems everywhere.
    add(operation, 431, shared("HeadersTooLarge"));
    add(operation, 504, shared("Timeout"));
    if oauth {
        // The OAuth endpoints answer their own failures in their format.
        add(
            operation,
            429,
            oauth_error_response(
                "`slow_down`: too many requests; retry after `Retry-After` seconds",
            )
            .into(),
        );
        add(
            operation,
            500,
            oauth_error_response("`server_error`").into(),
        );
        add(
            operation,
            503,
            oauth_error_response("`temporarily_unavailable`: the auth service cannot answer")
                .into(),
        );
        return;
    }
    add(operation, 429, shared("RateLimited"));
    add(operation, 500, shared("Internal"));
    add(operation, 503, shared("Unavailable"));
    if operation.request_body.is_some() {
        add(operation, 400, shared("InvalidInput"));
        add(operation, 413, shared("PayloadTooLarge"));
        add(operation, 415, shared("UnsupportedMediaType"));
    }
    let has_path_params =
        operation.parameters.iter().flatten().any(
            |p| matches!(p, RefOr::T(p) if p.parameter_in == openapi::path::ParameterIn::Path),
        );
    if has_path_params {
        add(operation, 400, shared("InvalidInput"));
        add(operation, 404, shared("NotFound"));
    }
    if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
        add(operation, 401, shared("Unauthenticated"));
        add(operation, 403, shared("Forbidden"));
    }
}

/// OpenAPI links from a placed order to what can be done with it, so a
/// stateful client follows the id the answer carries.
fn link_orders(doc: &mut openapi::OpenApi) {
    let Some(create) = doc
        .paths
        .paths
        .get_mut("/api/orders")
        .and_then(|item| item.post.as_mut())
    else {
        return;
    };
    let Some(RefOr::T(accepted)) = create.responses.responses.get_mut("202") else {
        return;
    };
    for (name, operation_id) in [
        ("GetOrder", "get_order"),
        ("CancelOrder", "cancel_order"),
        ("ReviseOrder", "revise_order"),
    ] {
        accepted.links.insert(
            name.to_owned(),
            LinkBuilder::new()
                .operation_id(operation_id)
                .parameter("id", "$response.body#/order_id")
                .build()
                .into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use signalbox_platform::Problem as RealProblem;

    use super::*;

    fn doc() -> Value {
        serde_json::to_value(document()).unwrap()
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_route_of_the_table() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for path in [
            "/api/auth/register",
            "/api/auth/login",
            "/api/auth/logout",
            "/oauth/token",
            "/oauth/revoke",
            "/.well-known/jwks.json",
            "/api/catalog/products",
            "/api/catalog/products/{id}",
            "/api/orders",
            "/api/orders/{id}",
            "/api/orders/{id}/cancel",
            "/api/system/instances",
            "/api/system/upstreams",
            "/api/openapi.json",
            "/api/config",
        ] {
            assert!(paths.contains(&path), "{path} is missing from {paths:?}");
        }
    }

    #[test]
    fn the_problem_schema_has_the_fields_of_a_real_problem_and_every_code() {
        let doc = doc();
        let schema = &doc["components"]["schemas"]["Problem"];
        let mut documented: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let real = serde_json::to_value(RealProblem::new(ErrorCode::NotFound, "x")).unwrap();
        let mut sent: Vec<&str> = real
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        documented.sort();
        sent.sort();
        assert_eq!(documented, sent);
        let codes = &doc["components"]["schemas"]["ProblemCode"]["enum"];
        for code in ErrorCode::ALL {
            assert!(
                codes.as_array().unwrap().contains(&json!(code.as_str())),
                "{code:?}"
            );
        }
    }

    #[test]
    fn protected_routes_name_their_scope_and_their_refusals() {
        let doc = doc();
        let create = &doc["paths"]["/api/orders"]["post"];
        assert_eq!(create["security"], json!([{"bearer": ["orders:write"]}]));
        for status in ["401", "403", "429", "400"] {
            assert!(create["responses"][status].is_object(), "{status}");
        }
        let links = &create["responses"]["202"]["links"];
        assert_eq!(
            links["GetOrder"]["parameters"]["id"],
            "$response.body#/order_id"
        );
        // Public routes have no security requirement and no 401.
        let list = &doc["paths"]["/api/catalog/products"]["get"];
        assert!(list.get("security").is_none());
        assert!(list["responses"].get("401").is_none());
    }

    #[test]
    fn the_oauth_endpoints_answer_their_own_errors_in_their_format() {
        let doc = doc();
        let token = &doc["paths"]["/oauth/token"]["post"]["responses"];
        assert!(token["429"]["content"]["application/json"].is_object());
        assert!(token["503"]["content"]["application/json"].is_object());
        assert_eq!(
            token["431"]["$ref"],
            "#/components/responses/HeadersTooLarge"
        );
    }
}
