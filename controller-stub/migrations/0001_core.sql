-- Neutron core: networks, subnets, ports and their fixed IPs.
-- Portable between SQLite and PostgreSQL (see src/db.rs): TEXT and BIGINT only; booleans are
-- BIGINT 0/1 (sqlx's Any driver cannot read SQLite booleans); JSON in TEXT.

CREATE TABLE networks (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    admin_state_up BIGINT NOT NULL,
    shared BIGINT NOT NULL,
    mtu BIGINT NOT NULL,
    -- The VXLAN network identifier, lowest free from 1; chains cross hosts in it.
    segmentation_id BIGINT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    revision_number BIGINT NOT NULL
);
CREATE INDEX networks_project ON networks (project_id);

CREATE TABLE subnets (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    network_id TEXT NOT NULL REFERENCES networks (id) ON DELETE RESTRICT,
    name TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    ip_version BIGINT NOT NULL,
    cidr TEXT NOT NULL,
    gateway_ip TEXT,
    enable_dhcp BIGINT NOT NULL,
    -- JSON lists, as the API returns them.
    allocation_pools TEXT NOT NULL,
    dns_nameservers TEXT NOT NULL,
    host_routes TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    revision_number BIGINT NOT NULL
);
CREATE INDEX subnets_network ON subnets (network_id);

CREATE TABLE ports (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    network_id TEXT NOT NULL REFERENCES networks (id) ON DELETE RESTRICT,
    name TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    admin_state_up BIGINT NOT NULL,
    mac_address TEXT NOT NULL UNIQUE,
    device_id TEXT NOT NULL DEFAULT '',
    device_owner TEXT NOT NULL DEFAULT '',
    host_id TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    revision_number BIGINT NOT NULL
);
CREATE INDEX ports_network ON ports (network_id);
CREATE INDEX ports_device ON ports (device_id);

CREATE TABLE port_ips (
    port_id TEXT NOT NULL REFERENCES ports (id) ON DELETE CASCADE,
    subnet_id TEXT NOT NULL REFERENCES subnets (id) ON DELETE RESTRICT,
    ip_address TEXT NOT NULL,
    PRIMARY KEY (subnet_id, ip_address)
);
CREATE INDEX port_ips_port ON port_ips (port_id);
