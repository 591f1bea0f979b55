//! From parsed arguments to HTTP calls: which method on which path with which body, and how
//! to show the answer.
//!
//! Planning is kept apart from sending so that every command's request can be checked without
//! a server: the only outside knowledge a plan needs is the ID behind each name the user gave,
//! which it asks a [`Resolve`]r for (the HTTP [`Client`](super::client::Client) in the binary, a
//! table in the unit tests). Every name is resolved before the first call is made, so a typo
//! in the third of three deletes deletes nothing.

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::args::*;
use super::table::{self, Column};
use super::CliError;

/// The API resources a command can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Network,
    Subnet,
    Port,
    PortPair,
    PortPairGroup,
    FlowClassifier,
    PortChain,
    ServiceGraph,
}

impl Resource {
    /// The body key, and the word neutronclient uses in its messages.
    pub fn singular(self) -> &'static str {
        match self {
            Resource::Network => "network",
            Resource::Subnet => "subnet",
            Resource::Port => "port",
            Resource::PortPair => "port_pair",
            Resource::PortPairGroup => "port_pair_group",
            Resource::FlowClassifier => "flow_classifier",
            Resource::PortChain => "port_chain",
            Resource::ServiceGraph => "service_graph",
        }
    }

    /// The list key and last path segment.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Network => "networks",
            Resource::Subnet => "subnets",
            Resource::Port => "ports",
            Resource::PortPair => "port_pairs",
            Resource::PortPairGroup => "port_pair_groups",
            Resource::FlowClassifier => "flow_classifiers",
            Resource::PortChain => "port_chains",
            Resource::ServiceGraph => "service_graphs",
        }
    }

    /// The collection's path segments: Neutron's under `v2.0`, networking-sfc's under
    /// `v2.0/sfc`.
    pub fn path(self) -> Vec<String> {
        let mut path = vec!["v2.0".to_string()];
        if !matches!(self, Resource::Network | Resource::Subnet | Resource::Port) {
            path.push("sfc".into());
        }
        path.push(self.plural().into());
        path
    }

    fn item_path(self, id: &str) -> Vec<String> {
        let mut path = self.path();
        path.push(id.into());
        path
    }

    /// The columns a list shows by default.
    fn columns(self) -> &'static [Column] {
        match self {
            Resource::Network => table::NETWORK_COLUMNS,
            Resource::Subnet => table::SUBNET_COLUMNS,
            Resource::Port => table::PORT_COLUMNS,
            Resource::PortPair => table::PORT_PAIR_COLUMNS,
            Resource::PortPairGroup => table::PORT_PAIR_GROUP_COLUMNS,
            Resource::FlowClassifier => table::FLOW_CLASSIFIER_COLUMNS,
            Resource::PortChain => table::PORT_CHAIN_COLUMNS,
            Resource::ServiceGraph => table::SERVICE_GRAPH_COLUMNS,
        }
    }
}

/// Finds the ID of a resource the user named by name or ID.
// Used only through generics inside this crate, on a current-thread runtime, so the future
// need not be `Send` and the lint's concern does not apply.
#[allow(async_fn_in_trait)]
pub trait Resolve {
    async fn id(&self, resource: Resource, name_or_id: &str) -> Result<String, CliError>;
}

/// One HTTP request.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: Method,
    pub path: Vec<String>,
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
}

/// How to show the answer of the last call.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// `{key: {...}}` as a Field|Value table, under an optional heading.
    Object {
        key: &'static str,
        heading: Option<String>,
    },
    /// `{key: [...]}` as a table of `columns`.
    List {
        key: &'static str,
        columns: &'static [Column],
    },
    /// An update: a message for people, the updated `{key: {...}}` for `--json`.
    Updated { key: &'static str, message: String },
    /// Deletes, one call per label.
    Deleted {
        resource: String,
        labels: Vec<String>,
    },
    /// A message for people, nothing for `--json`.
    Done(String),
}

/// The calls a command makes and how to show the result.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub calls: Vec<Call>,
    pub shape: Shape,
}

