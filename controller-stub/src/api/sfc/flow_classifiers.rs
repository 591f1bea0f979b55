//! `/v2.0/sfc/flow_classifiers`: which traffic enters a chain.
//!
//! Every attribute but the name and the description is fixed at creation. A new classifier
//! must not overlap any classifier the caller can see (400 `FlowClassifierInConflict`): two
//! classifiers conflict when their ethertypes are equal, their protocols are equal or either is
//! unset, their source and destination prefixes overlap (unset is any), their source and
//! destination port ranges overlap (an unset bound is open) and their logical source and
//! destination ports are equal or either is unset ([`conflict`]). Without the logical-port
//! terms this is the "basic" conflict ([`basic_conflict`]) that port chains and service graphs
//! use. A classifier a chain uses cannot be deleted (409 `FlowClassifierInUse`).

use std::str::FromStr;

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

use super::{
    check_quota, commit_create, delete_resource, json_column, not_allowed_in_post,
    project_for_create, read_only, show, string, update_names, uuid_or_none, visible_port, Attr,
    Deletable, DESCRIPTION_MAX, NAME_MAX,
};
use crate::api::{deleted, many, one, path_id, timestamp, AppState, Body, ListQuery, Wrapped};
use crate::auth::Context;
use crate::drivers::{ResourceKind, SfcResource};
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2.0/sfc/flow_classifiers", get(list).post(create))
        .route(
            "/v2.0/sfc/flow_classifiers/{id}",
            get(show_one).put(update).delete(remove),
        )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowClassifierCreate {
    #[serde(default)]
    pub id: Attr,
    #[serde(default)]
    pub name: Attr,
    #[serde(default)]
    pub description: Attr,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub ethertype: Attr,
    #[serde(default)]
    pub protocol: Attr,
    #[serde(default)]
    pub source_port_range_min: Attr,
    #[serde(default)]
    pub source_port_range_max: Attr,
    #[serde(default)]
    pub destination_port_range_min: Attr,
    #[serde(default)]
    pub destination_port_range_max: Attr,
    #[serde(default)]
    pub source_ip_prefix: Attr,
    #[serde(default)]
    pub destination_ip_prefix: Attr,
    #[serde(default)]
    pub logical_source_port: Attr,
    #[serde(default)]
    pub logical_destination_port: Attr,
    #[serde(default)]
    pub l7_parameters: Attr,
}

impl Wrapped for FlowClassifierCreate {
    const KEY: &'static str = "flow_classifier";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowClassifierUpdate {
    #[serde(default)]
    pub name: Attr,
    #[serde(default)]
    pub description: Attr,
    #[serde(default)]
    pub id: Attr,
    #[serde(default)]
    pub project_id: Attr,
    #[serde(default)]
    pub tenant_id: Attr,
    #[serde(default)]
    pub ethertype: Attr,
    #[serde(default)]
    pub protocol: Attr,
    #[serde(default)]
    pub source_port_range_min: Attr,
    #[serde(default)]
    pub source_port_range_max: Attr,
    #[serde(default)]
    pub destination_port_range_min: Attr,
    #[serde(default)]
    pub destination_port_range_max: Attr,
    #[serde(default)]
    pub source_ip_prefix: Attr,
    #[serde(default)]
    pub destination_ip_prefix: Attr,
    #[serde(default)]
    pub logical_source_port: Attr,
    #[serde(default)]
    pub logical_destination_port: Attr,
    #[serde(default)]
    pub l7_parameters: Attr,
}

impl Wrapped for FlowClassifierUpdate {
    const KEY: &'static str = "flow_classifier";
}

/// A stored flow classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowClassifier {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// `tcp`, `udp`, `icmp`, or any.
    pub protocol: Option<String>,
    pub source_port_range_min: Option<i64>,
    pub source_port_range_max: Option<i64>,
    pub destination_port_range_min: Option<i64>,
    pub destination_port_range_max: Option<i64>,
    pub source_ip_prefix: Option<String>,
    pub destination_ip_prefix: Option<String>,
    pub logical_source_port: Option<String>,
    pub logical_destination_port: Option<String>,
    /// Always `{}`: networking-sfc supports no L7 parameter.
    pub l7_parameters: Value,
}

