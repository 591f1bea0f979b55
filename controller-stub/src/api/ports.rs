//! `/v2.0/ports`: the Neutron ports VNFs and chains attach to, with their MAC, fixed IPs and
//! binding.
//!
//! Fixed IPs follow Neutron's IPAM (`ipam_backend_mixin`, `ipam_pluggable_backend`): a port
//! created without `fixed_ips` gets one address per IP version, from the first subnet of that
//! version (in creation order) that has a free one; `{"subnet_id": S}` takes one from S;
//! `{"ip_address": A}` (with or without a subnet) takes exactly A, which must be a host address
//! of a subnet of the port's network (400 `InvalidIpForSubnet` / `InvalidIpForNetwork`) and
//! free (409 `IpAddressAlreadyAllocated`). Automatic addresses are the lowest free address of
//! the subnet's allocation pools (Neutron picks a random one; lowest-free is deterministic and
//! equally valid for clients), after the explicit ones of the same request are set aside. An
//! update matches the new list against the old one as Neutron's `_get_changed_ips_for_port`
//! does: addresses named again are kept, a bare subnet entry keeps the port's address on that
//! subnet, the rest are released before new ones are taken.
//!
//! MACs are Neutron's `fa:16:3e` base plus three random bytes, unique across the controller
//! (stricter than Neutron's per-network uniqueness: the chain driver steers by destination
//! MAC). Policy is Neutron's default: the port's project, its network's owner and admins see
//! and change a port; `binding:*` attributes are admin-only to set and hidden from others in
//! responses; a MAC, an explicit IP, port security, address pairs and a `network:*` owner need
//! the network's owner or an admin. With no L2 agent to report a port up, `status` is
//! `ACTIVE` once the port is administratively up, bound to a host (`binding:host_id`) and
//! attached to a device (`device_id`), and `DOWN` otherwise.
//!
//! [`get_port`] is the lookup the chain driver and the sfc resources share: one port with its
//! MAC, binding and fixed IPs, read on whatever connection (or write transaction) they hold.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::networks::{get_network, network_not_found, Network};
use super::subnets::{
    check_len, get_subnet, lowest_free_ip, network_subnets, nullable, parse_ip, subnet_not_found,
    Subnet,
};
use super::{deleted, many, one, path_id, timestamp, AppState, Body, ListQuery, Wrapped};
use crate::auth::Context;
use crate::db::{flag, get_flag};
use crate::error::ApiError;

/// Neutron's default `base_mac`: the first three bytes of every generated MAC.
const BASE_MAC: [u8; 3] = [0xfa, 0x16, 0x3e];
/// Neutron's `mac_generation_retries`.
const MAC_RETRIES: usize = 16;
/// Neutron's `max_allowed_address_pair`.
const MAX_ADDRESS_PAIRS: usize = 10;
/// `binding:vnic_type` values Neutron accepts.
const VNIC_TYPES: &[&str] = &[
    "normal",
    "direct",
    "macvtap",
    "baremetal",
    "direct-physical",
    "virtio-forwarder",
    "smart-nic",
    "vdpa",
    "remote-managed",
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2.0/ports", get(list).post(create))
        .route("/v2.0/ports/{id}", get(show).put(update).delete(remove))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortCreate {
    #[serde(default)]
    pub network_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub admin_state_up: Option<bool>,
    #[serde(default)]
    pub mac_address: Option<String>,
    #[serde(default)]
    pub fixed_ips: Option<Vec<Value>>,
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub device_owner: Option<String>,
    #[serde(default, rename = "binding:host_id", deserialize_with = "nullable")]
    pub host_id: Option<Option<String>>,
    #[serde(default, rename = "binding:vnic_type")]
    pub vnic_type: Option<String>,
    #[serde(default, rename = "binding:profile", deserialize_with = "nullable")]
    pub binding_profile: Option<Option<Value>>,
    #[serde(default)]
    pub port_security_enabled: Option<bool>,
    #[serde(default)]
    pub security_groups: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_address_pairs: Option<Vec<Value>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
}

impl Wrapped for PortCreate {
    const KEY: &'static str = "port";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub admin_state_up: Option<bool>,
    #[serde(default)]
    pub mac_address: Option<String>,
    #[serde(default)]
    pub fixed_ips: Option<Vec<Value>>,
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub device_owner: Option<String>,
    #[serde(default, rename = "binding:host_id", deserialize_with = "nullable")]
    pub host_id: Option<Option<String>>,
    #[serde(default, rename = "binding:vnic_type")]
    pub vnic_type: Option<String>,
    #[serde(default, rename = "binding:profile", deserialize_with = "nullable")]
    pub binding_profile: Option<Option<Value>>,
    #[serde(default)]
    pub port_security_enabled: Option<bool>,
    #[serde(default)]
    pub security_groups: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_address_pairs: Option<Vec<Value>>,
    // Attributes a PUT cannot change: named so that the 400 says so.
    #[serde(default)]
    pub network_id: Option<Value>,
    #[serde(default)]
    pub project_id: Option<Value>,
    #[serde(default)]
    pub tenant_id: Option<Value>,
    #[serde(default)]
    pub tags: Option<Value>,
}

impl Wrapped for PortUpdate {
    const KEY: &'static str = "port";
}

/// One fixed IP of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: IpAddr,
}

/// An allowed address pair, its MAC filled in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct AddressPair {
    pub ip_address: String,
    pub mac_address: String,
}

