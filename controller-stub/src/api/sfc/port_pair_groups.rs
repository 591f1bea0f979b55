//! `/v2.0/sfc/port_pair_groups`: the service functions of one hop, load-balanced.
//!
//! A group gets the lowest free `group_id` from 1 (the OVS driver's OpenFlow group). Its port
//! pairs must exist (404 `PortPairNotFound`), share one correlation (400
//! `InconsistentCorrelations`) and belong to no other group (409 `PortPairInUse`); a tap group
//! holds one port pair at most (400 `MultiplePortPairsInTapPPGNotSupported`). Only the name,
//! the description and the port pairs change after creation; a group a chain uses cannot be
//! deleted (409 `PortPairGroupInUse`).

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::flow_classifiers::{parse_port, parse_prefix};
use super::port_pairs::{group_of, visible_port_pair, PortPair};
use super::{
    boolean, check_quota, commit_create, commit_update, delete_resource, json_column, lowest_free,
    not_allowed_in_post, project_for_create, read_only, show, string, uuid_list, Attr, Deletable,
    DESCRIPTION_MAX, NAME_MAX,
};
use crate::api::{deleted, many, one, path_id, timestamp, AppState, Body, ListQuery, Wrapped};
use crate::auth::Context;
use crate::db::{flag, get_flag};
use crate::drivers::{ResourceKind, SfcResource};
use crate::error::ApiError;

/// The `lb_fields` networking-sfc accepts.
pub const SUPPORTED_LB_FIELDS: &[&str] = &[
    "eth_src", "eth_dst", "ip_src", "ip_dst", "tcp_src", "tcp_dst", "udp_src", "udp_dst",
];
/// The keys of `ingress_n_tuple` and `egress_n_tuple`.
pub const SUPPORTED_N_TUPLE_KEYS: &[&str] = &[
    "source_ip_prefix",
    "destination_ip_prefix",
    "source_port_range_min",
    "source_port_range_max",
    "destination_port_range_min",
    "destination_port_range_max",
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2.0/sfc/port_pair_groups", get(list).post(create))
        .route(
            "/v2.0/sfc/port_pair_groups/{id}",
            get(show_one).put(update).delete(remove),
        )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortPairGroupCreate {
    #[serde(default)]
    pub id: Attr,
    #[serde(default)]
    pub group_id: Attr,
    #[serde(default)]
    pub name: Attr,
    #[serde(default)]
    pub description: Attr,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub port_pairs: Attr,
    #[serde(default)]
    pub port_pair_group_parameters: Attr,
    #[serde(default)]
    pub tap_enabled: Attr,
}

impl Wrapped for PortPairGroupCreate {
    const KEY: &'static str = "port_pair_group";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortPairGroupUpdate {
    #[serde(default)]
    pub name: Attr,
    #[serde(default)]
    pub description: Attr,
    #[serde(default)]
    pub port_pairs: Attr,
    #[serde(default)]
    pub id: Attr,
    #[serde(default)]
    pub group_id: Attr,
    #[serde(default)]
    pub project_id: Attr,
    #[serde(default)]
    pub tenant_id: Attr,
    #[serde(default)]
    pub port_pair_group_parameters: Attr,
    #[serde(default)]
    pub tap_enabled: Attr,
}

impl Wrapped for PortPairGroupUpdate {
    const KEY: &'static str = "port_pair_group";
}

/// A stored port pair group.
#[derive(Debug, Clone, PartialEq)]
pub struct PortPairGroup {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    pub group_id: i64,
    pub tap_enabled: bool,
    /// `{"lb_fields": [...], "ppg_n_tuple_mapping": {...}}`, normalised.
    pub port_pair_group_parameters: Value,
    /// Member port pairs in the order the group lists them.
    pub port_pairs: Vec<String>,
}

impl PortPairGroup {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(PortPairGroup {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            group_id: row.try_get("group_id")?,
            tap_enabled: get_flag(row, "tap_enabled")?,
            port_pair_group_parameters: json_column(row, "port_pair_group_parameters")?,
            port_pairs: Vec::new(),
        })
    }

    /// The `lb_fields` parameter.
    pub fn lb_fields(&self) -> Vec<String> {
        self.port_pair_group_parameters
            .get("lb_fields")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "port_pairs": self.port_pairs,
            "tap_enabled": self.tap_enabled,
            "port_pair_group_parameters": self.port_pair_group_parameters,
            "group_id": self.group_id,
        })
    }
}

