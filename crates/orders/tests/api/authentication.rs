//! Orders acts for the user whose access token a call carries, and for no
//! one else: not for a user id the call names.
//!
//! The attacker here has reached orders' gRPC port directly (no gateway in
//! between) and speaks an older orders proto whose requests still had a
//! `user_id` field (number 1, now reserved). Each test forges the victim's
//! id into that field and varies the credential: none, an expired token,
//! a token of the attacker's own, a token without the scope. Answers:
//! `Unauthenticated` without a valid token, `PermissionDenied` without the
//! scope, and for another user's order `NotFound`, as for an order that does
//! not exist (the REST contract's 404, which discloses nothing).

use signalbox_platform::tokens::now_secs;
use signalbox_proto::orders::v1::{LineItem, ListOrdersResponse, Order, OrderState};
use signalbox_testkit::tokens::{claims, TestKey};
use tonic::{
    codegen::http::uri::PathAndQuery, transport::Channel, Code, Request, Response, Status,
};
use uuid::Uuid;

use crate::helpers::{distant_deadline, spawn_app, with_token, TestApp};

const VICTIM: &str = "user-victim";
const ATTACKER: &str = "user-attacker";

/// The gRPC paths of the methods the attacker calls.
const CREATE_ORDER: &str = "/signalbox.orders.v1.OrderService/CreateOrder";
const GET_ORDER: &str = "/signalbox.orders.v1.OrderService/GetOrder";
const CANCEL_ORDER: &str = "/signalbox.orders.v1.OrderService/CancelOrder";
const LIST_ORDERS: &str = "/signalbox.orders.v1.OrderService/ListOrders";

/// The requests of the older orders proto: field 1 is the user id, which
/// the sender is free to write.
mod legacy {
    use super::LineItem;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CreateOrderRequest {
        #[prost(string, tag = "1")]
        pub user_id: String,
        #[prost(message, repeated, tag = "2")]
        pub items: Vec<LineItem>,
    }

    /// `GetOrderRequest` and `CancelOrderRequest` had the same fields.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OrderRequest {
        #[prost(string, tag = "1")]
        pub user_id: String,
        #[prost(string, tag = "2")]
        pub order_id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListOrdersRequest {
        #[prost(string, tag = "1")]
        pub user_id: String,
    }
}

/// What a credential does to a call: nothing, or one `authorization` value.
#[derive(Clone, Copy)]
enum Credential<'a> {
    None,
    Bearer(&'a str),
}

impl Credential<'_> {
    fn attach<T>(self, message: T) -> Request<T> {
        match self {
            Self::None => Request::new(message),
            Self::Bearer(token) => with_token(message, token),
        }
    }
}

/// One unary call of `OrderService` with a request of any shape, as a
/// client generated from another proto makes it.
async fn call<Req, Resp>(
    channel: &Channel,
    method: &'static str,
    request: Request<Req>,
) -> Result<Resp, Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::from_static(method);
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(request, path, codec)
        .await
        .map(Response::into_inner)
}

/// The four calls an attacker would make, each naming `user_id` and
/// carrying `credential`; their answers in order: create, get, cancel, list.
async fn forged_calls(
    app: &TestApp,
    user_id: &str,
    order_id: &str,
    credential: Credential<'_>,
) -> [Result<Vec<Order>, Status>; 4] {
    let order = || legacy::OrderRequest {
        user_id: user_id.to_owned(),
        order_id: order_id.to_owned(),
    };
    let create = legacy::CreateOrderRequest {
        user_id: user_id.to_owned(),
        items: vec![LineItem {
            product_id: Uuid::now_v7().to_string(),
            quantity: 1,
        }],
    };
    let list = legacy::ListOrdersRequest {
        user_id: user_id.to_owned(),
    };
    let one = |result: Result<Order, Status>| result.map(|order| vec![order]);
    [
        one(call(&app.grpc, CREATE_ORDER, credential.attach(create)).await),
        one(call(&app.grpc, GET_ORDER, credential.attach(order())).await),
        one(call(&app.grpc, CANCEL_ORDER, credential.attach(order())).await),
        call::<_, ListOrdersResponse>(&app.grpc, LIST_ORDERS, credential.attach(list))
            .await
            .map(|listed| listed.orders),
    ]
}

/// The codes of `answers`, `Ok` for a call that succeeded.
fn codes<T>(answers: &[Result<T, Status>]) -> Vec<Code> {
    answers
        .iter()
        .map(|answer| answer.as_ref().map_or_else(Status::code, |_| Code::Ok))
        .collect()
}

/// The victim's orders, read with the victim's own token: what the attacks
/// must have left as they were.
async fn victims_orders(app: &TestApp) -> anyhow::Result<Vec<Order>> {
    let request = with_token(
        signalbox_proto::orders::v1::ListOrdersRequest {},
        &app.token_for(VICTIM),
    );
    Ok(app
        .orders
        .clone()
        .list_orders(request)
        .await?
        .into_inner()
        .orders)
}

#[tokio::test]
async fn a_call_without_a_token_is_unauthenticated_whatever_user_it_names() -> anyhow::Result<()> {
    let app = spawn_app(distant_deadline()).await?;
    let order = app.place_order(VICTIM).await?;

    let answers = forged_calls(&app, VICTIM, &order.id, Credential::None).await;

    assert_eq!(codes(&answers), [Code::Unauthenticated; 4], "{answers:?}");
    let untouched = victims_orders(&app).await?;
    assert_eq!(untouched.len(), 1, "no order was placed for the victim");
    assert_eq!(untouched[0].state, OrderState::Pending as i32);
    app.cleanup().await
}

