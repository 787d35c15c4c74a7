-- The reply to a socket command, kept with its processed-messages claim
-- (crates/orders/src/inbound.rs): a resent command (same user, same command
-- id, so the same message id) gets the stored reply again. NULL for every
-- other consumer's rows.
ALTER TABLE processed_messages ADD COLUMN reply JSONB;
