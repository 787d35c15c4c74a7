//! Orders persistence (sqlx, PostgreSQL).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{OrderState, PricedItem};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub user_id: String,
    pub state: String,
    pub total_cents: i64,
    pub currency: String,
    pub rejection_reason: Option<String>,
    /// Rejected by the saga's deadline rather than by catalog: a late
    /// `reserved` reply must then be compensated (see `saga_timeouts`).
    pub reservation_timed_out: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl OrderRow {
    pub fn state(&self) -> OrderState {
        // The CHECK constraint admits only the four names.
        OrderState::parse(&self.state).unwrap_or(OrderState::Pending)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ItemRow {
    pub order_id: Uuid,
    pub product_id: Uuid,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

#[derive(Debug, Clone)]
pub struct Order {
    pub row: OrderRow,
    pub items: Vec<ItemRow>,
}

/// The columns of an [`OrderRow`], spliced into the queries below with
/// `concat!` so that every query stays a static string.
macro_rules! order_columns {
    () => {
        "id, user_id, state, total_cents, currency, rejection_reason, \
     reservation_timed_out, created_at, updated_at"
    };
}

pub async fn insert_order(
    conn: &mut PgConnection,
    id: Uuid,
    user_id: &str,
    items: &[PricedItem],
    total_cents: i64,
    currency: &str,
) -> Result<Order, sqlx::Error> {
    let row: OrderRow = sqlx::query_as(concat!(
        "INSERT INTO orders (id, user_id, state, total_cents, currency)
         VALUES ($1, $2, 'PENDING', $3, $4)
         RETURNING ",
        order_columns!(),
        ""
    ))
    .bind(id)
    .bind(user_id)
    .bind(total_cents)
    .bind(currency)
    .fetch_one(&mut *conn)
    .await?;
    let mut stored = Vec::with_capacity(items.len());
    for item in items {
        let item: ItemRow = sqlx::query_as(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
             VALUES ($1, $2, $3, $4)
             RETURNING order_id, product_id, quantity, unit_price_cents",
        )
        .bind(id)
        .bind(item.product_id)
        .bind(item.quantity)
        .bind(item.unit_price_cents)
        .fetch_one(&mut *conn)
        .await?;
        stored.push(item);
    }
    Ok(Order { row, items: stored })
}

/// The order `id` if it belongs to `user_id`. Another user's order is
/// indistinguishable from a missing one.
pub async fn find_order(
    pool: &PgPool,
    id: Uuid,
    user_id: &str,
) -> Result<Option<Order>, sqlx::Error> {
    let row: Option<OrderRow> = sqlx::query_as(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders WHERE id = $1 AND user_id = $2"
    ))
    .bind(id)
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(row) => {
            let items = items_of(pool, &[row.id]).await?;
            Ok(Some(Order { row, items }))
        }
        None => Ok(None),
    }
}

/// The user's most recent orders, newest first.
pub async fn list_orders(
    pool: &PgPool,
    user_id: &str,
    limit: i64,
) -> Result<Vec<Order>, sqlx::Error> {
    let rows: Vec<OrderRow> = sqlx::query_as(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders WHERE user_id = $1
         ORDER BY created_at DESC, id DESC LIMIT $2"
    ))
    .bind(user_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut by_order: HashMap<Uuid, Vec<ItemRow>> = HashMap::new();
    for item in items_of(pool, &ids).await? {
        by_order.entry(item.order_id).or_default().push(item);
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let items = by_order.remove(&row.id).unwrap_or_default();
            Order { row, items }
        })
        .collect())
}

async fn items_of(pool: &PgPool, order_ids: &[Uuid]) -> Result<Vec<ItemRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT order_id, product_id, quantity, unit_price_cents FROM order_items
         WHERE order_id = ANY($1) ORDER BY product_id",
    )
    .bind(order_ids)
    .fetch_all(pool)
    .await
}