impl SfcResource for PortPairGroup {
    const KIND: ResourceKind = ResourceKind::PortPairGroup;
    fn id(&self) -> &str {
        &self.id
    }
    fn to_json(&self) -> Value {
        PortPairGroup::to_json(self)
    }
}

const COLUMNS: &str =
    "id, project_id, name, description, group_id, tap_enabled, port_pair_group_parameters";

/// Reads one group with its members (any project's; callers check ownership).
pub async fn get_port_pair_group(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<PortPairGroup>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM sfc_port_pair_groups WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut group = PortPairGroup::from_row(&row)?;
    group.port_pairs = sqlx::query_scalar(
        "SELECT portpair_id FROM sfc_port_pair_group_members WHERE portpairgroup_id = $1 \
         ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(group))
}

pub fn port_pair_group_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "PortPairGroupNotFound",
        format!("Port Pair Group {id} not found."),
    )
}

/// A group the caller may see, or 404 `PortPairGroupNotFound`.
pub async fn visible_port_pair_group(
    conn: &mut AnyConnection,
    ctx: &Context,
    id: &str,
) -> Result<PortPairGroup, ApiError> {
    match get_port_pair_group(conn, id).await? {
        Some(g) if ctx.owns(&g.project_id) => Ok(g),
        _ => Err(port_pair_group_not_found(id)),
    }
}

/// The member port pairs of a group, in order.
pub async fn members(
    conn: &mut AnyConnection,
    group: &PortPairGroup,
) -> Result<Vec<PortPair>, sqlx::Error> {
    let mut out = Vec::with_capacity(group.port_pairs.len());
    for id in &group.port_pairs {
        if let Some(pp) = super::port_pairs::get_port_pair(conn, id).await? {
            out.push(pp);
        }
    }
    Ok(out)
}

