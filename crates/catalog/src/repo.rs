//! Catalog persistence (sqlx, PostgreSQL).

use std::collections::{BTreeMap, HashMap};

use signalbox_messages::orders::LineItem;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::Product;

pub async fn list_products(pool: &PgPool) -> Result<Vec<Product>, sqlx::Error> {
    sqlx::query_as("SELECT id, sku, name, price_cents, currency, stock FROM products ORDER BY sku")
        .fetch_all(pool)
        .await
}

pub async fn products_by_id(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Product>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, sku, name, price_cents, currency, stock FROM products WHERE id = ANY($1) ORDER BY sku",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Product `id`, locked for the rest of the transaction.
pub async fn lock_product(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Product>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, sku, name, price_cents, currency, stock FROM products WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Sets the price and/or stock of product `id` (a `None` keeps the value)
/// and returns the product as it is now.
pub async fn update_product(
    conn: &mut PgConnection,
    id: Uuid,
    price_cents: Option<i64>,
    stock: Option<i64>,
) -> Result<Product, sqlx::Error> {
    sqlx::query_as(
        "UPDATE products
         SET price_cents = COALESCE($2, price_cents), stock = COALESCE($3, stock),
             updated_at = now()
         WHERE id = $1
         RETURNING id, sku, name, price_cents, currency, stock",
    )
    .bind(id)
    .bind(price_cents)
    .bind(stock)
    .fetch_one(conn)
    .await
}

/// Locks the stock rows of `ids` for the rest of the transaction, in id order
/// so that two concurrent reservations cannot deadlock each other.
pub async fn lock_stock(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT id, stock FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(ids)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().collect())
}

/// The state of the reservation for `order_id`, if one was ever made.
pub async fn reservation_state(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT state FROM reservations WHERE order_id = $1 FOR UPDATE")
        .bind(order_id)
        .fetch_optional(conn)
        .await
}

/// Takes the items out of stock and records the reservation, in one
/// statement. The caller has checked availability under [`lock_stock`],
/// and those rows stay locked until the commit: every round trip between
/// the lock and the commit makes the next reservation of the same product
/// wait, so this is one round trip, whatever the number of items.
pub async fn reserve(
    conn: &mut PgConnection,
    order_id: Uuid,
    items: &[LineItem],
) -> Result<(), sqlx::Error> {
    // One row per product (an order may name a product twice), so the
    // statement updates each product once.
    let mut totals: BTreeMap<Uuid, i64> = BTreeMap::new();
    for item in items {
        *totals.entry(item.product_id).or_default() += item.quantity;
    }
    let (ids, quantities): (Vec<Uuid>, Vec<i64>) = totals.into_iter().unzip();
    // Every sub-statement of a WITH runs, read or not; the items' foreign
    // keys are checked at the end of the statement, after the reservation
    // row is in.
    sqlx::query(
        "WITH wanted (product_id, quantity) AS (
             SELECT * FROM unnest($2::uuid[], $3::bigint[])
         ),
         reservation AS (
             INSERT INTO reservations (order_id, state) VALUES ($1, 'RESERVED')
         ),
         taken AS (
             UPDATE products p SET stock = p.stock - w.quantity, updated_at = now()
             FROM wanted w
             WHERE p.id = w.product_id
         )
         INSERT INTO reservation_items (order_id, product_id, quantity)
         SELECT $1, product_id, quantity FROM wanted",
    )
    .bind(order_id)
    .bind(&ids)
    .bind(&quantities)
    .execute(conn)
    .await?;
    Ok(())
}

/// Puts a reservation's items back into stock. Returns `false` when there was
/// nothing to release (never reserved, or released before).
///
/// Releasing an order that was never reserved leaves a `RELEASED` marker, so
/// a reservation that arrives *after* its release (it should not, the
/// commands are sharded by order, but a replayed dead letter can) is refused
/// instead of holding stock for a cancelled order.
pub async fn release(conn: &mut PgConnection, order_id: Uuid) -> Result<bool, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE reservations SET state = 'RELEASED', updated_at = now()
         WHERE order_id = $1 AND state = 'RESERVED'",
    )
    .bind(order_id)
    .execute(&mut *conn)
    .await?;
    if released.rows_affected() == 0 {
        sqlx::query(
            "INSERT INTO reservations (order_id, state) VALUES ($1, 'RELEASED')
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .execute(&mut *conn)
        .await?;
        return Ok(false);
    }
    sqlx::query(
        "UPDATE products p SET stock = p.stock + r.quantity, updated_at = now()
         FROM reservation_items r
         WHERE r.order_id = $1 AND r.product_id = p.id",
    )
    .bind(order_id)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}