/// Plans `command`; `fields` (global `-f`) narrows what lists fetch.
pub async fn plan<R: Resolve>(
    command: &Command,
    fields: &[String],
    r: &R,
) -> Result<Plan, CliError> {
    use Resource::*;
    Ok(match command {
        Command::NetCreate(a) => create(Network, net_create_body(a)),
        Command::NetList(a) => list(Network, a, fields)?,
        Command::NetShow(a) => show(Network, &r.id(Network, &a.target).await?),
        Command::NetUpdate(a) => {
            let body = object([
                ("name", a.name.clone().map(Value::from)),
                ("description", a.description.clone().map(Value::from)),
                ("mtu", a.mtu.map(Value::from)),
            ]);
            update(Network, r, &a.target, body).await?
        }
        Command::NetDelete(a) => delete(Network, r, &a.targets).await?,

        Command::SubnetCreate(a) => {
            let network = r.id(Network, &a.network).await?;
            create(Subnet, subnet_create_body(a, &network))
        }
        Command::SubnetList(a) => list(Subnet, a, fields)?,
        Command::SubnetShow(a) => show(Subnet, &r.id(Subnet, &a.target).await?),
        Command::SubnetDelete(a) => delete(Subnet, r, &a.targets).await?,

        Command::PortCreate(a) => {
            let network = r.id(Network, &a.network).await?;
            let mut fixed_ips = Vec::new();
            for text in &a.fixed_ips {
                fixed_ips.push(fixed_ip(text, r).await?);
            }
            create(Port, port_create_body(a, &network, fixed_ips))
        }
        Command::PortList(a) => list(Port, a, fields)?,
        Command::PortShow(a) => show(Port, &r.id(Port, &a.target).await?),
        Command::PortUpdate(a) => {
            let body = object([
                ("name", a.name.clone().map(Value::from)),
                ("description", a.description.clone().map(Value::from)),
                ("device_id", a.device_id.clone().map(Value::from)),
                ("device_owner", a.device_owner.clone().map(Value::from)),
                ("binding:host_id", a.host.clone().map(Value::from)),
            ]);
            update(Port, r, &a.target, body).await?
        }
        Command::PortDelete(a) => delete(Port, r, &a.targets).await?,

        Command::PortPairCreate(a) => {
            let ingress = r.id(Port, &a.ingress).await?;
            let egress = r.id(Port, &a.egress).await?;
            create(PortPair, port_pair_body(a, &ingress, &egress)?)
        }
        Command::PortPairList(a) => list(PortPair, a, fields)?,
        Command::PortPairShow(a) => show(PortPair, &r.id(PortPair, &a.target).await?),
        Command::PortPairUpdate(a) => update(PortPair, r, &a.target, name_body(a)).await?,
        Command::PortPairDelete(a) => delete(PortPair, r, &a.targets).await?,

        Command::PortPairGroupCreate(a) => {
            let pairs = ids(r, PortPair, &a.port_pairs).await?;
            create(PortPairGroup, port_pair_group_body(a, pairs)?)
        }
        Command::PortPairGroupList(a) => list(PortPairGroup, a, fields)?,
        Command::PortPairGroupShow(a) => {
            show(PortPairGroup, &r.id(PortPairGroup, &a.target).await?)
        }
        Command::PortPairGroupUpdate(a) => {
            let pairs = if a.no_port_pair {
                Some(Value::Array(Vec::new()))
            } else if a.port_pairs.is_empty() {
                None
            } else {
                Some(json!(ids(r, PortPair, &a.port_pairs).await?))
            };
            let body = object([
                ("name", a.name.clone().map(Value::from)),
                ("description", a.description.clone().map(Value::from)),
                ("port_pairs", pairs),
            ]);
            update(PortPairGroup, r, &a.target, body).await?
        }
        Command::PortPairGroupDelete(a) => delete(PortPairGroup, r, &a.targets).await?,

        Command::FlowClassifierCreate(a) => {
            let source = match &a.logical_source_port {
                Some(p) => Some(r.id(Port, p).await?),
                None => None,
            };
            let destination = match &a.logical_destination_port {
                Some(p) => Some(r.id(Port, p).await?),
                None => None,
            };
            create(
                FlowClassifier,
                flow_classifier_body(a, source.as_deref(), destination.as_deref())?,
            )
        }
        Command::FlowClassifierList(a) => list(FlowClassifier, a, fields)?,
        Command::FlowClassifierShow(a) => {
            show(FlowClassifier, &r.id(FlowClassifier, &a.target).await?)
        }
        Command::FlowClassifierUpdate(a) => {
            update(FlowClassifier, r, &a.target, name_body(a)).await?
        }
        Command::FlowClassifierDelete(a) => delete(FlowClassifier, r, &a.targets).await?,

        Command::PortChainCreate(a) => {
            let groups = ids(r, PortPairGroup, &a.port_pair_groups).await?;
            let classifiers = ids(r, FlowClassifier, &a.flow_classifiers).await?;
            create(PortChain, port_chain_body(a, groups, classifiers)?)
        }
        Command::PortChainList(a) => list(PortChain, a, fields)?,
        Command::PortChainShow(a) => show(PortChain, &r.id(PortChain, &a.target).await?),
        Command::PortChainUpdate(a) => {
            let groups = if a.port_pair_groups.is_empty() {
                None
            } else {
                Some(json!(ids(r, PortPairGroup, &a.port_pair_groups).await?))
            };
            let classifiers = if a.no_flow_classifier {
                Some(Value::Array(Vec::new()))
            } else if a.flow_classifiers.is_empty() {
                None
            } else {
                Some(json!(ids(r, FlowClassifier, &a.flow_classifiers).await?))
            };
            let body = object([
                ("name", a.name.clone().map(Value::from)),
                ("description", a.description.clone().map(Value::from)),
                ("port_pair_groups", groups),
                ("flow_classifiers", classifiers),
            ]);
            update(PortChain, r, &a.target, body).await?
        }
        Command::PortChainDelete(a) => delete(PortChain, r, &a.targets).await?,

        Command::ServiceGraphCreate(a) => {
            let mut chains = Map::new();
            for text in &a.branching_points {
                let (src, dsts) = branching_point(text)?;
                let src = r.id(PortChain, &src).await?;
                let dsts = ids(r, PortChain, &dsts).await?;
                // The same source given twice: one branching point with all destinations
                // (the server rejects a destination repeated within it).
                let entry = chains
                    .entry(src)
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(list) = entry {
                    list.extend(dsts.into_iter().map(Value::from));
                }
            }
            let mut body = object([("description", a.description.clone().map(Value::from))]);
            body.insert("name".into(), a.name.clone().into());
            body.insert("port_chains".into(), Value::Object(chains));
            create(ServiceGraph, Value::Object(body))
        }
        Command::ServiceGraphList(a) => list(ServiceGraph, a, fields)?,
        Command::ServiceGraphShow(a) => show(ServiceGraph, &r.id(ServiceGraph, &a.target).await?),
        Command::ServiceGraphUpdate(a) => update(ServiceGraph, r, &a.target, name_body(a)).await?,
        Command::ServiceGraphDelete(a) => delete(ServiceGraph, r, &a.targets).await?,

        Command::VnfConfigSet(a) => vnf_config_set(a)?,
        Command::VnfConfigShow(a) => match &a.service {
            Some(service) => Plan {
                calls: vec![get(config_path(&a.instance, Some(service)), vec![])],
                shape: Shape::Object {
                    key: "config",
                    heading: None,
                },
            },
            None => Plan {
                calls: vec![get(config_path(&a.instance, None), vec![])],
                shape: Shape::List {
                    key: "configs",
                    columns: table::VNF_CONFIG_COLUMNS,
                },
            },
        },
        Command::VnfConfigDelete(a) => Plan {
            calls: vec![Call {
                method: Method::DELETE,
                path: config_path(&a.instance, Some(&a.service)),
                query: vec![],
                body: None,
            }],
            shape: Shape::Done(format!(
                "Deleted the {} configuration of instance {}",
                a.service, a.instance
            )),
        },
        Command::VnfKeyCreate(a) => Plan {
            calls: vec![Call {
                method: Method::POST,
                path: key_path(&a.instance),
                query: vec![],
                body: a.key.as_ref().map(|k| json!({"key": {"key": k}})),
            }],
            shape: Shape::Object {
                key: "key",
                heading: Some("Created a new key:".into()),
            },
        },
        Command::VnfKeyShow(a) => Plan {
            calls: vec![get(key_path(&a.instance), vec![])],
            shape: Shape::Object {
                key: "key",
                heading: None,
            },
        },
        Command::VnfHostList => Plan {
            calls: vec![get(
                vec!["v2.0".into(), "vnf".into(), "hosts".into()],
                vec![],
            )],
            shape: Shape::List {
                key: "hosts",
                columns: table::VNF_HOST_COLUMNS,
            },
        },
    })
}