async fn list(
    State(state): State<AppState>,
    ctx: Context,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let mut conn = state.db.pool().acquire().await?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM sfc_port_pair_groups ORDER BY created_at, id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let all_members: Vec<(String, String)> = sqlx::query_as(
        "SELECT portpairgroup_id, portpair_id FROM sfc_port_pair_group_members \
         ORDER BY portpairgroup_id, position",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut items = Vec::new();
    for row in &rows {
        let mut group = PortPairGroup::from_row(row)?;
        if !ctx.owns(&group.project_id) {
            continue;
        }
        group.port_pairs = all_members
            .iter()
            .filter(|(g, _)| *g == group.id)
            .map(|(_, pp)| pp.clone())
            .collect();
        items.push(group.to_json());
    }
    Ok(many("port_pair_groups", query.apply(items)))
}

async fn show_one(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let id = path_id("PortPairGroup", &id).map_err(|_| port_pair_group_not_found(&id))?;
    let mut conn = state.db.pool().acquire().await?;
    let group = visible_port_pair_group(&mut conn, &ctx, &id).await?;
    Ok(one(
        StatusCode::OK,
        "port_pair_group",
        query.select(group.to_json()),
    ))
}

fn n_tuple_error(message: String) -> ApiError {
    ApiError::bad_request(
        "PPGParametersInvalidNTupleMappingParameter",
        format!(
            "Invalid Port Pair Group N-Tuple Mapping parameters: {message}. Supported PPG \
             classifier N-Tuple Mapping parameters are {}.",
            SUPPORTED_N_TUPLE_KEYS.join(", ")
        ),
    )
}

/// networking-sfc's `normalize_ppg_parameters` and its `type:dict` specification: missing
/// top-level keys take their defaults, n-tuple keys must be known, and (stricter than
/// networking-sfc, which stores them unchecked) n-tuple values must be prefixes and ports.
pub fn parse_parameters(value: Option<&Value>) -> Result<Value, ApiError> {
    const ATTR: &str = "port_pair_group_parameters";
    let default_n_tuple = || json!({"ingress_n_tuple": {}, "egress_n_tuple": {}});
    let map = match value {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(ApiError::invalid_attr(
                ATTR,
                format!("'{}' is not a dictionary", show(other)),
            ))
        }
    };
    let mut out = Map::new();
    // The n-tuple keys first: networking-sfc's normaliser checks them before the validator
    // sees unexpected top-level keys.
    let n_tuple = match map.get("ppg_n_tuple_mapping") {
        None => default_n_tuple(),
        Some(Value::Null) => json!({}),
        Some(Value::Object(m)) => {
            let mut checked = Map::new();
            for (direction, tuple) in m {
                if direction != "ingress_n_tuple" && direction != "egress_n_tuple" {
                    return Err(n_tuple_error(format!("Unknown key {direction}")));
                }
                let tuple = match tuple {
                    Value::Null => Map::new(),
                    Value::Object(t) => t.clone(),
                    other => {
                        return Err(n_tuple_error(format!(
                            "{direction} '{}' is not a dictionary",
                            show(other)
                        )))
                    }
                };
                let mut fields = Map::new();
                for (key, v) in tuple {
                    if !SUPPORTED_N_TUPLE_KEYS.contains(&key.as_str()) {
                        return Err(n_tuple_error(format!("Unknown key {key}")));
                    }
                    let parsed = if key.ends_with("_prefix") {
                        json!(parse_prefix(&key, &v)?)
                    } else {
                        json!(parse_port(&v)?)
                    };
                    fields.insert(key, parsed);
                }
                checked.insert(direction.clone(), Value::Object(fields));
            }
            Value::Object(checked)
        }
        Some(other) => {
            return Err(ApiError::invalid_attr(
                ATTR,
                format!("'{}' is not a dictionary", show(other)),
            ))
        }
    };
    let unexpected: Vec<&str> = map
        .keys()
        .filter(|k| !matches!(k.as_str(), "lb_fields" | "ppg_n_tuple_mapping"))
        .map(String::as_str)
        .collect();
    if !unexpected.is_empty() {
        return Err(ApiError::invalid_attr(
            ATTR,
            format!("Unexpected keys supplied: {}", unexpected.join(", ")),
        ));
    }
    let lb_fields = match map.get("lb_fields") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            let illegal: Vec<String> = items
                .iter()
                .filter(|v| !v.as_str().is_some_and(|s| SUPPORTED_LB_FIELDS.contains(&s)))
                .map(show)
                .collect();
            if !illegal.is_empty() {
                return Err(ApiError::invalid_attr(
                    ATTR,
                    format!("Illegal values in a list: {}", illegal.join(", ")),
                ));
            }
            items.clone()
        }
        Some(other) => {
            return Err(ApiError::invalid_attr(
                ATTR,
                format!("'{}' is not a list", show(other)),
            ))
        }
    };
    out.insert("lb_fields".into(), Value::Array(lb_fields));
    out.insert("ppg_n_tuple_mapping".into(), n_tuple);
    Ok(Value::Object(out))
}

