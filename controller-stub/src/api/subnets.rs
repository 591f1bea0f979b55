//! `/v2.0/subnets`: the address ranges of a network, from which ports get their fixed IPs.
//!
//! The rules are Neutron's (`db_base_plugin_v2`, `ipam_backend_mixin`, neutron-lib's
//! validators). A CIDR with host bits set is accepted and stored as its network
//! (`10.0.0.7/24` becomes `10.0.0.0/24`), as Neutron's "turn the CIDR into a proper subnet" does;
//! a prefix of 0 and a CIDR that overlaps another subnet of the same network are 400. The
//! gateway defaults to the first host and may be `null`; like Neutron since the removal of
//! `force_gateway_on_subnet` it may lie outside the CIDR, but never be the network address or
//! the IPv4 broadcast address. Allocation pools default to the CIDR less the network address,
//! the IPv4 broadcast address and the gateway; given pools must lie inside the CIDR (400
//! `OutOfBoundsAllocationPool`), be ordered (400 `InvalidAllocationPool`), not overlap (409
//! `OverlappingAllocationPools`) and not hold the gateway (409
//! `GatewayConflictWithAllocationPools`). A subnet that ports hold addresses on cannot be
//! deleted (409 `SubnetInUse`).
//!
//! Addresses are handled as `u128` so that one code path serves IPv4 and IPv6; the port module
//! allocates from [`Subnet::allocation_pools`] through [`lowest_free_ip`].

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::networks::{get_network, network_not_found, Network};
use super::{deleted, many, one, path_id, timestamp, AppState, Body, ListQuery, Wrapped};
use crate::auth::Context;
use crate::db::{flag, get_flag};
use crate::error::ApiError;

/// Neutron's `max_dns_nameservers` default.
const MAX_DNS_NAMESERVERS: usize = 5;
/// Neutron's `max_subnet_host_routes` default.
const MAX_HOST_ROUTES: usize = 20;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2.0/subnets", get(list).post(create))
        .route("/v2.0/subnets/{id}", get(show).put(update).delete(remove))
}

/// Reads a present-but-`null` attribute as `Some(None)`, an absent one as `None` (with
/// `#[serde(default)]`): Neutron treats `"gateway_ip": null` and no `gateway_ip` differently.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetCreate {
    #[serde(default)]
    pub network_id: Option<String>,
    #[serde(default)]
    pub cidr: Option<String>,
    /// An integer, or a string holding one (Neutron's `convert_to_int`).
    #[serde(default)]
    pub ip_version: Option<Value>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub gateway_ip: Option<Option<String>>,
    #[serde(default)]
    pub allocation_pools: Option<Vec<Value>>,
    #[serde(default)]
    pub enable_dhcp: Option<bool>,
    #[serde(default)]
    pub dns_nameservers: Option<Vec<String>>,
    #[serde(default)]
    pub host_routes: Option<Vec<Value>>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Only `null` is supported: addresses come from the pools (no SLAAC).
    #[serde(default)]
    pub ipv6_ra_mode: Option<String>,
    #[serde(default)]
    pub ipv6_address_mode: Option<String>,
}

impl Wrapped for SubnetCreate {
    const KEY: &'static str = "subnet";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub gateway_ip: Option<Option<String>>,
    #[serde(default)]
    pub allocation_pools: Option<Vec<Value>>,
    #[serde(default)]
    pub enable_dhcp: Option<bool>,
    #[serde(default)]
    pub dns_nameservers: Option<Vec<String>>,
    #[serde(default)]
    pub host_routes: Option<Vec<Value>>,
    // Attributes Neutron has but does not let a PUT change: named so that the 400 says so.
    #[serde(default)]
    pub cidr: Option<Value>,
    #[serde(default)]
    pub ip_version: Option<Value>,
    #[serde(default)]
    pub network_id: Option<Value>,
    #[serde(default)]
    pub project_id: Option<Value>,
    #[serde(default)]
    pub tenant_id: Option<Value>,
}

impl Wrapped for SubnetUpdate {
    const KEY: &'static str = "subnet";
}

