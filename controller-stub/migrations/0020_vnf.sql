-- VNF configuration plugin and relay endpoint: per-instance keys, desired configurations with
-- their delivery status, and the relay hosts with the guests they serve.
-- Portable between SQLite and PostgreSQL (see src/db.rs): TEXT and BIGINT only.

-- The per-instance key the controller and the instance's agent share (64 hex digits). Whoever
-- reads this table can speak for every instance: protect the database (the SQLite file is
-- created 0600; see README).
CREATE TABLE vnf_instance_keys (
    instance_id TEXT PRIMARY KEY,
    key_hex TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Desired configuration per (instance, service). A row outlives a DELETE (deleted = 1) so that
-- versions never go back: an agent refuses a version older than the one it has applied.
CREATE TABLE vnf_configs (
    instance_id TEXT NOT NULL,
    service TEXT NOT NULL,
    project_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    -- A fresh UUID per version; the agent checks that a version comes with one config id.
    config_id TEXT NOT NULL,
    -- 'json': payload is the compact JSON text sent as is; 'base64': payload is base64 of the
    -- bytes sent.
    payload_kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    -- pending | delivered | applied | failed
    status TEXT NOT NULL,
    applied_version BIGINT,
    message TEXT,
    deleted BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (instance_id, service)
);

-- Relay hosts by the name their client certificate carries.
CREATE TABLE relay_hosts (
    host TEXT PRIMARY KEY,
    connected BIGINT NOT NULL,
    relay_version TEXT NOT NULL,
    peer_address TEXT NOT NULL,
    connected_at TEXT NOT NULL,
    last_seen TEXT NOT NULL
);

-- The guests a relay host reported (Register replaces the set, GuestUp/GuestDown edit it). A
-- guest being migrated may show on two hosts for a moment.
CREATE TABLE relay_guests (
    host TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    name TEXT NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (host, instance_id)
);
CREATE INDEX relay_guests_instance ON relay_guests (instance_id);