fn get(path: Vec<String>, query: Vec<(String, String)>) -> Call {
    Call {
        method: Method::GET,
        path,
        query,
        body: None,
    }
}

fn create(resource: Resource, body: Value) -> Plan {
    Plan {
        calls: vec![Call {
            method: Method::POST,
            path: resource.path(),
            query: vec![],
            body: Some(json!({ resource.singular(): body })),
        }],
        shape: Shape::Object {
            key: resource.singular(),
            heading: Some(format!("Created a new {}:", resource.singular())),
        },
    }
}

fn show(resource: Resource, id: &str) -> Plan {
    Plan {
        calls: vec![get(resource.item_path(id), vec![])],
        shape: Shape::Object {
            key: resource.singular(),
            heading: None,
        },
    }
}

fn list(resource: Resource, args: &ListArgs, fields: &[String]) -> Result<Plan, CliError> {
    let mut query = Vec::new();
    for f in &args.filters {
        let (k, v) = f
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| CliError::Usage(format!("--filter {f:?}: KEY=VALUE expected")))?;
        query.push((k.to_string(), v.to_string()));
    }
    query.extend(fields.iter().map(|f| ("fields".to_string(), f.clone())));
    Ok(Plan {
        calls: vec![get(resource.path(), query)],
        shape: Shape::List {
            key: resource.plural(),
            columns: resource.columns(),
        },
    })
}

async fn update<R: Resolve>(
    resource: Resource,
    r: &R,
    target: &str,
    body: Map<String, Value>,
) -> Result<Plan, CliError> {
    if body.is_empty() {
        return Err(CliError::Usage(format!(
            "nothing to update: give at least one attribute of the {} to change",
            resource.singular()
        )));
    }
    let id = r.id(resource, target).await?;
    Ok(Plan {
        calls: vec![Call {
            method: Method::PUT,
            path: resource.item_path(&id),
            query: vec![],
            body: Some(json!({ resource.singular(): body })),
        }],
        shape: Shape::Updated {
            key: resource.singular(),
            message: format!("Updated {}: {target}", resource.singular()),
        },
    })
}

async fn delete<R: Resolve>(
    resource: Resource,
    r: &R,
    targets: &[String],
) -> Result<Plan, CliError> {
    let ids = ids(r, resource, targets).await?;
    Ok(Plan {
        calls: ids
            .iter()
            .map(|id| Call {
                method: Method::DELETE,
                path: resource.item_path(id),
                query: vec![],
                body: None,
            })
            .collect(),
        shape: Shape::Deleted {
            resource: resource.singular().into(),
            labels: targets.to_vec(),
        },
    })
}

async fn ids<R: Resolve>(
    r: &R,
    resource: Resource,
    names: &[String],
) -> Result<Vec<String>, CliError> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        out.push(r.id(resource, name).await?);
    }
    Ok(out)
}

/// A JSON object of the attributes that were given.
fn object<const N: usize>(attrs: [(&str, Option<Value>); N]) -> Map<String, Value> {
    attrs
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
        .collect()
}

fn name_body(a: &NameUpdate) -> Map<String, Value> {
    object([
        ("name", a.name.clone().map(Value::from)),
        ("description", a.description.clone().map(Value::from)),
    ])
}

pub fn net_create_body(a: &NetCreate) -> Value {
    let mut body = object([
        ("description", a.description.clone().map(Value::from)),
        ("mtu", a.mtu.map(Value::from)),
        ("shared", a.shared.then_some(Value::Bool(true))),
        (
            "admin_state_up",
            a.admin_state_down.then_some(Value::Bool(false)),
        ),
    ]);
    body.insert("name".into(), a.name.clone().into());
    Value::Object(body)
}

pub fn subnet_create_body(a: &SubnetCreate, network: &str) -> Value {
    // neutronclient defaults to 4; taking it from the CIDR makes `subnet-create net fd00::/64`
    // work without --ip-version.
    let version = match a.ip_version.as_deref() {
        Some("6") => 6,
        Some(_) => 4,
        None if a.cidr.contains(':') => 6,
        None => 4,
    };
    let mut body = object([
        ("name", a.name.clone().map(Value::from)),
        ("description", a.description.clone().map(Value::from)),
        ("gateway_ip", a.gateway.clone().map(Value::from)),
    ]);
    if a.no_gateway {
        body.insert("gateway_ip".into(), Value::Null);
    }
    body.insert("network_id".into(), network.into());
    body.insert("cidr".into(), a.cidr.clone().into());
    body.insert("ip_version".into(), version.into());
    Value::Object(body)
}

pub fn port_create_body(a: &PortCreate, network: &str, fixed_ips: Vec<Value>) -> Value {
    let mut body = object([
        ("name", a.name.clone().map(Value::from)),
        ("description", a.description.clone().map(Value::from)),
        ("device_id", a.device_id.clone().map(Value::from)),
        ("device_owner", a.device_owner.clone().map(Value::from)),
        ("binding:host_id", a.host.clone().map(Value::from)),
        ("mac_address", a.mac_address.clone().map(Value::from)),
    ]);
    body.insert("network_id".into(), network.into());
    if !fixed_ips.is_empty() {
        body.insert("fixed_ips".into(), Value::Array(fixed_ips));
    }
    Value::Object(body)
}