impl FlowClassifier {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(FlowClassifier {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            ethertype: row.try_get("ethertype")?,
            protocol: row.try_get("protocol")?,
            source_port_range_min: row.try_get("source_port_range_min")?,
            source_port_range_max: row.try_get("source_port_range_max")?,
            destination_port_range_min: row.try_get("destination_port_range_min")?,
            destination_port_range_max: row.try_get("destination_port_range_max")?,
            source_ip_prefix: row.try_get("source_ip_prefix")?,
            destination_ip_prefix: row.try_get("destination_ip_prefix")?,
            logical_source_port: row.try_get("logical_source_port")?,
            logical_destination_port: row.try_get("logical_destination_port")?,
            l7_parameters: json_column(row, "l7_parameters")?,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "ethertype": self.ethertype,
            "protocol": self.protocol,
            "source_port_range_min": self.source_port_range_min,
            "source_port_range_max": self.source_port_range_max,
            "destination_port_range_min": self.destination_port_range_min,
            "destination_port_range_max": self.destination_port_range_max,
            "source_ip_prefix": self.source_ip_prefix,
            "destination_ip_prefix": self.destination_ip_prefix,
            "logical_source_port": self.logical_source_port,
            "logical_destination_port": self.logical_destination_port,
            "l7_parameters": self.l7_parameters,
        })
    }
}

impl SfcResource for FlowClassifier {
    const KIND: ResourceKind = ResourceKind::FlowClassifier;
    fn id(&self) -> &str {
        &self.id
    }
    fn to_json(&self) -> Value {
        FlowClassifier::to_json(self)
    }
}

fn either_unset_or_equal(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// Whether two prefixes share an address; unset is any. Prefixes were validated on the way in,
/// so one that does not parse (never stored) is taken as any, the safe side for a conflict.
fn prefixes_overlap(a: Option<&str>, b: Option<&str>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return true;
    };
    match (IpNet::from_str(a), IpNet::from_str(b)) {
        (Ok(a), Ok(b)) => {
            let (a, b) = (a.trunc(), b.trunc());
            a.contains(&b) || b.contains(&a)
        }
        _ => true,
    }
}

/// networking-sfc's `_port_range_conflict`: each range's lower bound must not exceed the
/// other's upper bound, where a missing bound never excludes.
fn port_ranges_overlap(
    a_min: Option<i64>,
    a_max: Option<i64>,
    b_min: Option<i64>,
    b_max: Option<i64>,
) -> bool {
    let first = match (a_min, b_max) {
        (Some(min), Some(max)) => min <= max,
        _ => true,
    };
    let second = match (b_min, a_max) {
        (Some(min), Some(max)) => min <= max,
        _ => true,
    };
    first && second
}

/// networking-sfc's `flowclassifier_basic_conflict`: the two classifiers can match one packet,
/// logical ports aside.
pub fn basic_conflict(a: &FlowClassifier, b: &FlowClassifier) -> bool {
    // The cheap comparisons first: a bulk create compares every pair.
    a.ethertype == b.ethertype
        && either_unset_or_equal(a.protocol.as_deref(), b.protocol.as_deref())
        && port_ranges_overlap(
            a.source_port_range_min,
            a.source_port_range_max,
            b.source_port_range_min,
            b.source_port_range_max,
        )
        && port_ranges_overlap(
            a.destination_port_range_min,
            a.destination_port_range_max,
            b.destination_port_range_min,
            b.destination_port_range_max,
        )
        && prefixes_overlap(a.source_ip_prefix.as_deref(), b.source_ip_prefix.as_deref())
        && prefixes_overlap(
            a.destination_ip_prefix.as_deref(),
            b.destination_ip_prefix.as_deref(),
        )
}

/// networking-sfc's `flowclassifier_conflict`: a basic conflict whose logical source and
/// destination ports are each equal or unset on one side.
pub fn conflict(a: &FlowClassifier, b: &FlowClassifier) -> bool {
    basic_conflict(a, b)
        && either_unset_or_equal(
            a.logical_source_port.as_deref(),
            b.logical_source_port.as_deref(),
        )
        && either_unset_or_equal(
            a.logical_destination_port.as_deref(),
            b.logical_destination_port.as_deref(),
        )
}

