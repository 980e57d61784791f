-- Key ids that a rotation retired, kept after their signing_keys rows are purged: a key
-- the operator manages (a key file, an HSM key) can be named again after its retirement,
-- and a retired key must never sign again.
CREATE TABLE retired_keys (
    kid TEXT PRIMARY KEY,
    retired_at BIGINT NOT NULL
);