/// One allocation pool, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPool {
    pub start: IpAddr,
    pub end: IpAddr,
}

impl IpPool {
    fn to_json(self) -> Value {
        json!({"start": self.start.to_string(), "end": self.end.to_string()})
    }

    fn range(self) -> (u128, u128) {
        (ip_to_u128(self.start), ip_to_u128(self.end))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    pub destination: String,
    pub nexthop: String,
}

/// A stored subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub project_id: String,
    pub network_id: String,
    pub name: String,
    pub description: String,
    pub ip_version: i64,
    /// Always a network address (host bits cleared).
    pub cidr: IpNet,
    pub gateway_ip: Option<IpAddr>,
    pub enable_dhcp: bool,
    pub allocation_pools: Vec<IpPool>,
    pub dns_nameservers: Vec<String>,
    pub host_routes: Vec<HostRoute>,
    pub created_at: String,
    pub updated_at: String,
    pub revision_number: i64,
}

fn decode_err(e: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

impl Subnet {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let cidr: String = row.try_get("cidr")?;
        let gateway: Option<String> = row.try_get("gateway_ip")?;
        let pools: Vec<HostPoolText> =
            serde_json::from_str(&row.try_get::<String, _>("allocation_pools")?)
                .map_err(decode_err)?;
        let allocation_pools = pools
            .into_iter()
            .map(|p| {
                Ok(IpPool {
                    start: p.start.parse().map_err(decode_err)?,
                    end: p.end.parse().map_err(decode_err)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Subnet {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            network_id: row.try_get("network_id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            ip_version: row.try_get("ip_version")?,
            cidr: cidr.parse().map_err(decode_err)?,
            gateway_ip: gateway.map(|g| g.parse().map_err(decode_err)).transpose()?,
            enable_dhcp: get_flag(row, "enable_dhcp")?,
            allocation_pools,
            dns_nameservers: serde_json::from_str(&row.try_get::<String, _>("dns_nameservers")?)
                .map_err(decode_err)?,
            host_routes: serde_json::from_str(&row.try_get::<String, _>("host_routes")?)
                .map_err(decode_err)?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            revision_number: row.try_get("revision_number")?,
        })
    }

    /// The API representation.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "network_id": self.network_id,
            "ip_version": self.ip_version,
            "cidr": self.cidr.to_string(),
            "gateway_ip": self.gateway_ip.map(|g| g.to_string()),
            "enable_dhcp": self.enable_dhcp,
            "allocation_pools": self.allocation_pools.iter().map(|p| p.to_json()).collect::<Vec<_>>(),
            "dns_nameservers": self.dns_nameservers,
            "host_routes": self.host_routes,
            "ipv6_ra_mode": null,
            "ipv6_address_mode": null,
            "subnetpool_id": null,
            "segment_id": null,
            "service_types": [],
            "tags": [],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "revision_number": self.revision_number,
        })
    }

    /// Whether a port may hold `ip` on this subnet (Neutron's `check_subnet_ip`): inside the
    /// CIDR, not the network address, and for IPv4 not the broadcast address.
    pub fn holds(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip)
            && ip != self.cidr.network()
            && !(self.ip_version == 4 && ip == self.cidr.broadcast())
    }

    fn pools_text(&self) -> String {
        Value::Array(self.allocation_pools.iter().map(|p| p.to_json()).collect()).to_string()
    }
}

#[derive(Debug, Deserialize)]
struct HostPoolText {
    start: String,
    end: String,
}

/// An address as a number, IPv4 and IPv6 alike.
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address `n` of the family of `like`. `n` comes from a range inside that family's
/// subnet, so the IPv4 conversion never truncates; were it out of range it saturates to the
/// broadcast address rather than wrap.
pub fn u128_to_ip(like: IpAddr, n: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX))),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

fn ip_version_of(ip: IpAddr) -> i64 {
    if ip.is_ipv4() {
        4
    } else {
        6
    }
}