/// A stored port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub id: String,
    pub project_id: String,
    pub network_id: String,
    pub name: String,
    pub description: String,
    pub admin_state_up: bool,
    /// Lowercase, colon-separated.
    pub mac_address: String,
    pub device_id: String,
    pub device_owner: String,
    /// `binding:host_id`; empty when unbound.
    pub host_id: String,
    pub status: String,
    /// Ordered by subnet creation, then address.
    pub fixed_ips: Vec<FixedIp>,
    pub port_security_enabled: bool,
    pub allowed_address_pairs: Vec<AddressPair>,
    pub tags: Vec<String>,
    pub vnic_type: String,
    /// `binding:profile`, a JSON object.
    pub binding_profile: Value,
    pub created_at: String,
    pub updated_at: String,
    pub revision_number: i64,
}

fn decode_err(e: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

impl Port {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Port {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            network_id: row.try_get("network_id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            admin_state_up: get_flag(row, "admin_state_up")?,
            mac_address: row.try_get("mac_address")?,
            device_id: row.try_get("device_id")?,
            device_owner: row.try_get("device_owner")?,
            host_id: row.try_get("host_id")?,
            status: row.try_get("status")?,
            fixed_ips: Vec::new(),
            port_security_enabled: get_flag(row, "port_security_enabled")?,
            allowed_address_pairs: serde_json::from_str(
                &row.try_get::<String, _>("allowed_address_pairs")?,
            )
            .map_err(decode_err)?,
            tags: serde_json::from_str(&row.try_get::<String, _>("tags")?).map_err(decode_err)?,
            vnic_type: row.try_get("vnic_type")?,
            binding_profile: serde_json::from_str(&row.try_get::<String, _>("binding_profile")?)
                .map_err(decode_err)?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            revision_number: row.try_get("revision_number")?,
        })
    }

    /// The status the port has with its current attributes (see the module docs).
    fn derived_status(&self) -> &'static str {
        if self.admin_state_up && !self.host_id.is_empty() && !self.device_id.is_empty() {
            "ACTIVE"
        } else {
            "DOWN"
        }
    }

    /// The API representation for `ctx`: `binding:*` details only for admins, as Neutron's
    /// default policy shows them.
    pub fn to_json(&self, ctx: &Context) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "network_id": self.network_id,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "mac_address": self.mac_address,
            "admin_state_up": self.admin_state_up,
            "status": self.status,
            "device_id": self.device_id,
            "device_owner": self.device_owner,
            "fixed_ips": self.fixed_ips.iter().map(|f| json!({
                "subnet_id": f.subnet_id,
                "ip_address": f.ip_address.to_string(),
            })).collect::<Vec<_>>(),
            "allowed_address_pairs": self.allowed_address_pairs,
            "extra_dhcp_opts": [],
            "security_groups": [],
            "port_security_enabled": self.port_security_enabled,
            "binding:vnic_type": self.vnic_type,
            "qos_policy_id": null,
            "qos_network_policy_id": null,
            "ip_allocation": "immediate",
            "propagate_uplink_status": false,
            "tags": self.tags,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "revision_number": self.revision_number,
        });
        if ctx.is_admin {
            let (vif_type, vif_details) = if self.host_id.is_empty() {
                ("unbound", json!({}))
            } else {
                (
                    "ovs",
                    json!({
                        "bridge_name": "br-int",
                        "connectivity": "l2",
                        "ovs_hybrid_plug": false,
                        "port_filter": true,
                    }),
                )
            };
            if let Value::Object(map) = &mut v {
                map.insert("binding:host_id".into(), json!(self.host_id));
                map.insert("binding:vif_type".into(), json!(vif_type));
                map.insert("binding:vif_details".into(), vif_details);
                map.insert("binding:profile".into(), self.binding_profile.clone());
                map.insert("resource_request".into(), Value::Null);
            }
        }
        v
    }
}

const COLUMNS: &str = "id, project_id, network_id, name, description, admin_state_up, \
    mac_address, device_id, device_owner, host_id, status, port_security_enabled, \
    allowed_address_pairs, tags, vnic_type, binding_profile, created_at, updated_at, \
    revision_number";

/// The fixed IPs of the ports `port_ids` names, or of every port (`None`), by port.
async fn fixed_ips_by_port(
    conn: &mut AnyConnection,
    port_id: Option<&str>,
) -> Result<HashMap<String, Vec<FixedIp>>, sqlx::Error> {
    let sql = "SELECT port_ips.port_id, port_ips.subnet_id, port_ips.ip_address \
               FROM port_ips JOIN subnets ON subnets.id = port_ips.subnet_id";
    let order = "ORDER BY subnets.seq, subnets.id, port_ips.ip_address";
    let rows: Vec<(String, String, String)> = match port_id {
        Some(id) => {
            sqlx::query_as(&format!("{sql} WHERE port_ips.port_id = $1 {order}"))
                .bind(id)
                .fetch_all(&mut *conn)
                .await?
        }
        None => {
            sqlx::query_as(&format!("{sql} {order}"))
                .fetch_all(&mut *conn)
                .await?
        }
    };
    let mut out: HashMap<String, Vec<FixedIp>> = HashMap::new();
    for (port, subnet_id, ip) in rows {
        let ip_address = ip.parse().map_err(decode_err)?;
        out.entry(port).or_default().push(FixedIp {
            subnet_id,
            ip_address,
        });
    }
    // Text order is not address order ("10.0.0.10" < "10.0.0.9"); keep the subnet order and
    // sort addresses numerically within each subnet.
    for ips in out.values_mut() {
        let subnet_order: Vec<String> = ips.iter().map(|f| f.subnet_id.clone()).collect();
        ips.sort_by_key(|f| {
            (
                subnet_order.iter().position(|s| *s == f.subnet_id),
                super::subnets::ip_to_u128(f.ip_address),
            )
        });
    }
    Ok(out)
}