/// `subnet_id=SUBNET,ip_address=IP` (neutronclient also takes `subnet=`), with the subnet
/// resolved.
async fn fixed_ip<R: Resolve>(text: &str, r: &R) -> Result<Value, CliError> {
    let mut out = Map::new();
    for (k, v) in key_values(text, "--fixed-ip")? {
        match k.as_str() {
            "subnet_id" | "subnet" => {
                out.insert("subnet_id".into(), r.id(Resource::Subnet, &v).await?.into());
            }
            "ip_address" | "ip-address" => {
                out.insert("ip_address".into(), v.into());
            }
            other => {
                return Err(CliError::Usage(format!(
                    "--fixed-ip: unknown key {other:?} (subnet_id, ip_address)"
                )))
            }
        }
    }
    Ok(Value::Object(out))
}

pub fn port_pair_body(a: &PortPairCreate, ingress: &str, egress: &str) -> Result<Value, CliError> {
    let mut body = object([("description", a.description.clone().map(Value::from))]);
    body.insert("name".into(), a.name.clone().into());
    body.insert("ingress".into(), ingress.into());
    body.insert("egress".into(), egress.into());
    if !a.service_function_parameters.is_empty() {
        let mut params = Map::new();
        for text in &a.service_function_parameters {
            for (k, v) in key_values(text, "--service-function-parameters")? {
                let value = match k.as_str() {
                    "correlation" => correlation(&v),
                    "weight" => Value::from(integer(&v, "--service-function-parameters weight")?),
                    // Unknown keys go to the server, which names them in its 400.
                    _ => Value::from(v),
                };
                params.insert(k, value);
            }
        }
        body.insert("service_function_parameters".into(), Value::Object(params));
    }
    Ok(Value::Object(body))
}

pub fn port_pair_group_body(
    a: &PortPairGroupCreate,
    port_pairs: Vec<String>,
) -> Result<Value, CliError> {
    let mut body = object([("description", a.description.clone().map(Value::from))]);
    body.insert("name".into(), a.name.clone().into());
    body.insert("port_pairs".into(), json!(port_pairs));
    if a.enable_tap {
        body.insert("tap_enabled".into(), Value::Bool(true));
    }
    let mut lb_fields: Vec<String> = a
        .lb_fields
        .iter()
        .flat_map(|f| f.split('&'))
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    lb_fields.extend(a.lb_field.iter().cloned());
    let mut params = Map::new();
    if !lb_fields.is_empty() {
        params.insert("lb_fields".into(), json!(lb_fields));
    }
    if !a.ingress_n_tuple.is_empty() || !a.egress_n_tuple.is_empty() {
        params.insert(
            "ppg_n_tuple_mapping".into(),
            json!({
                "ingress_n_tuple": n_tuple(&a.ingress_n_tuple, "--ingress-n-tuple")?,
                "egress_n_tuple": n_tuple(&a.egress_n_tuple, "--egress-n-tuple")?,
            }),
        );
    }
    if !params.is_empty() {
        body.insert("port_pair_group_parameters".into(), Value::Object(params));
    }
    Ok(Value::Object(body))
}

fn n_tuple(texts: &[String], option: &str) -> Result<Value, CliError> {
    let mut out = Map::new();
    for text in texts {
        for (k, v) in key_values(text, option)? {
            let value = if k.ends_with("_min") || k.ends_with("_max") {
                Value::from(integer(&v, &format!("{option} {k}"))?)
            } else {
                Value::from(v)
            };
            out.insert(k, value);
        }
    }
    Ok(Value::Object(out))
}

pub fn flow_classifier_body(
    a: &FlowClassifierCreate,
    logical_source_port: Option<&str>,
    logical_destination_port: Option<&str>,
) -> Result<Value, CliError> {
    let mut body = object([
        ("description", a.description.clone().map(Value::from)),
        ("ethertype", a.ethertype.clone().map(Value::from)),
        ("protocol", a.protocol.clone().map(Value::from)),
        (
            "source_ip_prefix",
            a.source_ip_prefix.clone().map(Value::from),
        ),
        (
            "destination_ip_prefix",
            a.destination_ip_prefix.clone().map(Value::from),
        ),
        ("logical_source_port", logical_source_port.map(Value::from)),
        (
            "logical_destination_port",
            logical_destination_port.map(Value::from),
        ),
    ]);
    body.insert("name".into(), a.name.clone().into());
    for (option, text, prefix) in [
        ("--source-port", &a.source_port, "source"),
        ("--destination-port", &a.destination_port, "destination"),
    ] {
        if let Some(text) = text {
            let (min, max) = port_range(text, option)?;
            if let Some(min) = min {
                body.insert(format!("{prefix}_port_range_min"), min.into());
            }
            if let Some(max) = max {
                body.insert(format!("{prefix}_port_range_max"), max.into());
            }
        }
    }
    if !a.l7_parameters.is_empty() {
        let mut params = Map::new();
        for text in &a.l7_parameters {
            for (k, v) in key_values(text, "--l7-parameters")? {
                params.insert(k, v.into());
            }
        }
        body.insert("l7_parameters".into(), Value::Object(params));
    }
    Ok(Value::Object(body))
}

/// `MIN:MAX`, `MIN:` or `:MAX` (open-ended), or `PORT` (exactly that port). Range checks are
/// the server's.
pub fn port_range(text: &str, option: &str) -> Result<(Option<i64>, Option<i64>), CliError> {
    let part = |s: &str| -> Result<Option<i64>, CliError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse().map(Some).map_err(|_| {
            CliError::Usage(format!(
                "{option} {text:?}: MIN:MAX or PORT expected, with integer ports"
            ))
        })
    };
    match text.split_once(':') {
        Some((min, max)) => {
            let range = (part(min)?, part(max)?);
            if range == (None, None) {
                return Err(CliError::Usage(format!(
                    "{option} {text:?}: MIN:MAX or PORT expected"
                )));
            }
            Ok(range)
        }
        None => match part(text)? {
            Some(port) => Ok((Some(port), Some(port))),
            None => Err(CliError::Usage(format!(
                "{option} {text:?}: MIN:MAX or PORT expected"
            ))),
        },
    }
}

