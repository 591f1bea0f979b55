-- The OVS driver's record of what it sent where (src/drivers/ovs/mod.rs): per chain and host,
-- the rules' version and digest (so an unchanged host is not sent the same rules again, and a
-- host that drops out of a chain gets ChainRemoved), and the last state the host's relay
-- reported for that version. No foreign key to the chain: the row outlives the chain until
-- the driver has told the host to remove it. Portable between SQLite and PostgreSQL.
CREATE TABLE sfc_ovs_chain_hosts (
    portchain_id TEXT NOT NULL,
    host TEXT NOT NULL,
    -- The chain's cookie on the host: its chain_id.
    cookie BIGINT NOT NULL,
    version BIGINT NOT NULL,
    -- SHA-256 of the rules, hex.
    digest TEXT NOT NULL,
    flows BIGINT NOT NULL,
    groups BIGINT NOT NULL,
    -- sent | installed | pending | rejected | failed
    state TEXT NOT NULL,
    -- The relay's reason (rejected, failed) or missing ports (pending); '' otherwise.
    detail TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL,
    PRIMARY KEY (portchain_id, host)
);
CREATE INDEX sfc_ovs_chain_hosts_host ON sfc_ovs_chain_hosts (host);
