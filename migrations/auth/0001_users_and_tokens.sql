CREATE TABLE users (
    id            UUID        PRIMARY KEY,
    -- Stored lower-cased and trimmed; uniqueness is case-insensitive.
    email         TEXT        NOT NULL UNIQUE,
    -- PHC string: algorithm, parameters, salt and hash (argon2id).
    password_hash TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Refresh tokens are opaque random strings; only their SHA-256 is stored.
-- Every rotation creates a new row in the same family; presenting a rotated
-- token again revokes the whole family (reuse detection).
CREATE TABLE refresh_tokens (
    token_hash  BYTEA       PRIMARY KEY,
    user_id     UUID        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   UUID        NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    rotated_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
