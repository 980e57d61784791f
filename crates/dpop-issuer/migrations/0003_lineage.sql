-- Lineage: what a refresh family was derived from by token exchange, so that revoking an
-- ancestor (its client disabled, its refresh family or its access token revoked) ends the
-- family too. One row per ancestor token, oldest first (seq 0), the last being the subject
-- token of the exchange that started the family: the client it was issued to, its iat
-- and jti, and the refresh family it was itself issued from. The actor is the family's
-- client_id.
CREATE TABLE family_lineage (
    family_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    client_id TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    jti TEXT NOT NULL,
    parent_family_id TEXT,
    PRIMARY KEY (family_id, seq)
);
CREATE INDEX family_lineage_client ON family_lineage (client_id);
CREATE INDEX family_lineage_parent ON family_lineage (parent_family_id);
CREATE INDEX family_lineage_jti ON family_lineage (jti);

-- Every refresh grant of the version before lineage was recorded was started by a token
-- exchange (of this issuer's own token, by its client or another, or of a trusted
-- issuer's token), and none can be traced to the token it came from: nothing could
-- revoke them with their ancestors, nor tell whether they may outlive their subject
-- token. They all end here; their clients start new grants. The time recorded is their
-- creation, the only time at hand.
UPDATE refresh_families SET revoked_at = created_at WHERE revoked_at IS NULL;