/// A string attribute of at most 255 characters, as Neutron's `type:string` with a limit.
pub(crate) fn check_len(attr: &str, value: &str) -> Result<(), ApiError> {
    if value.chars().count() > 255 {
        return Err(ApiError::invalid_attr(
            attr,
            format!(
                "'{}...' exceeds maximum length of 255",
                value.chars().take(16).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// Neutron's `type:ip_address` validator.
pub(crate) fn parse_ip(attr: &str, value: &str) -> Result<IpAddr, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::invalid_attr(attr, format!("'{value}' is not a valid IP address")))
}

/// Neutron's `type:subnet` validator, then its normalisation to the network address.
fn parse_cidr(attr: &str, value: &str) -> Result<IpNet, ApiError> {
    if !value.contains('/') {
        return Err(ApiError::invalid_attr(
            attr,
            format!("'{value}' is not a valid IP subnet"),
        ));
    }
    value
        .parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| ApiError::invalid_attr(attr, format!("'{value}' is not a valid IP subnet")))
}

fn version_mismatch(name: &str, addr: &str, ip_version: i64) -> ApiError {
    ApiError::invalid_input(format!(
        "{name} '{addr}' does not match the ip_version '{ip_version}'"
    ))
}

fn parse_ip_version(value: &Value) -> Result<i64, ApiError> {
    let n = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| ApiError::invalid_attr("ip_version", format!("'{value}' is not an integer")))?;
    if n != 4 && n != 6 {
        return Err(ApiError::invalid_attr(
            "ip_version",
            format!("{n} is not in [4, 6]"),
        ));
    }
    Ok(n)
}

/// The pools of a request (`[{"start": ..., "end": ...}]`), checked against the CIDR.
fn parse_pools(values: &[Value], cidr: IpNet, ip_version: i64) -> Result<Vec<IpPool>, ApiError> {
    let mut pools = Vec::with_capacity(values.len());
    for value in values {
        let malformed = || {
            ApiError::invalid_attr(
                "allocation_pools",
                format!("Invalid data format for IP pool: '{value}'"),
            )
        };
        let obj = value.as_object().ok_or_else(malformed)?;
        if obj.len() != 2 {
            return Err(malformed());
        }
        let field = |k: &str| obj.get(k).and_then(Value::as_str).ok_or_else(malformed);
        let start = parse_ip("allocation_pools", field("start")?)?;
        let end = parse_ip("allocation_pools", field("end")?)?;
        let pool = IpPool { start, end };
        let text = format!("{start}-{end}");
        if ip_version_of(start) != ip_version
            || ip_version_of(end) != ip_version
            || ip_to_u128(start) > ip_to_u128(end)
        {
            return Err(ApiError::bad_request(
                "InvalidAllocationPool",
                format!("The allocation pool {text} is not valid."),
            ));
        }
        let first = ip_to_u128(cidr.network()) + 1;
        let last = ip_to_u128(cidr.broadcast()) - u128::from(ip_version == 4);
        let (s, e) = pool.range();
        if s < first || e > last {
            return Err(ApiError::bad_request(
                "OutOfBoundsAllocationPool",
                format!("The allocation pool {text} spans beyond the subnet cidr {cidr}."),
            ));
        }
        pools.push(pool);
    }
    for (i, a) in pools.iter().enumerate() {
        for b in &pools[i + 1..] {
            let ((a0, a1), (b0, b1)) = (a.range(), b.range());
            if a0 <= b1 && b0 <= a1 {
                return Err(ApiError::conflict(
                    "OverlappingAllocationPools",
                    format!(
                        "Found overlapping allocation pools: {}-{} and {}-{} for subnet {cidr}.",
                        a.start, a.end, b.start, b.end
                    ),
                ));
            }
        }
    }
    Ok(pools)
}

/// Neutron's `generate_pools`: the CIDR less the network address, the IPv4 broadcast address
/// and the gateway.
fn default_pools(cidr: IpNet, ip_version: i64, gateway: Option<IpAddr>) -> Vec<IpPool> {
    let net = cidr.network();
    let (first, last) = (ip_to_u128(net), ip_to_u128(cidr.broadcast()));
    if first == last {
        return vec![IpPool {
            start: net,
            end: net,
        }];
    }
    let (lo, hi) = (first + 1, last - u128::from(ip_version == 4));
    if lo >= hi {
        return Vec::new();
    }
    let mut ranges = vec![(lo, hi)];
    if let Some(g) = gateway.map(ip_to_u128).filter(|g| (lo..=hi).contains(g)) {
        ranges = Vec::new();
        if g > lo {
            ranges.push((lo, g - 1));
        }
        if g < hi {
            ranges.push((g + 1, hi));
        }
    }
    ranges
        .into_iter()
        .map(|(s, e)| IpPool {
            start: u128_to_ip(net, s),
            end: u128_to_ip(net, e),
        })
        .collect()
}

fn check_gateway(cidr: IpNet, ip_version: i64, text: &str) -> Result<IpAddr, ApiError> {
    let ip = parse_ip("gateway_ip", text)?;
    if ip_version_of(ip) != ip_version {
        return Err(version_mismatch("gateway_ip", text, ip_version));
    }
    // A gateway outside the CIDR is allowed (Neutron cannot check it without its subnet), but
    // inside it, it cannot be the network or the IPv4 broadcast address.
    if cidr.contains(&ip) && (ip == cidr.network() || (ip_version == 4 && ip == cidr.broadcast())) {
        return Err(ApiError::invalid_input("Gateway is not valid on subnet"));
    }
    Ok(ip)
}

fn check_gateway_out_of_pools(gateway: Option<IpAddr>, pools: &[IpPool]) -> Result<(), ApiError> {
    let Some(g) = gateway else { return Ok(()) };
    let n = ip_to_u128(g);
    for p in pools {
        let (s, e) = p.range();
        if (s..=e).contains(&n) {
            return Err(ApiError::conflict(
                "GatewayConflictWithAllocationPools",
                format!(
                    "Gateway ip {g} conflicts with allocation pool {}-{}.",
                    p.start, p.end
                ),
            ));
        }
    }
    Ok(())
}

fn check_dhcp(cidr: IpNet, ip_version: i64) -> Result<(), ApiError> {
    let prefix = cidr.prefix_len();
    if (ip_version == 4 && prefix > 30) || (ip_version == 6 && prefix > 126) {
        return Err(ApiError::invalid_input(
            "Subnet has a prefix length that is incompatible with DHCP service enabled",
        ));
    }
    let net = cidr.network();
    let kind = if net.is_multicast() {
        Some("Multicast")
    } else if net.is_loopback() {
        Some("Loopback")
    } else if match net {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    } {
        Some("Link-local")
    } else {
        None
    };
    match kind {
        Some(k) => Err(ApiError::invalid_input(format!(
            "{k} IP subnet is not supported if enable_dhcp is True"
        ))),
        None => Ok(()),
    }
}

fn parse_nameservers(values: &[String], ip_version: i64) -> Result<Vec<String>, ApiError> {
    if values.len() > MAX_DNS_NAMESERVERS {
        return Err(ApiError::bad_request(
            "DNSNameServersExhausted",
            format!(
                "Unable to complete operation for subnet. The number of DNS nameservers exceeds the limit {MAX_DNS_NAMESERVERS}."
            ),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for v in values {
        let ip: IpAddr = v.trim().parse().map_err(|_| {
            ApiError::invalid_attr(
                "dns_nameservers",
                format!("'{v}' is not a valid nameserver"),
            )
        })?;
        let text = ip.to_string();
        if out.contains(&text) {
            return Err(ApiError::invalid_attr(
                "dns_nameservers",
                format!("Duplicate nameserver '{v}'"),
            ));
        }
        if ip_version_of(ip) != ip_version {
            return Err(version_mismatch("dns_nameserver", v, ip_version));
        }
        out.push(text);
    }
    Ok(out)
}

fn parse_host_routes(values: &[Value], ip_version: i64) -> Result<Vec<HostRoute>, ApiError> {
    if values.len() > MAX_HOST_ROUTES {
        return Err(ApiError::bad_request(
            "HostRoutesExhausted",
            format!(
                "Unable to complete operation for subnet. The number of host routes exceeds the limit {MAX_HOST_ROUTES}."
            ),
        ));
    }
    let mut out: Vec<HostRoute> = Vec::with_capacity(values.len());
    for value in values {
        let malformed = || {
            ApiError::invalid_attr(
                "host_routes",
                format!("Invalid data format for hostroute: '{value}'"),
            )
        };
        let obj = value.as_object().ok_or_else(malformed)?;
        if obj.len() != 2 {
            return Err(malformed());
        }
        let field = |k: &str| obj.get(k).and_then(Value::as_str).ok_or_else(malformed);
        let (dest_text, hop_text) = (field("destination")?, field("nexthop")?);
        let destination = parse_cidr("host_routes", dest_text)?;
        let nexthop = parse_ip("host_routes", hop_text)?;
        if ip_version_of(nexthop) != ip_version {
            return Err(version_mismatch("nexthop", hop_text, ip_version));
        }
        if ip_version_of(destination.network()) != ip_version {
            return Err(version_mismatch("destination", dest_text, ip_version));
        }
        let route = HostRoute {
            destination: destination.to_string(),
            nexthop: nexthop.to_string(),
        };
        if out.contains(&route) {
            return Err(ApiError::invalid_attr(
                "host_routes",
                format!("Duplicate hostroute '{value}'"),
            ));
        }
        out.push(route);
    }
    Ok(out)
}

const COLUMNS: &str = "id, project_id, network_id, name, description, ip_version, cidr, \
    gateway_ip, enable_dhcp, allocation_pools, dns_nameservers, host_routes, created_at, \
    updated_at, revision_number";

/// Reads one subnet (any project's; callers check visibility).
pub async fn get_subnet(conn: &mut AnyConnection, id: &str) -> Result<Option<Subnet>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM subnets WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(Subnet::from_row).transpose()
}

/// The subnets of a network in creation order (`seq`): the order in which a port without
/// `fixed_ips` tries them (Neutron leaves it to the database).
pub async fn network_subnets(
    conn: &mut AnyConnection,
    network_id: &str,
) -> Result<Vec<Subnet>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subnets WHERE network_id = $1 ORDER BY seq, id"
    ))
    .bind(network_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(Subnet::from_row).collect()
}

/// Who may see a subnet: its owner, an admin, or anyone when its network is shared
/// (Neutron's `admin_or_owner or shared`).
fn visible(ctx: &Context, subnet: &Subnet, network_shared: bool) -> bool {
    ctx.owns(&subnet.project_id) || network_shared
}

async fn network_shared(conn: &mut AnyConnection, network_id: &str) -> Result<bool, sqlx::Error> {
    Ok(get_network(conn, network_id)
        .await?
        .is_some_and(|n: Network| n.shared))
}

pub fn subnet_not_found(id: &str) -> ApiError {
    ApiError::not_found("SubnetNotFound", format!("Subnet {id} could not be found."))
}

/// A subnet the caller may see, or Neutron's 404.
pub async fn visible_subnet(
    conn: &mut AnyConnection,
    ctx: &Context,
    id: &str,
) -> Result<Subnet, ApiError> {
    match get_subnet(conn, id).await? {
        Some(s) if visible(ctx, &s, network_shared(conn, &s.network_id).await?) => Ok(s),
        _ => Err(subnet_not_found(id)),
    }
}

/// The lowest address of `subnet`'s pools that no port holds and that is not in `also_taken`
/// (addresses this request already picked).
pub async fn lowest_free_ip(
    conn: &mut AnyConnection,
    subnet: &Subnet,
    also_taken: &[IpAddr],
) -> Result<Option<IpAddr>, sqlx::Error> {
    let used: Vec<String> =
        sqlx::query_scalar("SELECT ip_address FROM port_ips WHERE subnet_id = $1")
            .bind(&subnet.id)
            .fetch_all(&mut *conn)
            .await?;
    let used: BTreeSet<u128> = used
        .iter()
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .chain(also_taken.iter().copied())
        .map(ip_to_u128)
        .collect();
    let mut pools: Vec<(u128, u128)> = subnet.allocation_pools.iter().map(|p| p.range()).collect();
    pools.sort_unstable();
    for (start, end) in pools {
        // Each step skips one used address, so this ends after at most |used| + 1 steps.
        let mut candidate = start;
        while candidate <= end {
            if !used.contains(&candidate) {
                return Ok(Some(u128_to_ip(subnet.cidr.network(), candidate)));
            }
            candidate += 1;
        }
    }
    Ok(None)
}

async fn list(
    State(state): State<AppState>,
    ctx: Context,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let mut conn = state.db.pool().acquire().await?;
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM subnets ORDER BY seq, id"))
        .fetch_all(&mut *conn)
        .await?;
    let shared: Vec<String> = sqlx::query_scalar("SELECT id FROM networks WHERE shared = 1")
        .fetch_all(&mut *conn)
        .await?;
    let mut items = Vec::new();
    for row in &rows {
        let s = Subnet::from_row(row)?;
        if visible(&ctx, &s, shared.contains(&s.network_id)) {
            items.push(s.to_json());
        }
    }
    Ok(many("subnets", query.apply(items)))
}

async fn show(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let id = path_id("Subnet", &id)?;
    let mut conn = state.db.pool().acquire().await?;
    let subnet = visible_subnet(&mut conn, &ctx, &id).await?;
    Ok(one(
        StatusCode::OK,
        "subnet",
        query.select(subnet.to_json()),
    ))
}

fn required<T>(value: Option<T>, attr: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| {
        ApiError::bad_request(
            "HTTPBadRequest",
            format!("Failed to parse request. Required attribute '{attr}' not specified"),
        )
    })
}