const COLUMNS: &str = "id, project_id, name, description, ethertype, protocol, \
    source_port_range_min, source_port_range_max, destination_port_range_min, \
    destination_port_range_max, source_ip_prefix, destination_ip_prefix, logical_source_port, \
    logical_destination_port, l7_parameters";

/// Reads one classifier (any project's; callers check ownership).
pub async fn get_flow_classifier(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<FlowClassifier>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM sfc_flow_classifiers WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(FlowClassifier::from_row).transpose()
}

/// Every classifier, oldest first.
pub async fn all_flow_classifiers(
    conn: &mut AnyConnection,
) -> Result<Vec<FlowClassifier>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM sfc_flow_classifiers ORDER BY created_at, id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(FlowClassifier::from_row).collect()
}

/// The classifiers of port chains that may basic-conflict with `fc`, each with its chain's id
/// and project: the database leaves out those whose ethertype, protocol or port ranges cannot
/// overlap `fc`'s (the prefixes are compared by [`basic_conflict`] afterwards), so a new chain
/// is checked against the few candidates instead of every chain's classifiers.
pub async fn chained_candidates(
    conn: &mut AnyConnection,
    fc: &FlowClassifier,
) -> Result<Vec<(FlowClassifier, String, String)>, sqlx::Error> {
    let columns: Vec<String> = COLUMNS.split(", ").map(|c| format!("f.{c}")).collect();
    let mut sql = format!(
        "SELECT {}, c.id AS chain, c.project_id AS chain_project \
         FROM sfc_chain_classifier_associations a \
         JOIN sfc_flow_classifiers f ON f.id = a.flowclassifier_id \
         JOIN sfc_port_chains c ON c.id = a.portchain_id WHERE f.ethertype = $1",
        columns.join(", ")
    );
    let mut n = 1;
    let mut next = |sql: &mut String, condition: &str| {
        n += 1;
        sql.push_str(&condition.replace('#', &format!("${n}")));
    };
    if fc.protocol.is_some() {
        next(&mut sql, " AND (f.protocol IS NULL OR f.protocol = #)");
    }
    // A missing bound never excludes (see `port_ranges_overlap`).
    let bounds = [
        (fc.source_port_range_min, "source_port_range_max", ">="),
        (fc.source_port_range_max, "source_port_range_min", "<="),
        (
            fc.destination_port_range_min,
            "destination_port_range_max",
            ">=",
        ),
        (
            fc.destination_port_range_max,
            "destination_port_range_min",
            "<=",
        ),
    ];
    for (bound, column, op) in &bounds {
        if bound.is_some() {
            next(
                &mut sql,
                &format!(" AND (f.{column} IS NULL OR f.{column} {op} #)"),
            );
        }
    }
    let mut query = sqlx::query(&sql).bind(&fc.ethertype);
    if let Some(p) = &fc.protocol {
        query = query.bind(p);
    }
    for (bound, _, _) in bounds {
        if let Some(b) = bound {
            query = query.bind(b);
        }
    }
    let rows = query.fetch_all(&mut *conn).await?;
    rows.iter()
        .filter_map(|row| {
            let other = match FlowClassifier::from_row(row) {
                Ok(other) => other,
                Err(e) => return Some(Err(e)),
            };
            if !basic_conflict(&other, fc) {
                return None;
            }
            let chain = row.try_get("chain");
            let project = row.try_get("chain_project");
            Some(chain.and_then(|c| project.map(|p| (other, c, p))))
        })
        .collect()
}

pub fn flow_classifier_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "FlowClassifierNotFound",
        format!("Flow Classifier {id} not found."),
    )
}

/// A classifier the caller may see, or 404 `FlowClassifierNotFound`.
pub async fn visible_flow_classifier(
    conn: &mut AnyConnection,
    ctx: &Context,
    id: &str,
) -> Result<FlowClassifier, ApiError> {
    match get_flow_classifier(conn, id).await? {
        Some(fc) if ctx.owns(&fc.project_id) => Ok(fc),
        _ => Err(flow_classifier_not_found(id)),
    }
}

