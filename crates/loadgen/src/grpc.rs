//! The gRPC load generator: the calls the gateway makes for its REST
//! routes, made directly on the services with the generated tonic clients
//! (`signalbox_proto`), in the same open and closed loops as
//! [`crate::http`] (the schedules are [`crate::load`]'s).
//!
//! A [`Call`] goes over one HTTP/2 connection (a tonic `Channel`), as the
//! gateway's calls to one upstream instance do; the requests out at once are
//! streams multiplexed on it.

use std::{sync::Arc, time::Duration};

use signalbox_proto::{
    catalog::v1::{catalog_service_client::CatalogServiceClient, ListProductsRequest},
    orders::v1::{order_service_client::OrderServiceClient, CreateOrderRequest, LineItem},
};
use tonic::{metadata::MetadataValue, transport::Channel};

use crate::load::{self, Answer, Outcome};

/// One gRPC call, made many times.
#[derive(Clone)]
pub enum Call {
    /// `CatalogService/ListProducts`: what `GET /api/catalog/products` asks.
    ListProducts(CatalogServiceClient<Channel>),
    /// `OrderService/CreateOrder` with the user's token in `authorization`
    /// metadata: what `POST /api/orders` asks.
    CreateOrder {
        client: OrderServiceClient<Channel>,
        authorization: MetadataValue<tonic::metadata::Ascii>,
        items: Vec<LineItem>,
    },
}

/// A channel to `url` (`http://127.0.0.1:50053`), connected now.
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .connect()
        .await?)
}

impl Call {
    pub fn list_products(channel: Channel) -> Self {
        Self::ListProducts(CatalogServiceClient::new(channel))
    }

    /// One order of `quantity` of `product_id` on behalf of the holder of
    /// `token`.
    pub fn create_order(
        channel: Channel,
        token: &str,
        product_id: &str,
        quantity: i64,
    ) -> anyhow::Result<Self> {
        Ok(Self::CreateOrder {
            client: OrderServiceClient::new(channel),
            authorization: format!("Bearer {token}").parse()?,
            items: vec![LineItem {
                product_id: product_id.to_owned(),
                quantity,
            }],
        })
    }

    /// Makes the call once.
    pub async fn send(&self) -> Answer {
        let result = match self {
            Self::ListProducts(client) => client
                .clone()
                .list_products(ListProductsRequest {})
                .await
                .map(drop),
            Self::CreateOrder {
                client,
                authorization,
                items,
            } => {
                let mut request = tonic::Request::new(CreateOrderRequest {
                    items: items.clone(),
                });
                request
                    .metadata_mut()
                    .insert("authorization", authorization.clone());
                client.clone().create_order(request).await.map(drop)
            }
        };
        match result {
            Ok(()) => Answer::Code {
                code: "OK".to_owned(),
                ok: true,
            },
            // A status the server sent and one tonic made up for a broken
            // connection look alike; both are counted by their code.
            Err(status) => Answer::Code {
                code: format!("{:?}", status.code()),
                ok: false,
            },
        }
    }
}

/// `call` at `rate` per second for `duration`, at most `max_in_flight` out
/// at once.
pub async fn open_loop(
    call: &Call,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
) -> Outcome {
    let call = Arc::new(call.clone());
    load::open_loop(
        move || {
            let call = Arc::clone(&call);
            async move { call.send().await }
        },
        rate,
        duration,
        max_in_flight,
    )
    .await
}

/// `call` from `concurrency` callers in a closed loop for `duration`.
pub async fn closed_loop(call: &Call, concurrency: usize, duration: Duration) -> Outcome {
    let call = Arc::new(call.clone());
    load::closed_loop(
        move || {
            let call = Arc::clone(&call);
            async move { call.send().await }
        },
        concurrency,
        duration,
    )
    .await
}
