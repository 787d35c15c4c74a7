CREATE TABLE products (
    id          UUID        PRIMARY KEY,
    sku         TEXT        NOT NULL UNIQUE,
    name        TEXT        NOT NULL,
    -- Money in the smallest unit, never floating point.
    price_cents BIGINT      NOT NULL CHECK (price_cents >= 0),
    currency    TEXT        NOT NULL DEFAULT 'EUR',
    -- Units available for new reservations; reserved units are subtracted.
    stock       BIGINT      NOT NULL CHECK (stock >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One reservation per order, all items or none.
CREATE TABLE reservations (
    order_id   UUID        PRIMARY KEY,
    state      TEXT        NOT NULL CHECK (state IN ('RESERVED', 'RELEASED')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE reservation_items (
    order_id   UUID   NOT NULL REFERENCES reservations (order_id) ON DELETE CASCADE,
    product_id UUID   NOT NULL REFERENCES products (id),
    quantity   BIGINT NOT NULL CHECK (quantity > 0),
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