/// One port with its fixed IPs, or `None`: the lookup other modules (the chain driver, the
/// sfc resources) use, on a pooled connection or inside their write transaction
/// (`get_port(tx.conn(), id)`). It does not check visibility.
pub async fn get_port(conn: &mut AnyConnection, id: &str) -> Result<Option<Port>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM ports WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let mut port = Port::from_row(&row)?;
    port.fixed_ips = fixed_ips_by_port(conn, Some(id))
        .await?
        .remove(id)
        .unwrap_or_default();
    Ok(Some(port))
}

pub fn port_not_found(id: &str) -> ApiError {
    ApiError::not_found("PortNotFound", format!("Port {id} could not be found."))
}

/// Neutron's `admin_owner_or_network_owner`.
fn may_access(ctx: &Context, port: &Port, network_owner: Option<&str>) -> bool {
    ctx.owns(&port.project_id) || network_owner == Some(ctx.project_id.as_str())
}

/// A port the caller may see, or Neutron's 404.
pub async fn visible_port(
    conn: &mut AnyConnection,
    ctx: &Context,
    id: &str,
) -> Result<Port, ApiError> {
    let port = get_port(conn, id)
        .await?
        .ok_or_else(|| port_not_found(id))?;
    let network = get_network(conn, &port.network_id).await?;
    if may_access(ctx, &port, network.as_ref().map(|n| n.project_id.as_str())) {
        Ok(port)
    } else {
        Err(port_not_found(id))
    }
}

/// Neutron's `fixed_ips=ip_address=...`, `fixed_ips=subnet_id=...` and
/// `fixed_ips=ip_address_substr=...` filters: a port matches when one of its addresses
/// satisfies every given key (any of a key's values).
#[derive(Debug, Default)]
struct FixedIpsFilter {
    ip_address: Vec<String>,
    subnet_id: Vec<String>,
    ip_address_substr: Vec<String>,
}

impl FixedIpsFilter {
    fn parse(values: &[String]) -> Result<Self, ApiError> {
        let mut f = FixedIpsFilter::default();
        for v in values {
            let (k, val) = v.split_once('=').ok_or_else(|| {
                ApiError::invalid_input(format!(
                    "'{v}' is not of the form <key>=[value] for the fixed_ips filter"
                ))
            })?;
            let val = val.to_string();
            match k {
                // Neutron compares addresses as stored; canonicalise so `fd00::01` finds
                // `fd00::1`.
                "ip_address" => f.ip_address.push(
                    val.parse::<IpAddr>()
                        .map(|ip| ip.to_string())
                        .unwrap_or(val),
                ),
                "subnet_id" => f.subnet_id.push(val),
                "ip_address_substr" => f.ip_address_substr.push(val),
                other => {
                    return Err(ApiError::invalid_input(format!(
                        "'{other}' is not a supported key of the fixed_ips filter"
                    )))
                }
            }
        }
        Ok(f)
    }

    fn matches(&self, ips: &[FixedIp]) -> bool {
        ips.iter().any(|f| {
            let ip = f.ip_address.to_string();
            (self.ip_address.is_empty() || self.ip_address.contains(&ip))
                && (self.subnet_id.is_empty() || self.subnet_id.contains(&f.subnet_id))
                && (self.ip_address_substr.is_empty()
                    || self
                        .ip_address_substr
                        .iter()
                        .any(|s| ip.contains(s.as_str())))
        })
    }
}

async fn list(
    State(state): State<AppState>,
    ctx: Context,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = ListQuery::parse(query.as_deref())?;
    let fixed_ips_filter = match query.filters.iter().position(|(k, _)| k == "fixed_ips") {
        Some(i) => Some(FixedIpsFilter::parse(&query.filters.remove(i).1)?),
        None => None,
    };
    let mut conn = state.db.pool().acquire().await?;
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM ports ORDER BY seq, id"))
        .fetch_all(&mut *conn)
        .await?;
    let network_owners: HashMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT id, project_id FROM networks")
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
    let mut ips = fixed_ips_by_port(&mut conn, None).await?;
    let mut items = Vec::new();
    for row in &rows {
        let mut port = Port::from_row(row)?;
        if !may_access(
            &ctx,
            &port,
            network_owners.get(&port.network_id).map(String::as_str),
        ) {
            continue;
        }
        port.fixed_ips = ips.remove(&port.id).unwrap_or_default();
        if let Some(f) = &fixed_ips_filter {
            if !f.matches(&port.fixed_ips) {
                continue;
            }
        }
        items.push(port.to_json(&ctx));
    }
    Ok(many("ports", query.apply(items)))
}

async fn show(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let id = path_id("Port", &id)?;
    let mut conn = state.db.pool().acquire().await?;
    let port = visible_port(&mut conn, &ctx, &id).await?;
    Ok(one(
        StatusCode::OK,
        "port",
        query.select(port.to_json(&ctx)),
    ))
}

/// Neutron's `type:mac_address` validator and `convert_to_sanitized_mac_address`: six bytes
/// in hex separated by `:` or `-` (or three dot-separated groups of four), not all-zero or
/// all-ones; stored lowercase with colons.
fn parse_mac(value: &str) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::invalid_attr(
            "mac_address",
            format!("'{value}' is not a valid MAC address"),
        )
    };
    let hex: String = if value.contains('.') {
        let groups: Vec<&str> = value.split('.').collect();
        if groups.len() != 3 || groups.iter().any(|g| g.len() != 4) {
            return Err(invalid());
        }
        groups.concat()
    } else {
        let groups: Vec<&str> = value.split([':', '-']).collect();
        if groups.len() != 6 || groups.iter().any(|g| g.is_empty() || g.len() > 2) {
            return Err(invalid());
        }
        groups.iter().map(|g| format!("{g:0>2}")).collect()
    };
    let mut bytes = [0u8; 6];
    hex::decode_to_slice(&hex, &mut bytes).map_err(|_| invalid())?;
    if bytes == [0; 6] || bytes == [0xff; 6] {
        return Err(invalid());
    }
    Ok(format_mac(bytes))
}

