//! The command grammar of `sfc`: neutron-CLI style subcommands (`port-pair-create`,
//! `port-chain-list`, ...) with the options of the neutron and networking-sfc clients. Only the
//! shape of the input is checked here; values that need parsing (port ranges, `k=v` lists) are
//! checked in [`super::plan`], which reports them as usage errors.

use clap::{Args as ClapArgs, Parser, Subcommand};

/// `sfc [global options] <command> [options]`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sfc",
    version,
    about = "Command-line client of the port-chain controller (Neutron and networking-sfc API)",
    after_help = "Resources may be named by name or by ID wherever a command takes one."
)]
pub struct Args {
    /// Base URL of the controller's API.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "SFC_URL",
        default_value = "http://127.0.0.1:9696"
    )]
    pub url: String,
    /// Project to act as (sent as X-Project-Id; the controller's noauth mode).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "SFC_PROJECT"
    )]
    pub project: Option<String>,
    /// Token to authenticate with (sent as X-Auth-Token).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "SFC_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the response object (or list) as JSON instead of a table.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    /// Show only this field (repeatable): rows of a show, columns of a list.
    #[arg(
        short = 'f',
        long = "field",
        visible_alias = "fields",
        global = true,
        help_heading = "Global options",
        value_name = "FIELD"
    )]
    pub fields: Vec<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Create a network.
    NetCreate(NetCreate),
    /// List networks.
    NetList(ListArgs),
    /// Show a network.
    NetShow(Target),
    /// Update a network.
    NetUpdate(NetUpdate),
    /// Delete networks.
    NetDelete(Targets),

    /// Create a subnet on a network.
    SubnetCreate(SubnetCreate),
    /// List subnets.
    SubnetList(ListArgs),
    /// Show a subnet.
    SubnetShow(Target),
    /// Delete subnets.
    SubnetDelete(Targets),

    /// Create a port on a network.
    PortCreate(PortCreate),
    /// List ports.
    PortList(ListArgs),
    /// Show a port.
    PortShow(Target),
    /// Update a port.
    PortUpdate(PortUpdate),
    /// Delete ports.
    PortDelete(Targets),

    /// Create a port pair (the ingress and egress port of one service function).
    PortPairCreate(PortPairCreate),
    /// List port pairs.
    PortPairList(ListArgs),
    /// Show a port pair.
    PortPairShow(Target),
    /// Update a port pair's name or description.
    PortPairUpdate(NameUpdate),
    /// Delete port pairs.
    PortPairDelete(Targets),

    /// Create a port pair group (port pairs that share the load of one hop).
    PortPairGroupCreate(PortPairGroupCreate),
    /// List port pair groups.
    PortPairGroupList(ListArgs),
    /// Show a port pair group.
    PortPairGroupShow(Target),
    /// Update a port pair group.
    PortPairGroupUpdate(PortPairGroupUpdate),
    /// Delete port pair groups.
    PortPairGroupDelete(Targets),

    /// Create a flow classifier.
    FlowClassifierCreate(FlowClassifierCreate),
    /// List flow classifiers.
    FlowClassifierList(ListArgs),
    /// Show a flow classifier.
    FlowClassifierShow(Target),
    /// Update a flow classifier's name or description.
    FlowClassifierUpdate(NameUpdate),
    /// Delete flow classifiers.
    FlowClassifierDelete(Targets),

    /// Create a port chain.
    PortChainCreate(PortChainCreate),
    /// List port chains.
    PortChainList(ListArgs),
    /// Show a port chain.
    PortChainShow(Target),
    /// Update a port chain.
    PortChainUpdate(PortChainUpdate),
    /// Delete port chains.
    PortChainDelete(Targets),

    /// Create a service graph (branching between port chains).
    ServiceGraphCreate(ServiceGraphCreate),
    /// List service graphs.
    ServiceGraphList(ListArgs),
    /// Show a service graph.
    ServiceGraphShow(Target),
    /// Update a service graph's name or description.
    ServiceGraphUpdate(NameUpdate),
    /// Delete service graphs.
    ServiceGraphDelete(Targets),

    /// Set the desired configuration of one service on a VNF instance.
    VnfConfigSet(VnfConfigSet),
    /// Show the configurations of a VNF instance, or one of them with its payload.
    VnfConfigShow(VnfConfigShow),
    /// Delete the configuration of one service on a VNF instance.
    VnfConfigDelete(VnfConfigRef),
    /// Create the authentication key of a VNF instance (admin): generated, or imported with
    /// --key.
    VnfKeyCreate(VnfKeyCreate),
    /// Show the authentication key of a VNF instance (admin).
    VnfKeyShow(VnfInstance),
    /// List the relay hosts and their guests.
    VnfHostList,
}