/// networking-sfc's `_validate_pps_in_ppg` plus the tap rule: every port pair exists and is
/// visible, all share one correlation, none is in another group, and a tap group has one at
/// most. Returns the port pairs in order.
async fn check_members(
    conn: &mut AnyConnection,
    ctx: &Context,
    ids: &[String],
    group: Option<&str>,
    tap_enabled: bool,
) -> Result<Vec<PortPair>, ApiError> {
    let mut pps = Vec::with_capacity(ids.len());
    for id in ids {
        pps.push(visible_port_pair(conn, ctx, id).await?);
    }
    let first = pps.first().map(|pp| pp.correlation().map(str::to_string));
    for pp in &pps {
        if Some(pp.correlation().map(str::to_string)) != first {
            return Err(ApiError::bad_request(
                "InconsistentCorrelations",
                "Port Pair Group attempted creation included Port Pairs with inconsistent \
                 correlation types.",
            ));
        }
        if let Some(owner) = group_of(conn, &pp.id).await? {
            if Some(owner.as_str()) != group {
                return Err(ApiError::conflict(
                    "PortPairInUse",
                    format!("Port Pair {} in use.", pp.id),
                ));
            }
        }
    }
    if tap_enabled && pps.len() > 1 {
        return Err(ApiError::bad_request(
            "MultiplePortPairsInTapPPGNotSupported",
            "Multiple port pairs in Tap port-pair-group is not allowed.",
        ));
    }
    Ok(pps)
}