/// The chain that uses a classifier, if any.
pub async fn chain_of(conn: &mut AnyConnection, fc: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT portchain_id FROM sfc_chain_classifier_associations WHERE flowclassifier_id = $1",
    )
    .bind(fc)
    .fetch_optional(&mut *conn)
    .await
}

async fn list(
    State(state): State<AppState>,
    ctx: Context,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let mut conn = state.db.pool().acquire().await?;
    let items = all_flow_classifiers(&mut conn)
        .await?
        .into_iter()
        .filter(|fc| ctx.owns(&fc.project_id))
        .map(|fc| fc.to_json())
        .collect();
    Ok(many("flow_classifiers", query.apply(items)))
}

async fn show_one(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let id = path_id("FlowClassifier", &id).map_err(|_| flow_classifier_not_found(&id))?;
    let mut conn = state.db.pool().acquire().await?;
    let fc = visible_flow_classifier(&mut conn, &ctx, &id).await?;
    Ok(one(
        StatusCode::OK,
        "flow_classifier",
        query.select(fc.to_json()),
    ))
}

/// networking-sfc's `normalize_port_value`: an integer (or integer string) in 0..=65535.
pub fn parse_port(v: &Value) -> Result<Option<i64>, ApiError> {
    let parsed = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match parsed {
        Some(p) if (0..=65535).contains(&p) => Ok(Some(p)),
        _ => Err(ApiError::bad_request(
            "FlowClassifierInvalidPortValue",
            format!("Flow Classifier has invalid port value {}.", show(v)),
        )),
    }
}

/// neutron-lib's `type:subnet_or_none`: a CIDR with its prefix length (host bits allowed, as
/// netaddr allows them), IPv4 in canonical notation.
pub fn parse_prefix(attr: &str, v: &Value) -> Result<Option<String>, ApiError> {
    let s = match v {
        Value::Null => return Ok(None),
        Value::String(s) => s,
        other => {
            return Err(ApiError::invalid_attr(
                attr,
                format!("'{}' is not a valid IP subnet", show(other)),
            ))
        }
    };
    let net = IpNet::from_str(s)
        .map_err(|_| ApiError::invalid_attr(attr, format!("'{s}' is not a valid IP subnet")))?;
    if matches!(net, IpNet::V4(_)) && net.to_string() != *s {
        return Err(ApiError::invalid_attr(
            attr,
            format!(
                "'{s}' isn't a recognized IP subnet cidr, '{}' is recommended",
                net.trunc()
            ),
        ));
    }
    Ok(Some(s.clone()))
}

fn parse_ethertype(v: Option<&Value>) -> Result<String, ApiError> {
    match v {
        None | Some(Value::Null) => Ok("IPv4".to_string()),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("ipv4") => Ok("IPv4".to_string()),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("ipv6") => Ok("IPv6".to_string()),
        Some(other) => Err(ApiError::bad_request(
            "FlowClassifierInvalidEthertype",
            format!(
                "Flow Classifier does not support ethertype {}. Supported ethertype values \
                 are ['IPv4', 'IPv6'].",
                show(other)
            ),
        )),
    }
}

fn parse_protocol(v: Option<&Value>) -> Result<Option<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if matches!(s.to_ascii_lowercase().as_str(), "tcp" | "udp" | "icmp") =>
        {
            Ok(Some(s.to_ascii_lowercase()))
        }
        Some(other) => Err(ApiError::bad_request(
            "FlowClassifierInvalidProtocol",
            format!(
                "Flow Classifier does not support protocol {}. Supported protocol values are \
                 ['tcp', 'udp', 'icmp'].",
                show(other)
            ),
        )),
    }
}

/// networking-sfc's `normalize_l7parameters`: a dictionary of supported keys, of which there
/// are none.
fn parse_l7(v: Option<&Value>) -> Result<Value, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(Value::Object(m)) => match m.keys().next() {
            None => Ok(Value::Object(Map::new())),
            Some(key) => Err(ApiError::bad_request(
                "FlowClassifierInvalidL7Parameter",
                format!(
                    "Invalid Flow Classifier parameters: Unknown key {key}. Supported flow \
                     classifier parameters are {{}}."
                ),
            )),
        },
        Some(other) => Err(ApiError::invalid_attr(
            "l7_parameters",
            format!("'{}' is not a dictionary", show(other)),
        )),
    }
}