async fn create(
    State(state): State<AppState>,
    ctx: Context,
    Body(req): Body<SubnetCreate>,
) -> Result<Response, ApiError> {
    // The API layer's checks first, in the order Neutron's attribute map has them.
    let network_id = required(req.network_id, "network_id")?;
    let network_id = uuid::Uuid::parse_str(&network_id)
        .map(|u| u.to_string())
        .map_err(|_| {
            ApiError::invalid_attr("network_id", format!("'{network_id}' is not a valid UUID"))
        })?;
    let ip_version = parse_ip_version(&required(req.ip_version, "ip_version")?)?;
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
    check_len("name", &name)?;
    check_len("description", &description)?;
    if req.ipv6_ra_mode.is_some() || req.ipv6_address_mode.is_some() {
        return Err(ApiError::invalid_input(
            "ipv6_ra_mode and ipv6_address_mode are not supported: addresses come from the allocation pools",
        ));
    }
    let cidr =
        match req.cidr {
            Some(text) => {
                let cidr = parse_cidr("cidr", &text)?;
                if ip_version_of(cidr.network()) != ip_version {
                    return Err(version_mismatch("cidr", &text, ip_version));
                }
                cidr
            }
            None => return Err(ApiError::bad_request(
                "BadRequest",
                "Bad subnets request: a cidr must be specified in the absence of a subnet pool.",
            )),
        };
    if cidr.prefix_len() == 0 {
        return Err(ApiError::invalid_input(
            "0 is not allowed as CIDR prefix length",
        ));
    }
    let enable_dhcp = req.enable_dhcp.unwrap_or(true);
    if enable_dhcp {
        check_dhcp(cidr, ip_version)?;
    }
    let gateway_ip = match req.gateway_ip {
        Some(Some(text)) => Some(check_gateway(cidr, ip_version, &text)?),
        Some(None) => None,
        // The first host, when the CIDR has one.
        None => {
            let first = u128_to_ip(cidr.network(), ip_to_u128(cidr.network()) + 1);
            (cidr.contains(&first) && !(ip_version == 4 && first == cidr.broadcast()))
                .then_some(first)
        }
    };
    let dns_nameservers = parse_nameservers(&req.dns_nameservers.unwrap_or_default(), ip_version)?;
    let host_routes = parse_host_routes(&req.host_routes.unwrap_or_default(), ip_version)?;
    let allocation_pools = match req.allocation_pools {
        Some(values) => {
            let pools = parse_pools(&values, cidr, ip_version)?;
            check_gateway_out_of_pools(gateway_ip, &pools)?;
            pools
        }
        None => default_pools(cidr, ip_version, gateway_ip),
    };

    let mut tx = state.db.begin_write().await?;
    let network = match get_network(tx.conn(), &network_id).await? {
        Some(n) if ctx.owns(&n.project_id) || n.shared => n,
        _ => return Err(network_not_found(&network_id)),
    };
    // Only the network's owner (or an admin) adds subnets, even to a shared network.
    if !ctx.is_admin && network.project_id != project_id {
        return Err(ApiError::forbidden(
            "(rule:create_subnet) is disallowed by policy",
        ));
    }
    for other in network_subnets(tx.conn(), &network_id).await? {
        let overlaps = other.cidr.contains(&cidr.network()) || cidr.contains(&other.cidr.network());
        if overlaps {
            return Err(ApiError::invalid_input(format!(
                "Requested subnet with cidr: {cidr} for network: {network_id} overlaps with another subnet"
            )));
        }
    }
    let now = timestamp();
    let subnet = Subnet {
        id: uuid::Uuid::new_v4().to_string(),
        project_id,
        network_id,
        name,
        description,
        ip_version,
        cidr,
        gateway_ip,
        enable_dhcp,
        allocation_pools,
        dns_nameservers,
        host_routes,
        created_at: now.clone(),
        updated_at: now,
        revision_number: 1,
    };
    sqlx::query(&format!(
        "INSERT INTO subnets ({COLUMNS}, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
         $11, $12, $13, $14, $15, (SELECT COALESCE(MAX(seq), 0) + 1 FROM subnets))"
    ))
    .bind(&subnet.id)
    .bind(&subnet.project_id)
    .bind(&subnet.network_id)
    .bind(&subnet.name)
    .bind(&subnet.description)
    .bind(subnet.ip_version)
    .bind(subnet.cidr.to_string())
    .bind(subnet.gateway_ip.map(|g| g.to_string()))
    .bind(flag(subnet.enable_dhcp))
    .bind(subnet.pools_text())
    .bind(json!(subnet.dns_nameservers).to_string())
    .bind(json!(subnet.host_routes).to_string())
    .bind(&subnet.created_at)
    .bind(&subnet.updated_at)
    .bind(subnet.revision_number)
    .execute(tx.conn())
    .await?;
    tx.commit().await?;
    Ok(one(StatusCode::CREATED, "subnet", subnet.to_json()))
}

