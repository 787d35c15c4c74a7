-- Revisions of an order's items (crates/orders/src/saga.rs, the revision step).
--
-- A revision is stored with its priced items when it is accepted and stays
-- PENDING until catalog answers its `revise_stock`: APPLIED (the order took
-- its items), REJECTED (with catalog's reason; the order is unchanged) or
-- SUPERSEDED (the order was decided otherwise before the answer came).
CREATE TABLE order_revisions (
    id          UUID        PRIMARY KEY,
    order_id    UUID        NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    state       TEXT        NOT NULL
                CHECK (state IN ('PENDING', 'APPLIED', 'REJECTED', 'SUPERSEDED')),
    total_cents BIGINT      NOT NULL CHECK (total_cents >= 0),
    reason      TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_at  TIMESTAMPTZ
);
-- At most one revision in flight per order: a second one, or a cancellation,
-- waits until catalog has answered the first (the order row lock decides the
-- race; this index keeps the rule even if a code path forgot the check).
CREATE UNIQUE INDEX order_revisions_one_pending ON order_revisions (order_id)
    WHERE state = 'PENDING';

CREATE TABLE order_revision_items (
    revision_id      UUID   NOT NULL REFERENCES order_revisions (id) ON DELETE CASCADE,
    product_id       UUID   NOT NULL,
    quantity         BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_cents BIGINT NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (revision_id, product_id)
);