#[tokio::test]
async fn an_expired_token_is_unauthenticated_whatever_user_it_names() -> anyhow::Result<()> {
    let app = spawn_app(distant_deadline()).await?;
    let order = app.place_order(VICTIM).await?;
    // The victim's own token, once valid, expired well past the leeway.
    let mut expired = claims(VICTIM);
    expired.iat = now_secs() - 7200;
    expired.exp = now_secs() - 3600;
    let expired = app.keys.sign(&expired);

    let answers = forged_calls(&app, VICTIM, &order.id, Credential::Bearer(&expired)).await;

    assert_eq!(codes(&answers), [Code::Unauthenticated; 4], "{answers:?}");
    for answer in &answers {
        let message = answer.as_ref().err().map(Status::message);
        assert_eq!(message, Some("the token has expired"));
    }
    let untouched = victims_orders(&app).await?;
    assert_eq!(untouched.len(), 1);
    assert_eq!(untouched[0].state, OrderState::Pending as i32);
    app.cleanup().await
}

#[tokio::test]
async fn another_users_token_acts_only_for_that_user_whatever_user_it_names() -> anyhow::Result<()>
{
    let app = spawn_app(distant_deadline()).await?;
    let order = app.place_order(VICTIM).await?;
    let attackers_token = app.token_for(ATTACKER);

    let [created, read, cancelled, listed] = forged_calls(
        &app,
        VICTIM,
        &order.id,
        Credential::Bearer(&attackers_token),
    )
    .await;

    // The token is valid, so the calls are answered, as the attacker's own:
    // the victim's order is not found, the list is the attacker's (empty
    // before the create), and the order placed belongs to the attacker.
    assert_eq!(read.map_err(|s| s.code()), Err(Code::NotFound));
    assert_eq!(cancelled.map_err(|s| s.code()), Err(Code::NotFound));
    let created = created?;
    assert_eq!(created[0].user_id, ATTACKER);
    let listed = listed?;
    assert!(
        listed.iter().all(|o| o.user_id == ATTACKER) && !listed.iter().any(|o| o.id == order.id),
        "{listed:?}"
    );
    let untouched = victims_orders(&app).await?;
    assert_eq!(untouched.len(), 1, "{untouched:?}");
    assert_eq!(untouched[0].id, order.id);
    assert_eq!(untouched[0].state, OrderState::Pending as i32);
    app.cleanup().await
}

#[tokio::test]
async fn a_token_without_the_scope_a_method_needs_is_permission_denied() -> anyhow::Result<()> {
    let app = spawn_app(distant_deadline()).await?;
    let order = app.place_order(VICTIM).await?;
    let scoped = |scope: &str| {
        let mut claims = claims(VICTIM);
        claims.scope = scope.to_owned();
        app.keys.sign(&claims)
    };
    let (read_only, write_only) = (scoped("orders:read"), scoped("orders:write"));

    let reading = forged_calls(&app, VICTIM, &order.id, Credential::Bearer(&read_only)).await;
    let writing = forged_calls(&app, VICTIM, &order.id, Credential::Bearer(&write_only)).await;

    // create, get, cancel, list: changes need `orders:write`, reads
    // `orders:read`.
    use Code::{Ok, PermissionDenied};
    assert_eq!(
        codes(&reading),
        [PermissionDenied, Ok, PermissionDenied, Ok]
    );
    assert_eq!(
        codes(&writing),
        [Ok, PermissionDenied, Ok, PermissionDenied]
    );
    let after = victims_orders(&app).await?;
    let cancelled = after.iter().find(|o| o.id == order.id).map(|o| o.state);
    assert_eq!(cancelled, Some(OrderState::Cancelled as i32));
    app.cleanup().await
}

#[tokio::test]
async fn a_credential_that_is_not_one_trusted_bearer_token_is_unauthenticated() -> anyhow::Result<()>
{
    let app = spawn_app(distant_deadline()).await?;
    let valid = app.token_for(VICTIM);
    let untrusted = TestKey::generate().sign(&claims(VICTIM));
    let list = || signalbox_proto::orders::v1::ListOrdersRequest {};
    let with_values = |values: &[&str]| {
        let mut request = Request::new(list());
        for value in values {
            request
                .metadata_mut()
                .append("authorization", value.parse().expect("ASCII"));
        }
        request
    };
    let cases = [
        ("another scheme", with_values(&[&format!("Basic {valid}")])),
        ("an empty bearer token", with_values(&["Bearer "])),
        (
            "two authorization values",
            with_values(&[&format!("Bearer {valid}"), &format!("Bearer {valid}")]),
        ),
        (
            "a key orders does not trust",
            with_token(list(), &untrusted),
        ),
        ("not a JWT", with_token(list(), "not-a-jwt")),
    ];

    for (case, request) in cases {
        let answer = app.orders.clone().list_orders(request).await;

        assert_eq!(
            answer.map_err(|s| s.code()).map(|_| ()),
            Err(Code::Unauthenticated),
            "{case}"
        );
    }
    app.cleanup().await
}

#[tokio::test]
async fn a_valid_token_acts_for_its_subject() -> anyhow::Result<()> {
    let app = spawn_app(distant_deadline()).await?;
    let token = app.token_for(VICTIM);

    let placed = app.place_order(VICTIM).await?;
    let read = app.get_order(VICTIM, &placed.id).await?;
    let cancelled = app
        .orders
        .clone()
        .cancel_order(with_token(
            signalbox_proto::orders::v1::CancelOrderRequest {
                order_id: placed.id.clone(),
            },
            &token,
        ))
        .await?
        .into_inner();

    assert_eq!(placed.user_id, VICTIM);
    assert_eq!(read.id, placed.id);
    assert_eq!(cancelled.state, OrderState::Cancelled as i32);
    assert_eq!(victims_orders(&app).await?.len(), 1);
    app.cleanup().await
}