/// One resource, by name or ID.
#[derive(Debug, Clone, ClapArgs)]
pub struct Target {
    /// Name or ID.
    #[arg(value_name = "NAME_OR_ID")]
    pub target: String,
}

/// One or more resources, by name or ID.
#[derive(Debug, Clone, ClapArgs)]
pub struct Targets {
    /// Names or IDs.
    #[arg(value_name = "NAME_OR_ID", required = true)]
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct ListArgs {
    /// Only resources whose attribute KEY equals VALUE (repeatable), e.g. `device_id=vm1`.
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
}

/// `--name` and `--description`, the attributes every resource lets a PUT change.
#[derive(Debug, Clone, ClapArgs)]
pub struct NameUpdate {
    /// Name or ID of the resource to update.
    #[arg(value_name = "NAME_OR_ID")]
    pub target: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// New description.
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct NetCreate {
    /// Name of the network.
    pub name: String,
    /// Description text.
    #[arg(long)]
    pub description: Option<String>,
    /// MTU of the network (default: the controller's, 1450 for VXLAN).
    #[arg(long)]
    pub mtu: Option<i64>,
    /// Let every project use the network.
    #[arg(long)]
    pub shared: bool,
    /// Create the network administratively down.
    #[arg(long)]
    pub admin_state_down: bool,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct NetUpdate {
    /// Name or ID of the network.
    #[arg(value_name = "NAME_OR_ID")]
    pub target: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// Description text.
    #[arg(long)]
    pub description: Option<String>,
    /// New MTU.
    #[arg(long)]
    pub mtu: Option<i64>,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct SubnetCreate {
    /// Name or ID of the network.
    #[arg(value_name = "NET")]
    pub network: String,
    /// Address range, e.g. 10.0.0.0/24.
    pub cidr: String,
    /// Name of the subnet.
    #[arg(long)]
    pub name: Option<String>,
    /// Description text.
    #[arg(long)]
    pub description: Option<String>,
    /// IP version (default: taken from CIDR).
    #[arg(long, value_parser = ["4", "6"])]
    pub ip_version: Option<String>,
    /// Gateway address (default: the controller picks the first address).
    #[arg(long, value_name = "IP", conflicts_with = "no_gateway")]
    pub gateway: Option<String>,
    /// No gateway on this subnet.
    #[arg(long)]
    pub no_gateway: bool,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct PortCreate {
    /// Name or ID of the network.
    #[arg(value_name = "NET")]
    pub network: String,
    /// Name of the port.
    #[arg(long)]
    pub name: Option<String>,
    /// Description text.
    #[arg(long)]
    pub description: Option<String>,
    /// The device (Nova instance) the port is attached to.
    #[arg(long)]
    pub device_id: Option<String>,
    /// What owns the port, e.g. `compute:nova`.
    #[arg(long)]
    pub device_owner: Option<String>,
    /// Host the port is bound to (binding:host_id).
    #[arg(long)]
    pub host: Option<String>,
    /// `subnet_id=SUBNET,ip_address=IP` (either part may be left out; repeatable; SUBNET by
    /// name or ID).
    #[arg(long = "fixed-ip", value_name = "subnet_id=SUBNET,ip_address=IP")]
    pub fixed_ips: Vec<String>,
    /// MAC address (default: the controller picks one).
    #[arg(long)]
    pub mac_address: Option<String>,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct PortUpdate {
    /// Name or ID of the port.
    #[arg(value_name = "NAME_OR_ID")]
    pub target: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// Description text.
    #[arg(long)]
    pub description: Option<String>,
    /// The device (Nova instance) the port is attached to.
    #[arg(long)]
    pub device_id: Option<String>,
    /// What owns the port, e.g. `compute:nova`.
    #[arg(long)]
    pub device_owner: Option<String>,
    /// Host the port is bound to (binding:host_id).
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct PortPairCreate {
    /// Name of the port pair.
    pub name: String,
    /// Port traffic enters the service function by (name or ID).
    #[arg(long)]
    pub ingress: String,
    /// Port traffic leaves the service function by (name or ID).
    #[arg(long)]
    pub egress: String,
    /// Description text.
    #[arg(long)]
    pub description: Option<String>,
    /// `correlation=mpls|nsh|none,weight=N` (repeatable).
    #[arg(long = "service-function-parameters", value_name = "KEY=VALUE,...")]
    pub service_function_parameters: Vec<String>,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct PortPairGroupCreate {
    /// Name of the port pair group.
    pub name: String,
    /// A port pair of the group (name or ID; repeatable, order kept).
    #[arg(long = "port-pair", value_name = "PORT_PAIR")]
    pub port_pairs: Vec<String>,
    /// Description text.
    #[arg(long)]
    pub description: Option<String>,
    /// Fields the load is balanced on, joined by `&`, e.g. `ip_src&ip_dst`.
    #[arg(long)]
    pub lb_fields: Option<String>,
    /// One field the load is balanced on (repeatable; added to --lb-fields).
    #[arg(long = "lb-field", value_name = "FIELD")]
    pub lb_field: Vec<String>,
    /// Ingress n-tuple mapping, e.g. `source_ip_prefix=10.0.0.0/24,source_port_range_min=80`.
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub ingress_n_tuple: Vec<String>,
    /// Egress n-tuple mapping (same keys as --ingress-n-tuple).
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub egress_n_tuple: Vec<String>,
    /// Make this a tap group (a copy of the traffic goes to its single port pair).
    #[arg(long)]
    pub enable_tap: bool,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct PortPairGroupUpdate {
    /// Name or ID of the port pair group.
    #[arg(value_name = "NAME_OR_ID")]
    pub target: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// Description text.
    #[arg(long)]
    pub description: Option<String>,
    /// The group's port pairs (repeatable): replaces the whole list.
    #[arg(
        long = "port-pair",
        value_name = "PORT_PAIR",
        conflicts_with = "no_port_pair"
    )]
    pub port_pairs: Vec<String>,
    /// Remove every port pair from the group.
    #[arg(long)]
    pub no_port_pair: bool,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct FlowClassifierCreate {
    /// Name of the flow classifier.
    pub name: String,
    /// Description text.
    #[arg(long)]
    pub description: Option<String>,
    /// IPv4 or IPv6 (controller default IPv4).
    #[arg(long)]
    pub ethertype: Option<String>,
    /// tcp, udp or icmp.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Source addresses, e.g. 22.1.20.1/32.
    #[arg(long, value_name = "CIDR")]
    pub source_ip_prefix: Option<String>,
    /// Destination addresses.
    #[arg(long, value_name = "CIDR")]
    pub destination_ip_prefix: Option<String>,
    /// `MIN:MAX`, or `PORT` for one port.
    #[arg(long, value_name = "MIN:MAX")]
    pub source_port: Option<String>,
    /// `MIN:MAX`, or `PORT` for one port.
    #[arg(long, value_name = "MIN:MAX")]
    pub destination_port: Option<String>,
    /// Port the traffic comes from (name or ID; the OVS driver requires it).
    #[arg(long, value_name = "PORT")]
    pub logical_source_port: Option<String>,
    /// Port the traffic goes to (name or ID; needed for symmetric chains).
    #[arg(long, value_name = "PORT")]
    pub logical_destination_port: Option<String>,
    /// Layer-7 parameters `KEY=VALUE,...` (repeatable).
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub l7_parameters: Vec<String>,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct PortChainCreate {
    /// Name of the port chain.
    pub name: String,
    /// A hop of the chain (name or ID; repeatable, in chain order).
    #[arg(
        long = "port-pair-group",
        value_name = "PORT_PAIR_GROUP",
        required = true
    )]
    pub port_pair_groups: Vec<String>,
    /// A flow classifier of the chain (name or ID; repeatable).
    #[arg(long = "flow-classifier", value_name = "FLOW_CLASSIFIER")]
    pub flow_classifiers: Vec<String>,
    /// Description text.
    #[arg(long)]
    pub description: Option<String>,
    /// `correlation=mpls|nsh,symmetric=true|false` (repeatable).
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub chain_parameters: Vec<String>,
    /// Chain id (the path id on the wire); default: the lowest free one.
    #[arg(long)]
    pub chain_id: Option<i64>,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct PortChainUpdate {
    /// Name or ID of the port chain.
    #[arg(value_name = "NAME_OR_ID")]
    pub target: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// Description text.
    #[arg(long)]
    pub description: Option<String>,
    /// The chain's hops (repeatable, in order): replaces the whole list.
    #[arg(long = "port-pair-group", value_name = "PORT_PAIR_GROUP")]
    pub port_pair_groups: Vec<String>,
    /// The chain's flow classifiers (repeatable): replaces the whole list.
    #[arg(
        long = "flow-classifier",
        value_name = "FLOW_CLASSIFIER",
        conflicts_with = "no_flow_classifier"
    )]
    pub flow_classifiers: Vec<String>,
    /// Remove every flow classifier from the chain.
    #[arg(long)]
    pub no_flow_classifier: bool,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct ServiceGraphCreate {
    /// Name of the service graph.
    pub name: String,
    /// `SRC_CHAIN:DST_CHAIN,DST_CHAIN...`: traffic leaving SRC_CHAIN continues on the
    /// destination chains (names or IDs; repeatable).
    #[arg(long = "branching-point", value_name = "SRC:DST,...", required = true)]
    pub branching_points: Vec<String>,
    /// Description text.
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct VnfInstance {
    /// The VNF's instance (Nova server) ID.
    pub instance: String,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct VnfConfigRef {
    /// The VNF's instance (Nova server) ID.
    pub instance: String,
    /// The service on the VNF the configuration is for (e.g. firewall).
    pub service: String,
}

#[derive(Debug, Clone, ClapArgs)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["file", "payload"])))]
pub struct VnfConfigSet {
    /// The VNF's instance (Nova server) ID.
    pub instance: String,
    /// The service on the VNF the configuration is for (e.g. firewall).
    pub service: String,
    /// File whose content is the configuration: sent as JSON if it is valid JSON, otherwise as
    /// raw bytes (base64 on the wire).
    #[arg(long, value_name = "PATH")]
    pub file: Option<std::path::PathBuf>,
    /// The configuration as JSON text.
    #[arg(long, value_name = "JSON")]
    pub payload: Option<String>,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct VnfConfigShow {
    /// The VNF's instance (Nova server) ID.
    pub instance: String,
    /// Show this service's configuration with its payload (default: list them all).
    pub service: Option<String>,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct VnfKeyCreate {
    /// The VNF's instance (Nova server) ID.
    pub instance: String,
    /// The key as 64 hex digits (default: the controller generates one).
    #[arg(long, value_name = "HEX")]
    pub key: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_grammar_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn seed_commands_parse() {
        let a = Args::try_parse_from([
            "sfc",
            "port-pair-create",
            "--ingress=p1",
            "--egress=p2",
            "PP1",
        ])
        .unwrap();
        let Command::PortPairCreate(pp) = a.command else {
            panic!("port-pair-create expected")
        };
        assert_eq!((pp.ingress.as_str(), pp.egress.as_str()), ("p1", "p2"));
        assert_eq!(pp.name, "PP1");

        let a = Args::try_parse_from([
            "sfc",
            "port-chain-create",
            "--port-pair-group",
            "PG1",
            "--port-pair-group",
            "PG2",
            "--flow-classifier",
            "FC1",
            "PC1",
            "--json",
            "--url",
            "http://h:1",
        ])
        .unwrap();
        assert!(a.json);
        assert_eq!(a.url, "http://h:1");
        let Command::PortChainCreate(pc) = a.command else {
            panic!("port-chain-create expected")
        };
        assert_eq!(pc.port_pair_groups, ["PG1", "PG2"]);
    }

    #[test]
    fn missing_or_conflicting_arguments_are_usage_errors() {
        for argv in [
            &["sfc", "port-pair-create", "--ingress", "p1", "PP1"][..],
            &["sfc", "port-chain-create", "PC1"],
            &["sfc", "vnf-config-set", "i", "s"],
            &[
                "sfc",
                "vnf-config-set",
                "i",
                "s",
                "--file",
                "f",
                "--payload",
                "{}",
            ],
            &[
                "sfc",
                "subnet-create",
                "n",
                "10.0.0.0/24",
                "--gateway",
                "10.0.0.1",
                "--no-gateway",
            ],
            &[
                "sfc",
                "port-chain-update",
                "PC1",
                "--flow-classifier",
                "F",
                "--no-flow-classifier",
            ],
            &["sfc", "net-delete"],
            &["sfc", "no-such-command"],
        ] {
            let e = Args::try_parse_from(argv).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{argv:?}");
        }
    }
}