pub fn port_chain_body(
    a: &PortChainCreate,
    port_pair_groups: Vec<String>,
    flow_classifiers: Vec<String>,
) -> Result<Value, CliError> {
    let mut body = object([
        ("description", a.description.clone().map(Value::from)),
        ("chain_id", a.chain_id.map(Value::from)),
    ]);
    body.insert("name".into(), a.name.clone().into());
    body.insert("port_pair_groups".into(), json!(port_pair_groups));
    if !flow_classifiers.is_empty() {
        body.insert("flow_classifiers".into(), json!(flow_classifiers));
    }
    if !a.chain_parameters.is_empty() {
        let mut params = Map::new();
        for text in &a.chain_parameters {
            for (k, v) in key_values(text, "--chain-parameters")? {
                let value = match k.as_str() {
                    "correlation" => correlation(&v),
                    "symmetric" => Value::Bool(boolean(&v, "--chain-parameters symmetric")?),
                    _ => Value::from(v),
                };
                params.insert(k, value);
            }
        }
        body.insert("chain_parameters".into(), Value::Object(params));
    }
    Ok(Value::Object(body))
}

/// `SRC:DST1,DST2`.
fn branching_point(text: &str) -> Result<(String, Vec<String>), CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--branching-point {text:?}: SRC_CHAIN:DST_CHAIN[,DST_CHAIN...] expected"
        ))
    };
    let (src, dsts) = text.split_once(':').ok_or_else(bad)?;
    let dsts: Vec<String> = dsts
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    if src.trim().is_empty() || dsts.is_empty() {
        return Err(bad());
    }
    Ok((src.trim().to_string(), dsts))
}

/// `k=v,k=v`; a value may not contain a comma (none of the API's do).
fn key_values(text: &str, option: &str) -> Result<Vec<(String, String)>, CliError> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(CliError::Usage(format!(
                "{option} {text:?}: KEY=VALUE[,KEY=VALUE...] expected"
            ))),
        })
        .collect()
}

/// `none` (any case, as the networking-sfc client's `None`) is JSON null.
fn correlation(v: &str) -> Value {
    if v.eq_ignore_ascii_case("none") || v.eq_ignore_ascii_case("null") {
        Value::Null
    } else {
        Value::from(v)
    }
}

fn integer(v: &str, what: &str) -> Result<i64, CliError> {
    v.parse()
        .map_err(|_| CliError::Usage(format!("{what}: {v:?} is not an integer")))
}

fn boolean(v: &str, what: &str) -> Result<bool, CliError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(CliError::Usage(format!(
            "{what}: {v:?} is not a boolean (true or false)"
        ))),
    }
}

fn config_path(instance: &str, service: Option<&str>) -> Vec<String> {
    let mut path: Vec<String> = vec![
        "v2.0".into(),
        "vnf".into(),
        "instances".into(),
        instance.into(),
        "configs".into(),
    ];
    path.extend(service.map(str::to_string));
    path
}

fn key_path(instance: &str) -> Vec<String> {
    vec![
        "v2.0".into(),
        "vnf".into(),
        "instances".into(),
        instance.into(),
        "key".into(),
    ]
}

fn vnf_config_set(a: &VnfConfigSet) -> Result<Plan, CliError> {
    let config = match (&a.file, &a.payload) {
        (Some(path), _) => {
            let bytes = std::fs::read(path).map_err(|source| CliError::File {
                path: path.display().to_string(),
                source,
            })?;
            config_from_file(&bytes)
        }
        (None, Some(text)) => {
            let payload: Value = serde_json::from_str(text)
                .map_err(|e| CliError::Usage(format!("--payload is not valid JSON: {e}")))?;
            json!({ "payload": payload })
        }
        // clap's argument group requires one of the two.
        (None, None) => {
            return Err(CliError::Usage(
                "vnf-config-set needs --file PATH or --payload JSON".into(),
            ))
        }
    };
    Ok(Plan {
        calls: vec![Call {
            method: Method::PUT,
            path: config_path(&a.instance, Some(&a.service)),
            query: vec![],
            body: Some(json!({ "config": config })),
        }],
        shape: Shape::Object {
            key: "config",
            heading: None,
        },
    })
}

