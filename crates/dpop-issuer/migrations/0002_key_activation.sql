-- A rotated key is published before it signs, so every instance and resource server
-- knows it by the time tokens signed with it arrive. NULL: active from creation.
ALTER TABLE signing_keys ADD COLUMN active_from BIGINT;