fn format_mac(bytes: [u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

async fn mac_in_use(conn: &mut AnyConnection, mac: &str) -> Result<bool, sqlx::Error> {
    let found: Option<String> = sqlx::query_scalar("SELECT id FROM ports WHERE mac_address = $1")
        .bind(mac)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(found.is_some())
}

fn mac_conflict(network_id: &str, mac: &str) -> ApiError {
    ApiError::conflict(
        "MacAddressInUse",
        format!(
            "Unable to complete operation for network {network_id}. The mac address {mac} is in use."
        ),
    )
}

/// A random MAC under Neutron's base no port uses.
async fn generate_mac(conn: &mut AnyConnection, network_id: &str) -> Result<String, ApiError> {
    for _ in 0..MAC_RETRIES {
        let mut tail = [0u8; 3];
        getrandom::fill(&mut tail).map_err(|e| {
            ApiError::internal("MacAddressGenerationFailure", format!("no randomness: {e}"))
        })?;
        let mac = format_mac([
            BASE_MAC[0],
            BASE_MAC[1],
            BASE_MAC[2],
            tail[0],
            tail[1],
            tail[2],
        ]);
        if !mac_in_use(conn, &mac).await? {
            return Ok(mac);
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "MacAddressGenerationFailure",
        format!("Unable to generate unique mac on network {network_id}."),
    ))
}

/// One entry of a request's `fixed_ips`, checked for form (neutron-lib's
/// `validate_fixed_ips`).
#[derive(Debug, Clone)]
struct IpRequest {
    subnet_id: Option<String>,
    ip_address: Option<IpAddr>,
}

fn parse_ip_requests(values: &[Value]) -> Result<Vec<IpRequest>, ApiError> {
    let mut out: Vec<IpRequest> = Vec::with_capacity(values.len());
    for value in values {
        let malformed = || {
            ApiError::invalid_attr(
                "fixed_ips",
                format!("Invalid data format for fixed IP: '{value}'"),
            )
        };
        let obj = value.as_object().ok_or_else(malformed)?;
        if obj.keys().any(|k| k != "subnet_id" && k != "ip_address") {
            return Err(malformed());
        }
        let ip_address = match obj.get("ip_address") {
            None => None,
            Some(Value::String(s)) => {
                let ip = parse_ip("fixed_ips", s)?;
                if out.iter().any(|r| r.ip_address == Some(ip)) {
                    return Err(ApiError::invalid_attr(
                        "fixed_ips",
                        format!("Duplicate IP address '{s}'"),
                    ));
                }
                Some(ip)
            }
            Some(_) => return Err(malformed()),
        };
        let subnet_id = match obj.get("subnet_id") {
            None => None,
            Some(Value::String(s)) => Some(
                uuid::Uuid::parse_str(s)
                    .map(|u| u.to_string())
                    .map_err(|_| {
                        ApiError::invalid_attr("fixed_ips", format!("'{s}' is not a valid UUID"))
                    })?,
            ),
            Some(_) => return Err(malformed()),
        };
        out.push(IpRequest {
            subnet_id,
            ip_address,
        });
    }
    Ok(out)
}

/// An entry resolved to a subnet of the port's network (Neutron's `_get_subnet_for_fixed_ip`).
#[derive(Debug, Clone)]
struct ResolvedIp {
    subnet: Subnet,
    ip_address: Option<IpAddr>,
}

async fn resolve_ip_requests(
    conn: &mut AnyConnection,
    network_id: &str,
    requests: Vec<IpRequest>,
) -> Result<Vec<ResolvedIp>, ApiError> {
    let subnets = network_subnets(conn, network_id).await?;
    if subnets.is_empty() && !requests.is_empty() {
        return Err(ApiError::invalid_input(
            "IP allocation requires subnets for network",
        ));
    }
    let mut out = Vec::with_capacity(requests.len());
    for r in requests {
        let subnet = match (&r.subnet_id, r.ip_address) {
            (Some(sid), ip) => {
                let Some(subnet) = subnets.iter().find(|s| s.id == *sid) else {
                    return Err(match get_subnet(conn, sid).await? {
                        None => subnet_not_found(sid),
                        Some(_) => ApiError::invalid_input(format!(
                            "Failed to create port on network {network_id}, because fixed_ips included invalid subnet {sid}"
                        )),
                    });
                };
                if let Some(ip) = ip {
                    if !subnet.holds(ip) {
                        return Err(ApiError::bad_request(
                            "InvalidIpForSubnet",
                            format!("IP address {ip} is not a valid IP for the specified subnet."),
                        ));
                    }
                }
                subnet.clone()
            }
            (None, Some(ip)) => subnets.iter().find(|s| s.holds(ip)).cloned().ok_or_else(|| {
                ApiError::bad_request(
                    "InvalidIpForNetwork",
                    format!("IP address {ip} is not a valid IP for any of the subnets on the specified network."),
                )
            })?,
            (None, None) => {
                return Err(ApiError::invalid_input(
                    "IP allocation requires subnet_id or ip_address",
                ))
            }
        };
        out.push(ResolvedIp {
            subnet,
            ip_address: r.ip_address,
        });
    }
    Ok(out)
}

/// What a port asks for when it names no `fixed_ips`: one address of each IP version, from
/// the first subnet of that version with a free one.
async fn default_ips(conn: &mut AnyConnection, network_id: &str) -> Result<Vec<FixedIp>, ApiError> {
    let subnets = network_subnets(conn, network_id).await?;
    let mut out = Vec::new();
    for version in [4, 6] {
        let candidates: Vec<&Subnet> = subnets.iter().filter(|s| s.ip_version == version).collect();
        if candidates.is_empty() {
            continue;
        }
        let mut found = None;
        for s in candidates {
            if let Some(ip) = lowest_free_ip(conn, s, &[]).await? {
                found = Some(FixedIp {
                    subnet_id: s.id.clone(),
                    ip_address: ip,
                });
                break;
            }
        }
        out.push(found.ok_or_else(|| {
            ApiError::conflict(
                "IpAddressGenerationFailure",
                format!("No more IP addresses available on network {network_id}."),
            )
        })?);
    }
    Ok(out)
}

/// Takes the addresses `wanted` asks for: the explicit ones first (each must be free), then one
/// free address per bare subnet entry.
async fn allocate(
    conn: &mut AnyConnection,
    wanted: &[ResolvedIp],
) -> Result<Vec<FixedIp>, ApiError> {
    let mut out: Vec<FixedIp> = Vec::with_capacity(wanted.len());
    for w in wanted {
        let Some(ip) = w.ip_address else { continue };
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT port_id FROM port_ips WHERE subnet_id = $1 AND ip_address = $2",
        )
        .bind(&w.subnet.id)
        .bind(ip.to_string())
        .fetch_optional(&mut *conn)
        .await?;
        if holder.is_some() || out.iter().any(|f| f.ip_address == ip) {
            return Err(ApiError::conflict(
                "IpAddressAlreadyAllocated",
                format!(
                    "IP address {ip} already allocated in subnet {}",
                    w.subnet.id
                ),
            ));
        }
        out.push(FixedIp {
            subnet_id: w.subnet.id.clone(),
            ip_address: ip,
        });
    }
    for w in wanted.iter().filter(|w| w.ip_address.is_none()) {
        let taken: Vec<IpAddr> = out
            .iter()
            .filter(|f| f.subnet_id == w.subnet.id)
            .map(|f| f.ip_address)
            .collect();
        let ip = lowest_free_ip(conn, &w.subnet, &taken)
            .await?
            .ok_or_else(|| {
                ApiError::conflict(
                    "IpAddressGenerationFailure",
                    format!("No more IP addresses available for subnet {}.", w.subnet.id),
                )
            })?;
        out.push(FixedIp {
            subnet_id: w.subnet.id.clone(),
            ip_address: ip,
        });
    }
    Ok(out)
}

async fn insert_ips(
    conn: &mut AnyConnection,
    port_id: &str,
    ips: &[FixedIp],
) -> Result<(), sqlx::Error> {
    for f in ips {
        sqlx::query("INSERT INTO port_ips (port_id, subnet_id, ip_address) VALUES ($1, $2, $3)")
            .bind(port_id)
            .bind(&f.subnet_id)
            .bind(f.ip_address.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// neutron-lib's `validate_allowed_address_pairs`, the MAC defaulting to the port's.
fn parse_address_pairs(values: &[Value], port_mac: &str) -> Result<Vec<AddressPair>, ApiError> {
    if values.len() > MAX_ADDRESS_PAIRS {
        return Err(ApiError::bad_request(
            "AllowedAddressPairExhausted",
            format!("The number of allowed address pair exceeds the maximum {MAX_ADDRESS_PAIRS}."),
        ));
    }
    let mut out: Vec<AddressPair> = Vec::with_capacity(values.len());
    for value in values {
        let obj = value.as_object().ok_or_else(|| {
            ApiError::invalid_attr(
                "allowed_address_pairs",
                format!("'{value}' is not a dictionary"),
            )
        })?;
        if let Some(k) = obj
            .keys()
            .find(|k| *k != "ip_address" && *k != "mac_address")
        {
            return Err(ApiError::bad_request(
                "HTTPBadRequest",
                format!("Unrecognized attribute(s) '{k}'"),
            ));
        }
        let ip_text = obj
            .get("ip_address")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "AllowedAddressPairsMissingIP",
                    "AllowedAddressPair must contain ip_address",
                )
            })?;
        let ip_address = if let Ok(ip) = ip_text.parse::<IpAddr>() {
            ip.to_string()
        } else if let Ok(net) = ip_text.parse::<IpNet>() {
            net.to_string()
        } else {
            return Err(ApiError::invalid_attr(
                "allowed_address_pairs",
                format!("'{ip_text}' is neither a valid IP address, nor is it a valid IP subnet"),
            ));
        };
        let mac_address = match obj.get("mac_address") {
            None | Some(Value::Null) => port_mac.to_string(),
            Some(Value::String(m)) => parse_mac(m)?,
            Some(other) => {
                return Err(ApiError::invalid_attr(
                    "allowed_address_pairs",
                    format!("'{other}' is not a valid MAC address"),
                ))
            }
        };
        let pair = AddressPair {
            ip_address,
            mac_address,
        };
        if out.contains(&pair) {
            return Err(ApiError::bad_request(
                "DuplicateAddressPairInRequest",
                format!(
                    "Request contains duplicate address pair: mac_address {} ip_address {}.",
                    pair.mac_address, pair.ip_address
                ),
            ));
        }
        out.push(pair);
    }
    Ok(out)
}

fn check_security_groups(groups: &[String]) -> Result<(), ApiError> {
    // The controller has no security-group resource, so no group can be named; `[]` is fine.
    match groups.first() {
        Some(id) => Err(ApiError::not_found(
            "SecurityGroupNotFound",
            format!("Security group {id} does not exist"),
        )),
        None => Ok(()),
    }
}

fn check_vnic_type(v: &str) -> Result<(), ApiError> {
    if VNIC_TYPES.contains(&v) {
        Ok(())
    } else {
        Err(ApiError::invalid_attr(
            "binding:vnic_type",
            format!("'{v}' is not in {VNIC_TYPES:?}"),
        ))
    }
}

fn parse_profile(v: Option<Value>) -> Result<Value, ApiError> {
    match v {
        None => Ok(Value::Object(Map::new())),
        Some(Value::Object(m)) => Ok(Value::Object(m)),
        Some(other) => Err(ApiError::invalid_attr(
            "binding:profile",
            format!("'{other}' is not a dictionary"),
        )),
    }
}

fn forbidden(rule: &str) -> ApiError {
    ApiError::forbidden(format!("({rule}) is disallowed by policy"))
}

/// The network's owner or an admin (Neutron's `network_owner or admin_only`).
fn owns_network(ctx: &Context, network: &Network) -> bool {
    ctx.is_admin || ctx.project_id == network.project_id
}

fn port_security_conflict() -> ApiError {
    ApiError::conflict(
        "AddressPairAndPortSecurityRequired",
        "Port Security must be enabled in order to have allowed address pairs on a port.",
    )
}

async fn create(
    State(state): State<AppState>,
    ctx: Context,
    Body(req): Body<PortCreate>,
) -> Result<Response, ApiError> {
    let network_id = req.network_id.ok_or_else(|| {
        ApiError::bad_request(
            "HTTPBadRequest",
            "Failed to parse request. Required attribute 'network_id' not specified",
        )
    })?;
    let network_id = uuid::Uuid::parse_str(&network_id)
        .map(|u| u.to_string())
        .map_err(|_| {
            ApiError::invalid_attr("network_id", format!("'{network_id}' is not a valid UUID"))
        })?;
    let requested = match (&req.project_id, &req.tenant_id) {
        (Some(p), Some(t)) if p != t => {
            return Err(ApiError::bad_request(
                "HTTPBadRequest",
                "'project_id' and 'tenant_id' do not match",
            ))
        }
        (p, t) => p.as_deref().or(t.as_deref()),
    };
    let project_id = ctx.project_for_create(requested)?;
    let name = req.name.unwrap_or_default();
    let description = req.description.unwrap_or_default();
    let device_id = req.device_id.unwrap_or_default();
    let device_owner = req.device_owner.unwrap_or_default();
    for (attr, value) in [
        ("name", &name),
        ("description", &description),
        ("device_id", &device_id),
        ("device_owner", &device_owner),
    ] {
        check_len(attr, value)?;
    }
    let host_id = req.host_id.flatten().unwrap_or_default();
    check_len("binding:host_id", &host_id)?;
    let vnic_type = req.vnic_type.unwrap_or_else(|| "normal".into());
    check_vnic_type(&vnic_type)?;
    let profile_given = req.binding_profile.is_some();
    let binding_profile = parse_profile(req.binding_profile.flatten())?;
    let mac = req.mac_address.as_deref().map(parse_mac).transpose()?;
    let ip_requests = req
        .fixed_ips
        .as_deref()
        .map(parse_ip_requests)
        .transpose()?;
    let tags = req.tags.unwrap_or_default();
    let mut unique_tags: Vec<String> = Vec::with_capacity(tags.len());
    for t in tags {
        check_len("tags", &t)?;
        if t.is_empty() {
            return Err(ApiError::invalid_attr("tags", "'' is not a valid tag"));
        }
        if !unique_tags.contains(&t) {
            unique_tags.push(t);
        }
    }
    if !ctx.is_admin {
        if !host_id.is_empty() {
            return Err(forbidden("rule:create_port:binding:host_id"));
        }
        if profile_given {
            return Err(forbidden("rule:create_port:binding:profile"));
        }
    }
    check_security_groups(&req.security_groups.unwrap_or_default())?;
    let port_security_enabled = req.port_security_enabled.unwrap_or(true);

    let mut tx = state.db.begin_write().await?;
    let network = match get_network(tx.conn(), &network_id).await? {
        Some(n) if ctx.owns(&n.project_id) || n.shared => n,
        _ => return Err(network_not_found(&network_id)),
    };
    if !owns_network(&ctx, &network) {
        // A port on someone else's shared network: Neutron's per-attribute policy.
        if mac.is_some() {
            return Err(forbidden("rule:create_port:mac_address"));
        }
        if ip_requests.iter().flatten().any(|r| r.ip_address.is_some()) {
            return Err(forbidden("rule:create_port:fixed_ips:ip_address"));
        }
        if device_owner.starts_with("network:") {
            return Err(forbidden("rule:create_port:device_owner"));
        }
        if req.port_security_enabled.is_some() {
            return Err(forbidden("rule:create_port:port_security_enabled"));
        }
        if req.allowed_address_pairs.is_some() {
            return Err(forbidden("rule:create_port:allowed_address_pairs"));
        }
    }
    let mac_address = match mac {
        Some(m) => {
            if mac_in_use(tx.conn(), &m).await? {
                return Err(mac_conflict(&network_id, &m));
            }
            m
        }
        None => generate_mac(tx.conn(), &network_id).await?,
    };
    let allowed_address_pairs =
        parse_address_pairs(&req.allowed_address_pairs.unwrap_or_default(), &mac_address)?;
    if !port_security_enabled && !allowed_address_pairs.is_empty() {
        return Err(port_security_conflict());
    }
    let fixed_ips = match ip_requests {
        Some(requests) => {
            let resolved = resolve_ip_requests(tx.conn(), &network_id, requests).await?;
            allocate(tx.conn(), &resolved).await?
        }
        None => default_ips(tx.conn(), &network_id).await?,
    };

    let now = timestamp();
    let mut port = Port {
        id: uuid::Uuid::new_v4().to_string(),
        project_id,
        network_id,
        name,
        description,
        admin_state_up: req.admin_state_up.unwrap_or(true),
        mac_address,
        device_id,
        device_owner,
        host_id,
        status: String::new(),
        fixed_ips,
        port_security_enabled,
        allowed_address_pairs,
        tags: unique_tags,
        vnic_type,
        binding_profile,
        created_at: now.clone(),
        updated_at: now,
        revision_number: 1,
    };
    port.status = port.derived_status().to_string();
    sqlx::query(&format!(
        "INSERT INTO ports ({COLUMNS}, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
         $11, $12, $13, $14, $15, $16, $17, $18, $19, (SELECT COALESCE(MAX(seq), 0) + 1 FROM ports))"
    ))
    .bind(&port.id)
    .bind(&port.project_id)
    .bind(&port.network_id)
    .bind(&port.name)
    .bind(&port.description)
    .bind(flag(port.admin_state_up))
    .bind(&port.mac_address)
    .bind(&port.device_id)
    .bind(&port.device_owner)
    .bind(&port.host_id)
    .bind(&port.status)
    .bind(flag(port.port_security_enabled))
    .bind(json!(port.allowed_address_pairs).to_string())
    .bind(json!(port.tags).to_string())
    .bind(&port.vnic_type)
    .bind(port.binding_profile.to_string())
    .bind(&port.created_at)
    .bind(&port.updated_at)
    .bind(port.revision_number)
    .execute(tx.conn())
    .await?;
    insert_ips(tx.conn(), &port.id, &port.fixed_ips).await?;
    // Read back, so the response has the stored order of the fixed IPs.
    let port = get_port(tx.conn(), &port.id)
        .await?
        .ok_or_else(|| port_not_found(&port.id))?;
    tx.commit().await?;
    Ok(one(StatusCode::CREATED, "port", port.to_json(&ctx)))
}