async fn update(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    Body(req): Body<SubnetUpdate>,
) -> Result<Response, ApiError> {
    let id = path_id("Subnet", &id)?;
    for (attr, given) in [
        ("cidr", req.cidr.is_some()),
        ("ip_version", req.ip_version.is_some()),
        ("network_id", req.network_id.is_some()),
        ("project_id", req.project_id.is_some()),
        ("tenant_id", req.tenant_id.is_some()),
    ] {
        if given {
            return Err(ApiError::bad_request(
                "HTTPBadRequest",
                format!("Cannot update read-only attribute {attr}"),
            ));
        }
    }
    let mut tx = state.db.begin_write().await?;
    let mut subnet = match get_subnet(tx.conn(), &id).await? {
        Some(s) if ctx.owns(&s.project_id) => s,
        _ => return Err(subnet_not_found(&id)),
    };
    if let Some(name) = req.name {
        check_len("name", &name)?;
        subnet.name = name;
    }
    if let Some(description) = req.description {
        check_len("description", &description)?;
        subnet.description = description;
    }
    if let Some(gateway) = req.gateway_ip {
        subnet.gateway_ip = gateway
            .map(|g| check_gateway(subnet.cidr, subnet.ip_version, &g))
            .transpose()?;
    }
    if let Some(values) = req.allocation_pools {
        subnet.allocation_pools = parse_pools(&values, subnet.cidr, subnet.ip_version)?;
    }
    check_gateway_out_of_pools(subnet.gateway_ip, &subnet.allocation_pools)?;
    if let Some(enable) = req.enable_dhcp {
        if enable && !subnet.enable_dhcp {
            check_dhcp(subnet.cidr, subnet.ip_version)?;
        }
        subnet.enable_dhcp = enable;
    }
    if let Some(values) = req.dns_nameservers {
        subnet.dns_nameservers = parse_nameservers(&values, subnet.ip_version)?;
    }
    if let Some(values) = req.host_routes {
        subnet.host_routes = parse_host_routes(&values, subnet.ip_version)?;
    }
    subnet.updated_at = timestamp();
    subnet.revision_number += 1;
    sqlx::query(
        "UPDATE subnets SET name = $1, description = $2, gateway_ip = $3, enable_dhcp = $4, \
         allocation_pools = $5, dns_nameservers = $6, host_routes = $7, updated_at = $8, \
         revision_number = $9 WHERE id = $10",
    )
    .bind(&subnet.name)
    .bind(&subnet.description)
    .bind(subnet.gateway_ip.map(|g| g.to_string()))
    .bind(flag(subnet.enable_dhcp))
    .bind(subnet.pools_text())
    .bind(json!(subnet.dns_nameservers).to_string())
    .bind(json!(subnet.host_routes).to_string())
    .bind(&subnet.updated_at)
    .bind(subnet.revision_number)
    .bind(&id)
    .execute(tx.conn())
    .await?;
    tx.commit().await?;
    Ok(one(StatusCode::OK, "subnet", subnet.to_json()))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = path_id("Subnet", &id)?;
    let mut tx = state.db.begin_write().await?;
    match get_subnet(tx.conn(), &id).await? {
        Some(s) if ctx.owns(&s.project_id) => {}
        _ => return Err(subnet_not_found(&id)),
    }
    let used: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM port_ips WHERE subnet_id = $1")
        .bind(&id)
        .fetch_one(tx.conn())
        .await?;
    if used > 0 {
        return Err(ApiError::conflict(
            "SubnetInUse",
            format!("Unable to complete operation on subnet {id}: One or more ports have an IP allocation from this subnet."),
        ));
    }
    sqlx::query("DELETE FROM subnets WHERE id = $1")
        .bind(&id)
        .execute(tx.conn())
        .await?;
    tx.commit().await?;
    Ok(deleted())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn pools(list: &[IpPool]) -> Vec<String> {
        list.iter()
            .map(|p| format!("{}-{}", p.start, p.end))
            .collect()
    }

    #[test]
    fn default_pools_leave_out_network_broadcast_and_gateway() {
        let gw = Some("10.0.0.1".parse().unwrap());
        assert_eq!(
            pools(&default_pools(net("10.0.0.0/24"), 4, gw)),
            ["10.0.0.2-10.0.0.254"]
        );
        let mid = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100)));
        assert_eq!(
            pools(&default_pools(net("10.0.0.0/24"), 4, mid)),
            ["10.0.0.1-10.0.0.99", "10.0.0.101-10.0.0.254"]
        );
        assert_eq!(
            pools(&default_pools(net("10.0.0.0/24"), 4, None)),
            ["10.0.0.1-10.0.0.254"]
        );
        // IPv6 keeps the last address (there is no broadcast).
        assert_eq!(
            pools(&default_pools(net("fd00::/126"), 6, None)),
            ["fd00::1-fd00::3"]
        );
        assert!(default_pools(net("10.0.0.0/31"), 4, None).is_empty());
        assert_eq!(
            pools(&default_pools(net("10.0.0.5/32"), 4, None)),
            ["10.0.0.5-10.0.0.5"]
        );
    }

    #[test]
    fn cidrs_are_normalised_and_need_a_prefix() {
        assert_eq!(
            parse_cidr("cidr", "10.0.0.7/24").map(|c| c.to_string()),
            Ok("10.0.0.0/24".to_string())
        );
        assert!(parse_cidr("cidr", "10.0.0.0").is_err());
        assert!(parse_cidr("cidr", "10.0.0.0/33").is_err());
        assert!(parse_cidr("cidr", "fd00::1/64").is_ok());
    }

    #[test]
    fn ips_convert_both_ways() {
        for ip in ["10.1.2.3", "255.255.255.255", "fd00::1", "::"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(u128_to_ip(ip, ip_to_u128(ip)), ip);
        }
    }
}