/// `name`/`description` of a classifier: `null` is the empty string (networking-sfc's
/// `normalize_string`).
fn fc_string(attr: &str, v: &Attr, max: usize) -> Result<Option<String>, ApiError> {
    match v.given() {
        Some(Value::Null) => Ok(Some(String::new())),
        _ => string(attr, v, max),
    }
}

/// networking-sfc's `_check_port_range_valid`.
fn check_port_range(
    min: Option<i64>,
    max: Option<i64>,
    protocol: Option<&str>,
) -> Result<(), ApiError> {
    if let (Some(min), Some(max)) = (min, max) {
        if min > max {
            return Err(ApiError::bad_request(
                "FlowClassifierInvalidPortRange",
                format!(
                    "Invalid IP protocol port range. min_port_range={min} must be lesser or \
                     equal to max_port_range={max}."
                ),
            ));
        }
    }
    if (min.is_some() || max.is_some()) && !matches!(protocol, Some("tcp" | "udp")) {
        return Err(ApiError::bad_request(
            "FlowClassifierProtocolRequiredWithPorts",
            "IP protocol must be TCP or UDP, if port range is given.",
        ));
    }
    Ok(())
}

/// networking-sfc's `_check_ip_prefix_valid`.
fn check_prefix_family(prefix: Option<&str>, ethertype: &str) -> Result<(), ApiError> {
    let Some(prefix) = prefix else { return Ok(()) };
    let matches = match IpNet::from_str(prefix) {
        Ok(IpNet::V4(_)) => ethertype == "IPv4",
        Ok(IpNet::V6(_)) => ethertype == "IPv6",
        Err(_) => false,
    };
    if !matches {
        return Err(ApiError::bad_request(
            "FlowClassifierIpPrefixFormatConflictWithEthertype",
            format!("IP prefix {prefix} format conflicts with ethertype {ethertype}."),
        ));
    }
    Ok(())
}

/// The create request converted and checked on its own (API-layer rules), as a classifier
/// without id.
fn validate_create(ctx: &Context, req: &FlowClassifierCreate) -> Result<FlowClassifier, ApiError> {
    if req.id.is_given() {
        return Err(not_allowed_in_post("id"));
    }
    let name = fc_string("name", &req.name, NAME_MAX)?.unwrap_or_default();
    let description =
        fc_string("description", &req.description, DESCRIPTION_MAX)?.unwrap_or_default();
    let project_id = project_for_create(ctx, &req.project_id, &req.tenant_id)?;
    let ethertype = parse_ethertype(req.ethertype.given())?;
    let protocol = parse_protocol(req.protocol.given())?;
    let port = |a: &Attr| a.given().map(parse_port).transpose().map(Option::flatten);
    let source_port_range_min = port(&req.source_port_range_min)?;
    let source_port_range_max = port(&req.source_port_range_max)?;
    let destination_port_range_min = port(&req.destination_port_range_min)?;
    let destination_port_range_max = port(&req.destination_port_range_max)?;
    let prefix = |attr: &str, a: &Attr| {
        a.given()
            .map(|v| parse_prefix(attr, v))
            .transpose()
            .map(Option::flatten)
    };
    let source_ip_prefix = prefix("source_ip_prefix", &req.source_ip_prefix)?;
    let destination_ip_prefix = prefix("destination_ip_prefix", &req.destination_ip_prefix)?;
    let logical_source_port = uuid_or_none("logical_source_port", &req.logical_source_port)?;
    let logical_destination_port =
        uuid_or_none("logical_destination_port", &req.logical_destination_port)?;
    let l7_parameters = parse_l7(req.l7_parameters.given())?;
    Ok(FlowClassifier {
        id: String::new(),
        project_id,
        name,
        description,
        ethertype,
        protocol,
        source_port_range_min,
        source_port_range_max,
        destination_port_range_min,
        destination_port_range_max,
        source_ip_prefix,
        destination_ip_prefix,
        logical_source_port,
        logical_destination_port,
        l7_parameters,
    })
}