/// Locks the order row for a state transition.
pub async fn lock_order(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn set_state(
    conn: &mut PgConnection,
    id: Uuid,
    state: OrderState,
    rejection_reason: Option<&str>,
) -> Result<OrderRow, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE orders SET state = $2, rejection_reason = $3, updated_at = now()
         WHERE id = $1 RETURNING ",
        order_columns!(),
        ""
    ))
    .bind(id)
    .bind(state.as_str())
    .bind(rejection_reason)
    .fetch_one(conn)
    .await
}

/// Locks up to `limit` PENDING orders created more than `older_than` ago,
/// oldest first, for the saga's deadline.
///
/// `SKIP LOCKED` lets several orders instances sweep at once: each takes the
/// rows nobody else holds (another sweeper, or the reply handler deciding the
/// order right now) instead of queueing behind them, so no order is decided
/// twice and no sweeper waits.
pub async fn lock_overdue(
    conn: &mut PgConnection,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders
         WHERE state = 'PENDING' AND created_at < now() - make_interval(secs => $1)
         ORDER BY created_at
         LIMIT $2
         FOR UPDATE SKIP LOCKED"
    ))
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Rejects a PENDING order because its reservation had no reply in time,
/// and marks it so (`reservation_timed_out`). `None` when the order is no
/// longer PENDING.
pub async fn reject_timed_out(
    conn: &mut PgConnection,
    id: Uuid,
    reason: &str,
) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE orders
         SET state = 'REJECTED', rejection_reason = $2, reservation_timed_out = true,
             updated_at = now()
         WHERE id = $1 AND state = 'PENDING'
         RETURNING ",
        order_columns!(),
        ""
    ))
    .bind(id)
    .bind(reason)
    .fetch_optional(conn)
    .await
}

/// A revision of an order's items (migration `0004_order_revisions.sql`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RevisionRow {
    pub id: Uuid,
    pub order_id: Uuid,
    pub state: String,
    pub total_cents: i64,
    pub reason: Option<String>,
}

/// Stores a PENDING revision of order `order_id` with its priced items.
pub async fn insert_revision(
    conn: &mut PgConnection,
    id: Uuid,
    order_id: Uuid,
    items: &[PricedItem],
    total_cents: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO order_revisions (id, order_id, state, total_cents)
         VALUES ($1, $2, 'PENDING', $3)",
    )
    .bind(id)
    .bind(order_id)
    .bind(total_cents)
    .execute(&mut *conn)
    .await?;
    for item in items {
        sqlx::query(
            "INSERT INTO order_revision_items (revision_id, product_id, quantity, unit_price_cents)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(item.product_id)
        .bind(item.quantity)
        .bind(item.unit_price_cents)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The id of the order's revision still waiting for catalog, if any. Read
/// under the order's row lock, it cannot change before the transaction ends.
pub async fn pending_revision(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM order_revisions WHERE order_id = $1 AND state = 'PENDING'")
        .bind(order_id)
        .fetch_optional(conn)
        .await
}

/// Locks a revision for its decision.
pub async fn lock_revision(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<RevisionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, order_id, state, total_cents, reason FROM order_revisions
         WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Records how a PENDING revision ended.
pub async fn decide_revision(
    conn: &mut PgConnection,
    id: Uuid,
    state: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE order_revisions SET state = $2, reason = $3, decided_at = now()
         WHERE id = $1 AND state = 'PENDING'",
    )
    .bind(id)
    .bind(state)
    .bind(reason)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Gives the order the revision's items and total, and makes it APPROVED:
/// catalog now holds exactly those items for it.
pub async fn apply_revision(
    conn: &mut PgConnection,
    revision: &RevisionRow,
) -> Result<OrderRow, sqlx::Error> {
    sqlx::query("DELETE FROM order_items WHERE order_id = $1")
        .bind(revision.order_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
         SELECT $1, product_id, quantity, unit_price_cents
         FROM order_revision_items WHERE revision_id = $2",
    )
    .bind(revision.order_id)
    .bind(revision.id)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as(concat!(
        "UPDATE orders SET state = 'APPROVED', total_cents = $2, rejection_reason = NULL,
             updated_at = now()
         WHERE id = $1 RETURNING ",
        order_columns!(),
        ""
    ))
    .bind(revision.order_id)
    .bind(revision.total_cents)
    .fetch_one(conn)
    .await
}
