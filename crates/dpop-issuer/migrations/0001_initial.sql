-- The issuer's state. Portable SQL: the same migrations run on SQLite and PostgreSQL.
-- Times are Unix seconds (BIGINT); lists are space-separated TEXT.

-- Signing keys' public halves and lifecycle (private halves live in the data directory).
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- No new tokens are signed with a retired key.
    retired_at BIGINT,
    -- The public key leaves the JWKS after this (the last token it signed has expired).
    publish_until BIGINT
);

-- One refresh family per grant: every rotation of its refresh token shares it, so a
-- reused token revokes them all.
CREATE TABLE refresh_families (
    family_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX refresh_families_client ON refresh_families (client_id);

-- Refresh tokens, by the SHA-256 of their value (the value itself is never stored).
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    scope TEXT NOT NULL,
    audience TEXT NOT NULL,
    jkt TEXT,
    act TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- Revoked access tokens by jti, until they would have expired anyway.
CREATE TABLE revoked_access_tokens (
    jti TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Single-use values: DPoP proof replay keys and private_key_jwt assertion ids.
CREATE TABLE replay (
    replay_key TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX replay_expires ON replay (expires_at);

-- Offboarding: a disabled client is refused, and every token issued to it before
-- tokens_invalid_before is inactive.
CREATE TABLE client_state (
    client_id TEXT PRIMARY KEY,
    disabled_at BIGINT,
    tokens_invalid_before BIGINT
);

-- Shared settings, e.g. the DPoP nonce secret all instances use.
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