/// A config file's content: JSON goes as `payload`, anything else (a shell script, an
/// iptables dump, binary) as its raw bytes in `payload_base64`.
pub fn config_from_file(bytes: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(payload) => json!({ "payload": payload }),
        Err(_) => json!({
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(bytes)
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;

    use clap::Parser;

    use super::*;

    /// Names resolve through a table; `dup` is ambiguous, anything else unknown.
    struct Table(HashMap<(Resource, String), String>);

    impl Table {
        fn new() -> Self {
            let mut t = HashMap::new();
            for (r, name, id) in [
                (Resource::Network, "net1", "N1"),
                (Resource::Subnet, "sub1", "S1"),
                (Resource::Port, "p1", "P1"),
                (Resource::Port, "p2", "P2"),
                (Resource::PortPair, "PP1", "PPID1"),
                (Resource::PortPair, "PP2", "PPID2"),
                (Resource::PortPairGroup, "PG1", "PGID1"),
                (Resource::PortPairGroup, "PG2", "PGID2"),
                (Resource::FlowClassifier, "FC1", "FCID1"),
                (Resource::PortChain, "PC1", "PCID1"),
                (Resource::PortChain, "PC2", "PCID2"),
                (Resource::PortChain, "PC3", "PCID3"),
            ] {
                t.insert((r, name.to_string()), id.to_string());
            }
            Table(t)
        }
    }

    impl Resolve for Table {
        async fn id(&self, resource: Resource, name: &str) -> Result<String, CliError> {
            if name == "dup" {
                return Err(CliError::Ambiguous {
                    resource: resource.singular().into(),
                    name: name.into(),
                });
            }
            self.0
                .get(&(resource, name.to_string()))
                .cloned()
                .ok_or_else(|| CliError::NotFound {
                    resource: resource.singular().into(),
                    name: name.into(),
                })
        }
    }

    async fn plan_of(argv: &[&str]) -> Result<Plan, CliError> {
        let mut full = vec!["sfc"];
        full.extend_from_slice(argv);
        let args = Args::try_parse_from(full).expect("arguments parse");
        plan(&args.command, &args.fields, &Table::new()).await
    }

    /// The single call of a plan.
    async fn call_of(argv: &[&str]) -> Call {
        let plan = plan_of(argv).await.unwrap();
        assert_eq!(plan.calls.len(), 1, "{plan:?}");
        plan.calls.into_iter().next().unwrap()
    }

    fn path(p: &str) -> Vec<String> {
        p.split('/').map(str::to_string).collect()
    }

    #[tokio::test]
    async fn networks() {
        let c = call_of(&["net-create", "net1", "--mtu", "1400", "--shared"]).await;
        assert_eq!(c.method, Method::POST);
        assert_eq!(c.path, path("v2.0/networks"));
        assert_eq!(
            c.body.unwrap(),
            json!({"network": {"name": "net1", "mtu": 1400, "shared": true}})
        );
        let c = call_of(&["net-create", "n", "--admin-state-down"]).await;
        assert_eq!(
            c.body.unwrap(),
            json!({"network": {"name": "n", "admin_state_up": false}})
        );
        let c = call_of(&["net-update", "net1", "--name", "n2"]).await;
        assert_eq!((c.method, c.path), (Method::PUT, path("v2.0/networks/N1")));
        assert_eq!(c.body.unwrap(), json!({"network": {"name": "n2"}}));
        let c = call_of(&["net-show", "net1"]).await;
        assert_eq!((c.method, c.path), (Method::GET, path("v2.0/networks/N1")));
        let c = call_of(&["net-list", "--filter", "name=net1", "-f", "id"]).await;
        assert_eq!(
            c.query,
            [
                ("name".into(), "net1".into()),
                ("fields".into(), "id".into())
            ]
        );
        let e = plan_of(&["net-list", "--filter", "name"])
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[tokio::test]
    async fn an_update_without_attributes_is_a_usage_error() {
        for argv in [
            &["net-update", "net1"][..],
            &["port-update", "p1"],
            &["port-pair-update", "PP1"],
            &["port-pair-group-update", "PG1"],
            &["flow-classifier-update", "FC1"],
            &["port-chain-update", "PC1"],
            &["service-graph-update", "x"],
        ] {
            let e = plan_of(argv).await.unwrap_err();
            assert!(matches!(e, CliError::Usage(_)), "{argv:?}: {e}");
        }
    }

    #[tokio::test]
    async fn subnets() {
        let c = call_of(&["subnet-create", "net1", "10.0.0.0/24", "--name", "s"]).await;
        assert_eq!(c.path, path("v2.0/subnets"));
        assert_eq!(
            c.body.unwrap(),
            json!({"subnet": {"network_id": "N1", "cidr": "10.0.0.0/24", "ip_version": 4, "name": "s"}})
        );
        let c = call_of(&["subnet-create", "net1", "fd00::/64", "--no-gateway"]).await;
        assert_eq!(
            c.body.unwrap(),
            json!({"subnet": {"network_id": "N1", "cidr": "fd00::/64", "ip_version": 6, "gateway_ip": null}})
        );
        let c = call_of(&[
            "subnet-create",
            "net1",
            "10.0.0.0/24",
            "--gateway",
            "10.0.0.254",
        ])
        .await;
        assert_eq!(c.body.unwrap()["subnet"]["gateway_ip"], "10.0.0.254");
        let p = plan_of(&["subnet-delete", "sub1"]).await.unwrap();
        assert_eq!(p.calls[0].method, Method::DELETE);
        assert_eq!(p.calls[0].path, path("v2.0/subnets/S1"));
    }

    #[tokio::test]
    async fn ports() {
        let c = call_of(&[
            "port-create",
            "net1",
            "--name",
            "p1",
            "--device-id",
            "vm1",
            "--device-owner",
            "compute:nova",
            "--host",
            "h1",
            "--mac-address",
            "fa:16:3e:00:00:01",
            "--fixed-ip",
            "subnet_id=sub1,ip_address=10.0.0.5",
            "--fixed-ip",
            "ip_address=10.0.0.6",
        ])
        .await;
        assert_eq!(c.path, path("v2.0/ports"));
        assert_eq!(
            c.body.unwrap(),
            json!({"port": {
                "network_id": "N1", "name": "p1", "device_id": "vm1",
                "device_owner": "compute:nova", "binding:host_id": "h1",
                "mac_address": "fa:16:3e:00:00:01",
                "fixed_ips": [{"subnet_id": "S1", "ip_address": "10.0.0.5"}, {"ip_address": "10.0.0.6"}],
            }})
        );
        let c = call_of(&["port-update", "p1", "--device-id", "vm2", "--host", "h2"]).await;
        assert_eq!(c.path, path("v2.0/ports/P1"));
        assert_eq!(
            c.body.unwrap(),
            json!({"port": {"device_id": "vm2", "binding:host_id": "h2"}})
        );
        let e = plan_of(&["port-create", "net1", "--fixed-ip", "subnet=nope"])
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Unable to find subnet with name or id 'nope'"
        );
        let e = plan_of(&["port-create", "net1", "--fixed-ip", "mask=1"])
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[tokio::test]
    async fn port_pairs() {
        let c = call_of(&[
            "port-pair-create",
            "--ingress=p1",
            "--egress=p2",
            "--description",
            "d",
            "--service-function-parameters",
            "correlation=mpls,weight=2",
            "PP1",
        ])
        .await;
        assert_eq!(c.path, path("v2.0/sfc/port_pairs"));
        assert_eq!(
            c.body.unwrap(),
            json!({"port_pair": {"name": "PP1", "ingress": "P1", "egress": "P2", "description": "d",
                "service_function_parameters": {"correlation": "mpls", "weight": 2}}})
        );
        let c = call_of(&[
            "port-pair-create",
            "--ingress",
            "p1",
            "--egress",
            "p1",
            "--service-function-parameters",
            "correlation=None",
            "X",
        ])
        .await;
        assert_eq!(
            c.body.unwrap()["port_pair"]["service_function_parameters"],
            json!({"correlation": null})
        );
        let e = plan_of(&[
            "port-pair-create",
            "--ingress=p1",
            "--egress=p2",
            "--service-function-parameters",
            "weight=heavy",
            "X",
        ])
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = plan_of(&["port-pair-create", "--ingress=p1", "--egress=dup", "X"])
            .await
            .unwrap_err();
        assert!(matches!(e, CliError::Ambiguous { .. }), "{e}");
        let c = call_of(&["port-pair-update", "PP1", "--description", "x"]).await;
        assert_eq!(c.path, path("v2.0/sfc/port_pairs/PPID1"));
        assert_eq!(c.body.unwrap(), json!({"port_pair": {"description": "x"}}));
    }

    #[tokio::test]
    async fn port_pair_groups() {
        let c = call_of(&[
            "port-pair-group-create",
            "--port-pair",
            "PP1",
            "--port-pair",
            "PP2",
            "PG1",
        ])
        .await;
        assert_eq!(c.path, path("v2.0/sfc/port_pair_groups"));
        assert_eq!(
            c.body.unwrap(),
            json!({"port_pair_group": {"name": "PG1", "port_pairs": ["PPID1", "PPID2"]}})
        );
        let c = call_of(&[
            "port-pair-group-create",
            "--port-pair",
            "PP1",
            "--lb-fields",
            "ip_src&ip_dst",
            "--lb-field",
            "tcp_dst",
            "--ingress-n-tuple",
            "source_ip_prefix=10.0.0.0/24,source_port_range_min=80",
            "--enable-tap",
            "T",
        ])
        .await;
        assert_eq!(
            c.body.unwrap(),
            json!({"port_pair_group": {"name": "T", "port_pairs": ["PPID1"], "tap_enabled": true,
            "port_pair_group_parameters": {
                "lb_fields": ["ip_src", "ip_dst", "tcp_dst"],
                "ppg_n_tuple_mapping": {
                    "ingress_n_tuple": {"source_ip_prefix": "10.0.0.0/24", "source_port_range_min": 80},
                    "egress_n_tuple": {},
                }}}})
        );
        let c = call_of(&["port-pair-group-update", "PG1", "--port-pair", "PP2"]).await;
        assert_eq!(c.path, path("v2.0/sfc/port_pair_groups/PGID1"));
        assert_eq!(
            c.body.unwrap(),
            json!({"port_pair_group": {"port_pairs": ["PPID2"]}})
        );
        let c = call_of(&["port-pair-group-update", "PG1", "--no-port-pair"]).await;
        assert_eq!(
            c.body.unwrap(),
            json!({"port_pair_group": {"port_pairs": []}})
        );
        let e = plan_of(&["port-pair-group-create", "--port-pair", "PP9", "G"])
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Unable to find port_pair with name or id 'PP9'"
        );
    }

    #[tokio::test]
    async fn flow_classifiers_as_in_the_seed() {
        let c = call_of(&[
            "flow-classifier-create",
            "--ethertype",
            "IPv4",
            "--source-ip-prefix",
            "22.1.20.1/32",
            "--destination-ip-prefix",
            "172.4.5.6/32",
            "--protocol",
            "tcp",
            "--source-port",
            "23:23",
            "--destination-port",
            "100:100",
            "--logical-source-port",
            "p1",
            "FC1",
        ])
        .await;
        assert_eq!(c.path, path("v2.0/sfc/flow_classifiers"));
        assert_eq!(
            c.body.unwrap(),
            json!({"flow_classifier": {
                "name": "FC1", "ethertype": "IPv4", "protocol": "tcp",
                "source_ip_prefix": "22.1.20.1/32", "destination_ip_prefix": "172.4.5.6/32",
                "source_port_range_min": 23, "source_port_range_max": 23,
                "destination_port_range_min": 100, "destination_port_range_max": 100,
                "logical_source_port": "P1",
            }})
        );
        let c = call_of(&[
            "flow-classifier-create",
            "--destination-port",
            "80",
            "--logical-destination-port",
            "p2",
            "--l7-parameters",
            "url=/x",
            "F",
        ])
        .await;
        assert_eq!(
            c.body.unwrap(),
            json!({"flow_classifier": {"name": "F", "destination_port_range_min": 80,
                "destination_port_range_max": 80, "logical_destination_port": "P2",
                "l7_parameters": {"url": "/x"}}})
        );
        let c = call_of(&["flow-classifier-update", "FC1", "--name", "F2"]).await;
        assert_eq!(c.path, path("v2.0/sfc/flow_classifiers/FCID1"));
        assert_eq!(c.body.unwrap(), json!({"flow_classifier": {"name": "F2"}}));
    }

    #[test]
    fn port_ranges() {
        assert_eq!(port_range("23:23", "o").unwrap(), (Some(23), Some(23)));
        assert_eq!(port_range("80", "o").unwrap(), (Some(80), Some(80)));
        assert_eq!(port_range("1024:", "o").unwrap(), (Some(1024), None));
        assert_eq!(port_range(":1024", "o").unwrap(), (None, Some(1024)));
        // Out-of-range numbers are for the server to refuse with its own message.
        assert_eq!(
            port_range("70000", "o").unwrap(),
            (Some(70000), Some(70000))
        );
        for bad in ["", ":", "a:b", "1-2", "1:2:3"] {
            assert!(
                matches!(port_range(bad, "o"), Err(CliError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn port_chains() {
        let c = call_of(&[
            "port-chain-create",
            "--port-pair-group",
            "PG1",
            "--port-pair-group",
            "PG2",
            "--flow-classifier",
            "FC1",
            "--chain-parameters",
            "correlation=mpls,symmetric=true",
            "--chain-id",
            "7",
            "PC1",
        ])
        .await;
        assert_eq!(c.path, path("v2.0/sfc/port_chains"));
        assert_eq!(
            c.body.unwrap(),
            json!({"port_chain": {"name": "PC1", "port_pair_groups": ["PGID1", "PGID2"],
                "flow_classifiers": ["FCID1"], "chain_id": 7,
                "chain_parameters": {"correlation": "mpls", "symmetric": true}}})
        );
        let e = plan_of(&[
            "port-chain-create",
            "--port-pair-group",
            "PG1",
            "--chain-parameters",
            "symmetric=maybe",
            "PC",
        ])
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let c = call_of(&[
            "port-chain-update",
            "PC1",
            "--port-pair-group",
            "PG2",
            "--no-flow-classifier",
        ])
        .await;
        assert_eq!(c.path, path("v2.0/sfc/port_chains/PCID1"));
        assert_eq!(
            c.body.unwrap(),
            json!({"port_chain": {"port_pair_groups": ["PGID2"], "flow_classifiers": []}})
        );
        let c = call_of(&["port-chain-update", "PC1", "--flow-classifier", "FC1"]).await;
        assert_eq!(
            c.body.unwrap(),
            json!({"port_chain": {"flow_classifiers": ["FCID1"]}})
        );
    }

    #[tokio::test]
    async fn service_graphs() {
        let c = call_of(&[
            "service-graph-create",
            "--branching-point",
            "PC1:PC2,PC3",
            "--branching-point",
            "PC2:PC3",
            "G",
        ])
        .await;
        assert_eq!(c.path, path("v2.0/sfc/service_graphs"));
        assert_eq!(
            c.body.unwrap(),
            json!({"service_graph": {"name": "G",
                "port_chains": {"PCID1": ["PCID2", "PCID3"], "PCID2": ["PCID3"]}}})
        );
        for bad in ["PC1", "PC1:", ":PC2"] {
            let e = plan_of(&["service-graph-create", "--branching-point", bad, "G"])
                .await
                .unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
    }

    #[tokio::test]
    async fn deletes_resolve_every_name_before_the_first_call() {
        let p = plan_of(&["port-pair-delete", "PP1", "PP2"]).await.unwrap();
        assert_eq!(
            p.calls.iter().map(|c| c.path.clone()).collect::<Vec<_>>(),
            [
                path("v2.0/sfc/port_pairs/PPID1"),
                path("v2.0/sfc/port_pairs/PPID2")
            ]
        );
        let e = plan_of(&["port-pair-delete", "PP1", "nope"])
            .await
            .unwrap_err();
        assert!(matches!(e, CliError::NotFound { .. }));
    }

    #[tokio::test]
    async fn vnf_configs() {
        let c = call_of(&[
            "vnf-config-set",
            "vm1",
            "firewall",
            "--payload",
            r#"{"rules": [1]}"#,
        ])
        .await;
        assert_eq!(c.method, Method::PUT);
        assert_eq!(c.path, path("v2.0/vnf/instances/vm1/configs/firewall"));
        assert_eq!(
            c.body.unwrap(),
            json!({"config": {"payload": {"rules": [1]}}})
        );
        let e = plan_of(&["vnf-config-set", "vm1", "fw", "--payload", "{"])
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);

        let dir = tempfile::tempdir().unwrap();
        let json_file = dir.path().join("c.json");
        std::fs::write(&json_file, br#"{"a": true}"#).unwrap();
        let c = call_of(&[
            "vnf-config-set",
            "vm1",
            "fw",
            "--file",
            json_file.to_str().unwrap(),
        ])
        .await;
        assert_eq!(c.body.unwrap(), json!({"config": {"payload": {"a": true}}}));
        let raw_file = dir.path().join("rules.sh");
        std::fs::write(&raw_file, b"iptables -A\n\xff").unwrap();
        let c = call_of(&[
            "vnf-config-set",
            "vm1",
            "fw",
            "--file",
            raw_file.to_str().unwrap(),
        ])
        .await;
        assert_eq!(
            c.body.unwrap(),
            json!({"config": {"payload_base64": "aXB0YWJsZXMgLUEK/w=="}})
        );
        let e = plan_of(&["vnf-config-set", "vm1", "fw", "--file", "/nonexistent/x"])
            .await
            .unwrap_err();
        assert!(matches!(e, CliError::File { .. }));

        let c = call_of(&["vnf-config-show", "vm1"]).await;
        assert_eq!(
            (c.method, c.path),
            (Method::GET, path("v2.0/vnf/instances/vm1/configs"))
        );
        let p = plan_of(&["vnf-config-show", "vm1", "fw"]).await.unwrap();
        assert_eq!(p.calls[0].path, path("v2.0/vnf/instances/vm1/configs/fw"));
        assert!(matches!(p.shape, Shape::Object { key: "config", .. }));
        let c = call_of(&["vnf-config-delete", "vm1", "fw"]).await;
        assert_eq!(
            (c.method, c.path),
            (Method::DELETE, path("v2.0/vnf/instances/vm1/configs/fw"))
        );
    }

    #[tokio::test]
    async fn vnf_keys_and_hosts() {
        let c = call_of(&["vnf-key-create", "vm1"]).await;
        assert_eq!(
            (c.method, c.path, c.body),
            (Method::POST, path("v2.0/vnf/instances/vm1/key"), None)
        );
        let key = "ab".repeat(32);
        let c = call_of(&["vnf-key-create", "vm1", "--key", &key]).await;
        assert_eq!(c.body.unwrap(), json!({"key": {"key": key}}));
        let c = call_of(&["vnf-key-show", "vm1"]).await;
        assert_eq!(
            (c.method, c.path),
            (Method::GET, path("v2.0/vnf/instances/vm1/key"))
        );
        let c = call_of(&["vnf-host-list"]).await;
        assert_eq!(c.path, path("v2.0/vnf/hosts"));
    }
}