/// Neutron's `_get_changed_ips_for_port`: which of `original` stay, given the resolved new
/// list; returns (kept, to add).
fn changed_ips(original: &[FixedIp], new: Vec<ResolvedIp>) -> (Vec<FixedIp>, Vec<ResolvedIp>) {
    let mut remaining: Vec<FixedIp> = original.to_vec();
    let mut kept = Vec::new();
    let mut add = Vec::new();
    let mut bare = Vec::new();
    for r in new {
        match r.ip_address {
            Some(ip) => match remaining.iter().position(|f| f.ip_address == ip) {
                Some(i) => kept.push(remaining.remove(i)),
                None => add.push(r),
            },
            None => bare.push(r),
        }
    }
    for r in bare {
        match remaining.iter().rposition(|f| f.subnet_id == r.subnet.id) {
            Some(i) => kept.push(remaining.remove(i)),
            None => add.push(r),
        }
    }
    (kept, add)
}

async fn update(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    Body(req): Body<PortUpdate>,
) -> Result<Response, ApiError> {
    let id = path_id("Port", &id)?;
    for (attr, given) in [
        ("network_id", req.network_id.is_some()),
        ("project_id", req.project_id.is_some()),
        ("tenant_id", req.tenant_id.is_some()),
        ("tags", req.tags.is_some()),
    ] {
        if given {
            return Err(ApiError::bad_request(
                "HTTPBadRequest",
                format!("Cannot update read-only attribute {attr}"),
            ));
        }
    }
    let mac = req.mac_address.as_deref().map(parse_mac).transpose()?;
    let ip_requests = req
        .fixed_ips
        .as_deref()
        .map(parse_ip_requests)
        .transpose()?;
    if !ctx.is_admin {
        if req.host_id.is_some() {
            return Err(forbidden("rule:update_port:binding:host_id"));
        }
        if req.binding_profile.is_some() {
            return Err(forbidden("rule:update_port:binding:profile"));
        }
        if mac.is_some() {
            return Err(forbidden("rule:update_port:mac_address"));
        }
    }
    check_security_groups(&req.security_groups.clone().unwrap_or_default())?;

    let mut tx = state.db.begin_write().await?;
    let mut port = get_port(tx.conn(), &id)
        .await?
        .ok_or_else(|| port_not_found(&id))?;
    let network = get_network(tx.conn(), &port.network_id)
        .await?
        .ok_or_else(|| network_not_found(&port.network_id))?;
    if !may_access(&ctx, &port, Some(&network.project_id)) {
        return Err(port_not_found(&id));
    }
    if !owns_network(&ctx, &network) {
        if ip_requests.iter().flatten().any(|r| r.ip_address.is_some()) {
            return Err(forbidden("rule:update_port:fixed_ips:ip_address"));
        }
        if req
            .device_owner
            .as_deref()
            .is_some_and(|o| o.starts_with("network:"))
        {
            return Err(forbidden("rule:update_port:device_owner"));
        }
        if req.port_security_enabled.is_some() {
            return Err(forbidden("rule:update_port:port_security_enabled"));
        }
        if req.allowed_address_pairs.is_some() {
            return Err(forbidden("rule:update_port:allowed_address_pairs"));
        }
    }
    for (attr, value) in [
        ("name", &req.name),
        ("description", &req.description),
        ("device_id", &req.device_id),
        ("device_owner", &req.device_owner),
    ] {
        if let Some(v) = value {
            check_len(attr, v)?;
        }
    }
    if let Some(v) = req.name {
        port.name = v;
    }
    if let Some(v) = req.description {
        port.description = v;
    }
    if let Some(v) = req.device_id {
        port.device_id = v;
    }
    if let Some(v) = req.device_owner {
        port.device_owner = v;
    }
    if let Some(v) = req.admin_state_up {
        port.admin_state_up = v;
    }
    if let Some(v) = req.vnic_type {
        check_vnic_type(&v)?;
        port.vnic_type = v;
    }
    if let Some(v) = req.binding_profile {
        port.binding_profile = parse_profile(v)?;
    }
    if let Some(new_mac) = mac {
        if new_mac != port.mac_address {
            if !port.host_id.is_empty() {
                return Err(ApiError::conflict(
                    "PortBound",
                    format!(
                        "Unable to complete operation on port {id}, port is already bound, port type: ovs, old_mac {}, new_mac {new_mac}.",
                        port.mac_address
                    ),
                ));
            }
            if mac_in_use(tx.conn(), &new_mac).await? {
                return Err(mac_conflict(&port.network_id, &new_mac));
            }
            // Pairs that took the port's MAC by default follow it.
            for pair in &mut port.allowed_address_pairs {
                if pair.mac_address == port.mac_address {
                    pair.mac_address.clone_from(&new_mac);
                }
            }
            port.mac_address = new_mac;
        }
    }
    // After the MAC, whose change a host change in the same request must not mask.
    if let Some(v) = req.host_id {
        let host = v.unwrap_or_default();
        check_len("binding:host_id", &host)?;
        port.host_id = host;
    }
    if let Some(values) = req.allowed_address_pairs {
        port.allowed_address_pairs = parse_address_pairs(&values, &port.mac_address)?;
    }
    if let Some(v) = req.port_security_enabled {
        port.port_security_enabled = v;
    }
    if !port.port_security_enabled && !port.allowed_address_pairs.is_empty() {
        return Err(port_security_conflict());
    }
    if let Some(requests) = ip_requests {
        let resolved = resolve_ip_requests(tx.conn(), &port.network_id, requests).await?;
        let (kept, add) = changed_ips(&port.fixed_ips, resolved);
        sqlx::query("DELETE FROM port_ips WHERE port_id = $1")
            .bind(&id)
            .execute(tx.conn())
            .await?;
        insert_ips(tx.conn(), &id, &kept).await?;
        // Released addresses are free again for this very request, as in Neutron.
        let added = allocate(tx.conn(), &add).await?;
        insert_ips(tx.conn(), &id, &added).await?;
    }
    port.status = port.derived_status().to_string();
    port.updated_at = timestamp();
    port.revision_number += 1;
    sqlx::query(
        "UPDATE ports SET name = $1, description = $2, admin_state_up = $3, mac_address = $4, \
         device_id = $5, device_owner = $6, host_id = $7, status = $8, \
         port_security_enabled = $9, allowed_address_pairs = $10, vnic_type = $11, \
         binding_profile = $12, updated_at = $13, revision_number = $14 WHERE id = $15",
    )
    .bind(&port.name)
    .bind(&port.description)
    .bind(flag(port.admin_state_up))
    .bind(&port.mac_address)
    .bind(&port.device_id)
    .bind(&port.device_owner)
    .bind(&port.host_id)
    .bind(&port.status)
    .bind(flag(port.port_security_enabled))
    .bind(json!(port.allowed_address_pairs).to_string())
    .bind(&port.vnic_type)
    .bind(port.binding_profile.to_string())
    .bind(&port.updated_at)
    .bind(port.revision_number)
    .bind(&id)
    .execute(tx.conn())
    .await?;
    let port = get_port(tx.conn(), &id)
        .await?
        .ok_or_else(|| port_not_found(&id))?;
    tx.commit().await?;
    Ok(one(StatusCode::OK, "port", port.to_json(&ctx)))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = path_id("Port", &id)?;
    let mut tx = state.db.begin_write().await?;
    visible_port(tx.conn(), &ctx, &id).await?;
    sqlx::query("DELETE FROM port_ips WHERE port_id = $1")
        .bind(&id)
        .execute(tx.conn())
        .await?;
    // A port that a port pair or flow classifier references stays: the foreign key is
    // RESTRICT and the failure is networking-sfc's 500.
    sqlx::query("DELETE FROM ports WHERE id = $1")
        .bind(&id)
        .execute(tx.conn())
        .await?;
    tx.commit().await?;
    Ok(deleted())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_normalised_and_checked() {
        assert_eq!(
            parse_mac("FA:16:3E:00:0A:0b").ok().as_deref(),
            Some("fa:16:3e:00:0a:0b")
        );
        assert_eq!(
            parse_mac("fa-16-3e-1-2-3").ok().as_deref(),
            Some("fa:16:3e:01:02:03")
        );
        assert_eq!(
            parse_mac("fa16.3e01.0203").ok().as_deref(),
            Some("fa:16:3e:01:02:03")
        );
        for bad in [
            "00:00:00:00:00:00",
            "ff:ff:ff:ff:ff:ff",
            "fa:16:3e:00:00",
            "fa:16:3e:00:00:0g",
            "fa:16:3e:00:00:000",
            "",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fixed_ips_filter_needs_one_address_matching_every_key() {
        let ips = [
            FixedIp {
                subnet_id: "s1".into(),
                ip_address: IpAddr::from([10, 0, 0, 5]),
            },
            FixedIp {
                subnet_id: "s2".into(),
                ip_address: IpAddr::from([10, 1, 0, 7]),
            },
        ];
        let f = |v: &[&str]| {
            FixedIpsFilter::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map(|f| f.matches(&ips))
        };
        assert_eq!(f(&["ip_address=10.0.0.5"]), Ok(true));
        assert_eq!(f(&["ip_address=10.0.0.5", "subnet_id=s1"]), Ok(true));
        assert_eq!(f(&["ip_address=10.0.0.5", "subnet_id=s2"]), Ok(false));
        assert_eq!(f(&["subnet_id=s2"]), Ok(true));
        assert_eq!(f(&["ip_address_substr=1.0"]), Ok(true));
        assert_eq!(f(&["ip_address=10.0.0.6"]), Ok(false));
        assert!(f(&["mac=1"]).is_err());
        assert!(f(&["10.0.0.5"]).is_err());
    }
}