async fn set_members(
    conn: &mut AnyConnection,
    group: &str,
    port_pairs: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sfc_port_pair_group_members WHERE portpairgroup_id = $1")
        .bind(group)
        .execute(&mut *conn)
        .await?;
    for (position, pp) in port_pairs.iter().enumerate() {
        sqlx::query(
            "INSERT INTO sfc_port_pair_group_members (portpair_id, portpairgroup_id, position) \
             VALUES ($1, $2, $3)",
        )
        .bind(pp)
        .bind(group)
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    ctx: Context,
    Body(req): Body<PortPairGroupCreate>,
) -> Result<Response, ApiError> {
    for (attr, value) in [("id", &req.id), ("group_id", &req.group_id)] {
        if value.is_given() {
            return Err(not_allowed_in_post(attr));
        }
    }
    let name = string("name", &req.name, NAME_MAX)?.unwrap_or_default();
    let description = string("description", &req.description, DESCRIPTION_MAX)?.unwrap_or_default();
    let project_id = project_for_create(&ctx, &req.project_id, &req.tenant_id)?;
    let port_pairs = match req.port_pairs.given() {
        None => Vec::new(),
        Some(v @ (Value::Null | Value::Array(_))) => uuid_list("port_pairs", v)?,
        Some(other) => {
            return Err(ApiError::invalid_attr(
                "port_pairs",
                format!("'{}' is not a list", show(other)),
            ))
        }
    };
    let parameters = parse_parameters(req.port_pair_group_parameters.given())?;
    let tap_enabled = match req.tap_enabled.given() {
        None => false,
        Some(v) => boolean(v)?,
    };

    let mut tx = state.db.begin_write().await?;
    check_quota(
        tx.conn(),
        "sfc_port_pair_groups",
        "port_pair_group",
        &project_id,
        state.quotas.port_pair_group,
    )
    .await?;
    check_members(tx.conn(), &ctx, &port_pairs, None, tap_enabled).await?;
    let used: Vec<i64> =
        sqlx::query_scalar("SELECT group_id FROM sfc_port_pair_groups ORDER BY group_id")
            .fetch_all(tx.conn())
            .await?;
    let group_id = lowest_free(&used, 1, i64::MAX).ok_or_else(|| {
        ApiError::internal("PortPairGroupUnavailableGroupId", "No free group id.")
    })?;
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(&format!(
        "INSERT INTO sfc_port_pair_groups ({COLUMNS}, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    ))
    .bind(&id)
    .bind(&project_id)
    .bind(&name)
    .bind(&description)
    .bind(group_id)
    .bind(flag(tap_enabled))
    .bind(parameters.to_string())
    .bind(timestamp())
    .execute(tx.conn())
    .await?;
    set_members(tx.conn(), &id, &port_pairs).await?;
    let group = get_port_pair_group(tx.conn(), &id)
        .await?
        .ok_or_else(|| port_pair_group_not_found(&id))?;
    commit_create(&state, &ctx, tx, &group).await?;
    Ok(one(StatusCode::CREATED, "port_pair_group", group.to_json()))
}

async fn update(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    Body(req): Body<PortPairGroupUpdate>,
) -> Result<Response, ApiError> {
    let id = path_id("PortPairGroup", &id).map_err(|_| port_pair_group_not_found(&id))?;
    for (attr, value) in [
        ("id", &req.id),
        ("group_id", &req.group_id),
        ("project_id", &req.project_id),
        ("tenant_id", &req.tenant_id),
        (
            "port_pair_group_parameters",
            &req.port_pair_group_parameters,
        ),
        ("tap_enabled", &req.tap_enabled),
    ] {
        if value.is_given() {
            return Err(read_only(attr));
        }
    }
    let name = string("name", &req.name, NAME_MAX)?;
    let description = string("description", &req.description, DESCRIPTION_MAX)?;
    let port_pairs = match req.port_pairs.given() {
        None => None,
        Some(v @ (Value::Null | Value::Array(_))) => Some(uuid_list("port_pairs", v)?),
        Some(other) => {
            return Err(ApiError::invalid_attr(
                "port_pairs",
                format!("'{}' is not a list", show(other)),
            ))
        }
    };

    let mut tx = state.db.begin_write().await?;
    let original = visible_port_pair_group(tx.conn(), &ctx, &id).await?;
    if let Some(name) = &name {
        sqlx::query("UPDATE sfc_port_pair_groups SET name = $1 WHERE id = $2")
            .bind(name)
            .bind(&id)
            .execute(tx.conn())
            .await?;
    }
    if let Some(description) = &description {
        sqlx::query("UPDATE sfc_port_pair_groups SET description = $1 WHERE id = $2")
            .bind(description)
            .bind(&id)
            .execute(tx.conn())
            .await?;
    }
    if let Some(port_pairs) = &port_pairs {
        check_members(tx.conn(), &ctx, port_pairs, Some(&id), original.tap_enabled).await?;
        set_members(tx.conn(), &id, port_pairs).await?;
    }
    let group = get_port_pair_group(tx.conn(), &id)
        .await?
        .ok_or_else(|| port_pair_group_not_found(&id))?;
    commit_update(&state, &ctx, tx, &group, &original).await?;
    Ok(one(StatusCode::OK, "port_pair_group", group.to_json()))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = path_id("PortPairGroup", &id).map_err(|_| port_pair_group_not_found(&id))?;
    delete_resource::<PortPairGroup>(&state, &ctx, &id).await?;
    Ok(deleted())
}

async fn ensure_unused(conn: &mut AnyConnection, id: &str) -> Result<(), ApiError> {
    let chains: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sfc_chain_group_associations WHERE portpairgroup_id = $1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    if chains > 0 {
        return Err(ApiError::conflict(
            "PortPairGroupInUse",
            format!("Port Pair Group {id} in use."),
        ));
    }
    Ok(())
}

impl Deletable for PortPairGroup {
    const TABLE: &'static str = "sfc_port_pair_groups";
    const DEPENDENTS: &'static [(&'static str, &'static str)] =
        &[("sfc_port_pair_group_members", "portpairgroup_id")];

    fn names_mut(&mut self) -> (&mut String, &mut String) {
        (&mut self.name, &mut self.description)
    }

    async fn visible(conn: &mut AnyConnection, ctx: &Context, id: &str) -> Result<Self, ApiError> {
        visible_port_pair_group(conn, ctx, id).await
    }

    async fn ensure_unused(conn: &mut AnyConnection, id: &str) -> Result<(), ApiError> {
        ensure_unused(conn, id).await
    }
}