async fn create(
    State(state): State<AppState>,
    ctx: Context,
    Body(req): Body<FlowClassifierCreate>,
) -> Result<Response, ApiError> {
    let mut fc = validate_create(&ctx, &req)?;
    let mut tx = state.db.begin_write().await?;
    check_quota(
        tx.conn(),
        "sfc_flow_classifiers",
        "flow_classifier",
        &fc.project_id,
        state.quotas.flow_classifier,
    )
    .await?;
    check_port_range(
        fc.source_port_range_min,
        fc.source_port_range_max,
        fc.protocol.as_deref(),
    )?;
    check_port_range(
        fc.destination_port_range_min,
        fc.destination_port_range_max,
        fc.protocol.as_deref(),
    )?;
    check_prefix_family(fc.source_ip_prefix.as_deref(), &fc.ethertype)?;
    check_prefix_family(fc.destination_ip_prefix.as_deref(), &fc.ethertype)?;
    for port in [&fc.logical_source_port, &fc.logical_destination_port]
        .into_iter()
        .flatten()
    {
        if visible_port(tx.conn(), &ctx, port).await?.is_none() {
            return Err(ApiError::not_found(
                "FlowClassifierPortNotFound",
                format!("Flow Classifier Neutron Port {port} not found."),
            ));
        }
    }
    for other in all_flow_classifiers(tx.conn()).await? {
        if ctx.owns(&other.project_id) && conflict(&fc, &other) {
            return Err(ApiError::bad_request(
                "FlowClassifierInConflict",
                format!(
                    "Flow Classifier conflicts with another Flow Classifier {}.",
                    other.id
                ),
            ));
        }
    }
    fc.id = uuid::Uuid::new_v4().to_string();
    sqlx::query(&format!(
        "INSERT INTO sfc_flow_classifiers ({COLUMNS}, created_at) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
    ))
    .bind(&fc.id)
    .bind(&fc.project_id)
    .bind(&fc.name)
    .bind(&fc.description)
    .bind(&fc.ethertype)
    .bind(&fc.protocol)
    .bind(fc.source_port_range_min)
    .bind(fc.source_port_range_max)
    .bind(fc.destination_port_range_min)
    .bind(fc.destination_port_range_max)
    .bind(&fc.source_ip_prefix)
    .bind(&fc.destination_ip_prefix)
    .bind(&fc.logical_source_port)
    .bind(&fc.logical_destination_port)
    .bind(fc.l7_parameters.to_string())
    .bind(timestamp())
    .execute(tx.conn())
    .await?;
    let fc = get_flow_classifier(tx.conn(), &fc.id)
        .await?
        .ok_or_else(|| flow_classifier_not_found(&fc.id))?;
    commit_create(&state, &ctx, tx, &fc).await?;
    Ok(one(StatusCode::CREATED, "flow_classifier", fc.to_json()))
}

async fn update(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    Body(req): Body<FlowClassifierUpdate>,
) -> Result<Response, ApiError> {
    let id = path_id("FlowClassifier", &id).map_err(|_| flow_classifier_not_found(&id))?;
    for (attr, value) in [
        ("id", &req.id),
        ("project_id", &req.project_id),
        ("tenant_id", &req.tenant_id),
        ("ethertype", &req.ethertype),
        ("protocol", &req.protocol),
        ("source_port_range_min", &req.source_port_range_min),
        ("source_port_range_max", &req.source_port_range_max),
        (
            "destination_port_range_min",
            &req.destination_port_range_min,
        ),
        (
            "destination_port_range_max",
            &req.destination_port_range_max,
        ),
        ("source_ip_prefix", &req.source_ip_prefix),
        ("destination_ip_prefix", &req.destination_ip_prefix),
        ("logical_source_port", &req.logical_source_port),
        ("logical_destination_port", &req.logical_destination_port),
        ("l7_parameters", &req.l7_parameters),
    ] {
        if value.is_given() {
            return Err(read_only(attr));
        }
    }
    let name = fc_string("name", &req.name, NAME_MAX)?;
    let description = fc_string("description", &req.description, DESCRIPTION_MAX)?;
    let fc: FlowClassifier = update_names(&state, &ctx, &id, name, description).await?;
    Ok(one(StatusCode::OK, "flow_classifier", fc.to_json()))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = path_id("FlowClassifier", &id).map_err(|_| flow_classifier_not_found(&id))?;
    delete_resource::<FlowClassifier>(&state, &ctx, &id).await?;
    Ok(deleted())
}

