-- The saga's deadline on the stock reservation (crates/orders/src/saga_timeouts.rs).
--
-- An order whose reservation was not answered in time is rejected by the
-- sweeper with this flag set. The reply handler needs the flag to tell such
-- an order from one catalog rejected: if catalog's `reserved` arrives late,
-- only a timed-out order must have its stock released again (compensation).
ALTER TABLE orders
    ADD COLUMN reservation_timed_out BOOLEAN NOT NULL DEFAULT false;

-- The sweeper looks for the oldest PENDING orders; a partial index keeps that
-- cheap however many decided orders the table holds.
CREATE INDEX orders_pending_by_age ON orders (created_at) WHERE state = 'PENDING';
