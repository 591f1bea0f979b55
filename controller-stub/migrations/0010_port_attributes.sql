-- Port attributes beyond 0001's core columns, which a stock client sets and reads back.
-- Portable between SQLite and PostgreSQL (see src/db.rs): ADD COLUMN with a constant default.

-- Neutron's port-security extension: off lets a VNF forward traffic not addressed to it.
ALTER TABLE ports ADD COLUMN port_security_enabled BIGINT NOT NULL DEFAULT 1;
-- JSON list of {"ip_address", "mac_address"}, the MAC filled in with the port's own.
ALTER TABLE ports ADD COLUMN allowed_address_pairs TEXT NOT NULL DEFAULT '[]';
-- JSON list of strings (standard-attr-tag, set on create).
ALTER TABLE ports ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
-- binding:vnic_type and binding:profile (a JSON object).
ALTER TABLE ports ADD COLUMN vnic_type TEXT NOT NULL DEFAULT 'normal';
ALTER TABLE ports ADD COLUMN binding_profile TEXT NOT NULL DEFAULT '{}';

-- Creation order of subnets and ports. Timestamps have one-second resolution, so they cannot
-- order what one client creates in a burst; the order matters for subnets (a port without
-- fixed_ips takes its address from the first subnet of each IP version that has room) and
-- keeps lists stable. Set to MAX + 1 inside the serialised write transaction.
ALTER TABLE subnets ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ports ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