async fn ensure_unused(conn: &mut AnyConnection, id: &str) -> Result<(), ApiError> {
    if chain_of(conn, id).await?.is_some() {
        return Err(ApiError::conflict(
            "FlowClassifierInUse",
            format!("Flow Classifier {id} in use."),
        ));
    }
    Ok(())
}

impl Deletable for FlowClassifier {
    const TABLE: &'static str = "sfc_flow_classifiers";
    const DEPENDENTS: &'static [(&'static str, &'static str)] = &[];

    fn names_mut(&mut self) -> (&mut String, &mut String) {
        (&mut self.name, &mut self.description)
    }

    async fn visible(conn: &mut AnyConnection, ctx: &Context, id: &str) -> Result<Self, ApiError> {
        visible_flow_classifier(conn, ctx, id).await
    }

    async fn ensure_unused(conn: &mut AnyConnection, id: &str) -> Result<(), ApiError> {
        ensure_unused(conn, id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fc() -> FlowClassifier {
        FlowClassifier {
            id: "a".into(),
            project_id: "p".into(),
            name: String::new(),
            description: String::new(),
            ethertype: "IPv4".into(),
            protocol: None,
            source_port_range_min: None,
            source_port_range_max: None,
            destination_port_range_min: None,
            destination_port_range_max: None,
            source_ip_prefix: None,
            destination_ip_prefix: None,
            logical_source_port: None,
            logical_destination_port: None,
            l7_parameters: json!({}),
        }
    }

    #[test]
    fn port_ranges_follow_networking_sfc() {
        assert!(port_ranges_overlap(Some(10), Some(20), Some(20), Some(30)));
        assert!(!port_ranges_overlap(Some(10), Some(20), Some(21), Some(30)));
        assert!(port_ranges_overlap(None, None, Some(1), Some(2)));
        // Open-ended on one side: only the bounds both have can exclude.
        assert!(port_ranges_overlap(Some(100), None, Some(1), Some(200)));
        assert!(!port_ranges_overlap(Some(100), None, Some(1), Some(99)));
        assert!(!port_ranges_overlap(None, Some(10), Some(11), None));
    }

    #[test]
    fn prefixes_overlap_by_containment() {
        assert!(prefixes_overlap(Some("10.0.0.0/8"), Some("10.1.2.0/24")));
        assert!(prefixes_overlap(Some("10.1.2.3/24"), Some("10.1.2.0/30")));
        assert!(!prefixes_overlap(Some("10.0.0.0/24"), Some("10.0.1.0/24")));
        assert!(prefixes_overlap(None, Some("10.0.1.0/24")));
        assert!(!prefixes_overlap(Some("10.0.0.0/8"), Some("::/0")));
    }

    #[test]
    fn logical_ports_only_in_the_full_conflict() {
        let mut a = fc();
        let mut b = fc();
        a.logical_source_port = Some("x".into());
        b.logical_source_port = Some("y".into());
        assert!(basic_conflict(&a, &b));
        assert!(!conflict(&a, &b));
        b.logical_source_port = None;
        assert!(conflict(&a, &b));
    }

    #[test]
    fn prefix_notation() {
        assert!(parse_prefix("p", &json!("10.0.0.1/24")).is_ok());
        assert!(parse_prefix("p", &json!("10.0.0.0")).is_err());
        assert!(parse_prefix("p", &json!("10.0.0.0/33")).is_err());
        assert!(parse_prefix("p", &json!("2001:db8::/32")).is_ok());
        assert_eq!(parse_port(&json!("80")).ok(), Some(Some(80)));
        assert!(parse_port(&json!(65536)).is_err());
    }
}
