CREATE TABLE orders (
    id               UUID        PRIMARY KEY,
    -- The verified subject (user id) the gateway passed; ownership is enforced on it.
    user_id          TEXT        NOT NULL,
    state            TEXT        NOT NULL
                     CHECK (state IN ('PENDING', 'APPROVED', 'REJECTED', 'CANCELLED')),
    total_cents      BIGINT      NOT NULL CHECK (total_cents >= 0),
    currency         TEXT        NOT NULL,
    rejection_reason TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX orders_by_user ON orders (user_id, created_at DESC);

CREATE TABLE order_items (
    order_id         UUID   NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id       UUID   NOT NULL,
    quantity         BIGINT NOT NULL CHECK (quantity > 0),
    -- The price catalog quoted when the order was placed.
    unit_price_cents BIGINT NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, product_id)
);

-- Messaging tables (see crates/messaging). The outbox is written in the same
-- transaction as the business change; the relay publishes and marks rows.
CREATE TABLE outbox (
    seq          BIGSERIAL PRIMARY KEY,
    message_id   UUID        NOT NULL UNIQUE,
    exchange     TEXT        NOT NULL,
    routing_key  TEXT        NOT NULL,
    envelope     JSONB       NOT NULL,
    payload      JSONB       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
-- The relay only ever looks for unpublished rows, oldest first.
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;

-- The idempotent consumer: a message id is claimed in the handler transaction.
CREATE TABLE processed_messages (
    consumer     TEXT        NOT NULL,
    message_id   UUID        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
