-- networking-sfc's resources: port pairs, port pair groups, flow classifiers, port chains and
-- service graphs, with the associations between them. Modelled on networking-sfc's own tables
-- (networking_sfc/db/sfc_db.py, flowclassifier_db.py) so that the single-ownership and
-- uniqueness rules of the API also hold in the database:
--   * a (ingress, egress) pair of Neutron ports is used by one port pair;
--   * a port pair is a member of at most one port pair group (primary key of the membership);
--   * group ids and chain ids are unique;
--   * a flow classifier belongs to at most one port chain (primary key of the association);
--   * Neutron ports, port pairs, groups and classifiers in use cannot be deleted (RESTRICT),
--     so deleting a Neutron port a port pair or classifier references fails, as in Neutron.
-- Parameter dictionaries are JSON documents in TEXT columns. Portable between SQLite and
-- PostgreSQL (see src/db.rs): TEXT and BIGINT only, booleans as BIGINT 0/1.

CREATE TABLE sfc_port_pair_groups (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    -- Lowest free integer >= 1; the OVS driver's OpenFlow group id.
    group_id BIGINT NOT NULL UNIQUE,
    tap_enabled BIGINT NOT NULL DEFAULT 0,
    -- JSON: {"lb_fields": [...], "ppg_n_tuple_mapping": {...}}
    port_pair_group_parameters TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX sfc_port_pair_groups_project ON sfc_port_pair_groups (project_id);

CREATE TABLE sfc_port_pairs (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    ingress TEXT NOT NULL REFERENCES ports (id) ON DELETE RESTRICT,
    egress TEXT NOT NULL REFERENCES ports (id) ON DELETE RESTRICT,
    -- JSON: {"correlation": null|"mpls"|"nsh", "weight": n}
    service_function_parameters TEXT NOT NULL,
    created_at TEXT NOT NULL,
    CONSTRAINT uniq_sfc_port_pairs0ingress0egress UNIQUE (ingress, egress)
);
CREATE INDEX sfc_port_pairs_project ON sfc_port_pairs (project_id);
CREATE INDEX sfc_port_pairs_egress ON sfc_port_pairs (egress);

-- Membership of port pairs in groups, in the order the group lists them. The port pair is the
-- key: one group at most.
CREATE TABLE sfc_port_pair_group_members (
    portpair_id TEXT PRIMARY KEY REFERENCES sfc_port_pairs (id) ON DELETE RESTRICT,
    portpairgroup_id TEXT NOT NULL REFERENCES sfc_port_pair_groups (id) ON DELETE CASCADE,
    position BIGINT NOT NULL
);
CREATE INDEX sfc_port_pair_group_members_group ON sfc_port_pair_group_members (portpairgroup_id);

CREATE TABLE sfc_flow_classifiers (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    ethertype TEXT NOT NULL,
    protocol TEXT,
    source_port_range_min BIGINT,
    source_port_range_max BIGINT,
    destination_port_range_min BIGINT,
    destination_port_range_max BIGINT,
    source_ip_prefix TEXT,
    destination_ip_prefix TEXT,
    logical_source_port TEXT REFERENCES ports (id) ON DELETE RESTRICT,
    logical_destination_port TEXT REFERENCES ports (id) ON DELETE RESTRICT,
    -- JSON object; networking-sfc supports no key yet, so it is always {}.
    l7_parameters TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX sfc_flow_classifiers_project ON sfc_flow_classifiers (project_id);
CREATE INDEX sfc_flow_classifiers_lsp ON sfc_flow_classifiers (logical_source_port);
CREATE INDEX sfc_flow_classifiers_ldp ON sfc_flow_classifiers (logical_destination_port);

CREATE TABLE sfc_port_chains (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    -- 1..65535; the service path identifier (nsp) of the chain's flows.
    chain_id BIGINT NOT NULL UNIQUE,
    -- JSON: {"correlation": "mpls"|"nsh", "symmetric": bool}
    chain_parameters TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX sfc_port_chains_project ON sfc_port_chains (project_id);

-- The chain's hops in order.
CREATE TABLE sfc_chain_group_associations (
    portchain_id TEXT NOT NULL REFERENCES sfc_port_chains (id) ON DELETE CASCADE,
    portpairgroup_id TEXT NOT NULL REFERENCES sfc_port_pair_groups (id) ON DELETE RESTRICT,
    position BIGINT NOT NULL,
    PRIMARY KEY (portchain_id, portpairgroup_id),
    CONSTRAINT uniq_sfc_chain_group_position UNIQUE (portchain_id, position)
);
CREATE INDEX sfc_chain_group_associations_group ON sfc_chain_group_associations (portpairgroup_id);

-- A classifier steers into one chain at most: it is the key.
CREATE TABLE sfc_chain_classifier_associations (
    flowclassifier_id TEXT PRIMARY KEY REFERENCES sfc_flow_classifiers (id) ON DELETE RESTRICT,
    portchain_id TEXT NOT NULL REFERENCES sfc_port_chains (id) ON DELETE CASCADE,
    position BIGINT NOT NULL
);
CREATE INDEX sfc_chain_classifier_associations_chain ON sfc_chain_classifier_associations (portchain_id);

CREATE TABLE sfc_service_graphs (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE INDEX sfc_service_graphs_project ON sfc_service_graphs (project_id);

-- Edges src chain -> dst chain; position keeps the order of the request's lists. Chains in a
-- graph cannot be deleted (RESTRICT; the API answers 409 ServiceGraphPortChainInUse first).
CREATE TABLE sfc_service_graph_chain_associations (
    service_graph_id TEXT NOT NULL REFERENCES sfc_service_graphs (id) ON DELETE CASCADE,
    src_chain TEXT NOT NULL REFERENCES sfc_port_chains (id) ON DELETE RESTRICT,
    dst_chain TEXT NOT NULL REFERENCES sfc_port_chains (id) ON DELETE RESTRICT,
    position BIGINT NOT NULL,
    PRIMARY KEY (service_graph_id, src_chain, dst_chain)
);
CREATE INDEX sfc_graph_assoc_src ON sfc_service_graph_chain_associations (src_chain);
CREATE INDEX sfc_graph_assoc_dst ON sfc_service_graph_chain_associations (dst_chain);
