//! `/v2.0/sfc/port_pairs`: a service function's ingress and egress Neutron ports.
//!
//! Both ports must exist (404 `PortPairPortNotFound`), be bound to a device (400
//! `PortPairIngressNoHost`/`PortPairEgressNoHost`), the same one (400
//! `PortPairIngressEgressDifferentHost`); a pair of ports is used by one port pair only (400
//! `PortPairIngressEgressInUse`, also a unique constraint). Ports and parameters are fixed at
//! creation; a port pair in a group cannot be deleted (409 `PortPairInUse`).

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{
    check_quota, commit_create, delete_resource, json_column, project_for_create, read_only,
    required, show, string, update_names, uuid_value, visible_port, Attr, Deletable,
    DESCRIPTION_MAX, NAME_MAX,
};
use crate::api::{deleted, many, one, path_id, timestamp, AppState, Body, ListQuery, Wrapped};
use crate::auth::Context;
use crate::drivers::{ResourceKind, SfcResource};
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2.0/sfc/port_pairs", get(list).post(create))
        .route(
            "/v2.0/sfc/port_pairs/{id}",
            get(show_one).put(update).delete(remove),
        )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortPairCreate {
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
    pub ingress: Attr,
    #[serde(default)]
    pub egress: Attr,
    #[serde(default)]
    pub service_function_parameters: Attr,
}

impl Wrapped for PortPairCreate {
    const KEY: &'static str = "port_pair";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortPairUpdate {
    #[serde(default)]
    pub name: Attr,
    #[serde(default)]
    pub description: Attr,
    // Create-only attributes, named so that a PUT of them is "read-only", not "unknown".
    #[serde(default)]
    pub id: Attr,
    #[serde(default)]
    pub project_id: Attr,
    #[serde(default)]
    pub tenant_id: Attr,
    #[serde(default)]
    pub ingress: Attr,
    #[serde(default)]
    pub egress: Attr,
    #[serde(default)]
    pub service_function_parameters: Attr,
}

impl Wrapped for PortPairUpdate {
    const KEY: &'static str = "port_pair";
}

/// `service_function_parameters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFunctionParameters {
    /// `None`, `mpls` or `nsh`: the encapsulation the service function understands.
    pub correlation: Option<String>,
    /// Load-balancing weight inside the group (stored; networking-sfc's OVS driver ignores it).
    pub weight: i64,
}

impl Default for ServiceFunctionParameters {
    fn default() -> Self {
        ServiceFunctionParameters {
            correlation: None,
            weight: 1,
        }
    }
}

impl ServiceFunctionParameters {
    /// networking-sfc's `normalize_sf_parameters` and its `type:dict` specification; keys
    /// left out take their defaults.
    pub fn parse(value: &Value) -> Result<Self, ApiError> {
        const ATTR: &str = "service_function_parameters";
        let mut params = ServiceFunctionParameters::default();
        let map = match value {
            Value::Null => return Ok(params),
            Value::Object(m) => m,
            other => {
                return Err(ApiError::invalid_attr(
                    ATTR,
                    format!("'{}' is not a dictionary", show(other)),
                ))
            }
        };
        let unexpected: Vec<&str> = map
            .keys()
            .filter(|k| !matches!(k.as_str(), "correlation" | "weight"))
            .map(String::as_str)
            .collect();
        if !unexpected.is_empty() {
            return Err(ApiError::invalid_attr(
                ATTR,
                format!("Unexpected keys supplied: {}", unexpected.join(", ")),
            ));
        }
        if let Some(c) = map.get("correlation") {
            params.correlation = match c {
                Value::Null => None,
                Value::String(s) if s == "mpls" || s == "nsh" => Some(s.clone()),
                other => {
                    return Err(ApiError::invalid_attr(
                        ATTR,
                        format!("'{}' is not in [None, 'mpls', 'nsh']", show(other)),
                    ))
                }
            };
        }
        if let Some(w) = map.get("weight") {
            let weight = super::integer(w)?;
            if weight < 0 {
                return Err(ApiError::invalid_attr(
                    ATTR,
                    format!("'{weight}' should be non-negative"),
                ));
            }
            params.weight = weight;
        }
        Ok(params)
    }

    pub fn to_json(&self) -> Value {
        json!({"correlation": self.correlation, "weight": self.weight})
    }

    fn from_json(v: &Value) -> Self {
        ServiceFunctionParameters {
            correlation: v
                .get("correlation")
                .and_then(Value::as_str)
                .map(str::to_string),
            weight: v.get("weight").and_then(Value::as_i64).unwrap_or(1),
        }
    }
}

/// A stored port pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPair {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    pub ingress: String,
    pub egress: String,
    pub service_function_parameters: ServiceFunctionParameters,
}

impl PortPair {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(PortPair {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            ingress: row.try_get("ingress")?,
            egress: row.try_get("egress")?,
            service_function_parameters: ServiceFunctionParameters::from_json(&json_column(
                row,
                "service_function_parameters",
            )?),
        })
    }

    /// The correlation of its service function.
    pub fn correlation(&self) -> Option<&str> {
        self.service_function_parameters.correlation.as_deref()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "ingress": self.ingress,
            "egress": self.egress,
            "service_function_parameters": self.service_function_parameters.to_json(),
        })
    }
}

impl SfcResource for PortPair {
    const KIND: ResourceKind = ResourceKind::PortPair;
    fn id(&self) -> &str {
        &self.id
    }
    fn to_json(&self) -> Value {
        PortPair::to_json(self)
    }
}

const COLUMNS: &str =
    "id, project_id, name, description, ingress, egress, service_function_parameters";

/// Reads one port pair (any project's; callers check ownership).
pub async fn get_port_pair(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<PortPair>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM sfc_port_pairs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(PortPair::from_row).transpose()
}

pub fn port_pair_not_found(id: &str) -> ApiError {
    ApiError::not_found("PortPairNotFound", format!("Port Pair {id} not found."))
}

/// A port pair the caller may see, or 404 `PortPairNotFound`.
pub async fn visible_port_pair(
    conn: &mut AnyConnection,
    ctx: &Context,
    id: &str,
) -> Result<PortPair, ApiError> {
    match get_port_pair(conn, id).await? {
        Some(pp) if ctx.owns(&pp.project_id) => Ok(pp),
        _ => Err(port_pair_not_found(id)),
    }
}

/// The group a port pair is a member of, if any.
pub async fn group_of(
    conn: &mut AnyConnection,
    port_pair: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT portpairgroup_id FROM sfc_port_pair_group_members WHERE portpair_id = $1",
    )
    .bind(port_pair)
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
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM sfc_port_pairs ORDER BY created_at, id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let mut items = Vec::new();
    for row in &rows {
        let pp = PortPair::from_row(row)?;
        if ctx.owns(&pp.project_id) {
            items.push(pp.to_json());
        }
    }
    Ok(many("port_pairs", query.apply(items)))
}

async fn show_one(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let id = path_id("PortPair", &id).map_err(|_| port_pair_not_found(&id))?;
    let mut conn = state.db.pool().acquire().await?;
    let pp = visible_port_pair(&mut conn, &ctx, &id).await?;
    Ok(one(StatusCode::OK, "port_pair", query.select(pp.to_json())))
}

/// A create request that passed the API-layer checks (attribute conversion and validation,
/// project), before any database rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPortPair {
    pub project_id: String,
    pub name: String,
    pub description: String,
    pub ingress: String,
    pub egress: String,
    pub params: ServiceFunctionParameters,
}

impl NewPortPair {
    /// The port pair this request makes, under `id`.
    pub fn into_port_pair(self, id: String) -> PortPair {
        PortPair {
            id,
            project_id: self.project_id,
            name: self.name,
            description: self.description,
            ingress: self.ingress,
            egress: self.egress,
            service_function_parameters: self.params,
        }
    }
}

/// Converts and checks a create request the way Neutron's API layer does, before the database
/// rules run.
pub fn validate_create(ctx: &Context, req: &PortPairCreate) -> Result<NewPortPair, ApiError> {
    if req.id.is_given() {
        return Err(super::not_allowed_in_post("id"));
    }
    let name = string("name", &req.name, NAME_MAX)?.unwrap_or_default();
    let description = string("description", &req.description, DESCRIPTION_MAX)?.unwrap_or_default();
    let project_id = project_for_create(ctx, &req.project_id, &req.tenant_id)?;
    let ingress = uuid_value(
        "ingress",
        req.ingress.given().ok_or_else(|| required("ingress"))?,
    )?;
    let egress = uuid_value(
        "egress",
        req.egress.given().ok_or_else(|| required("egress"))?,
    )?;
    let params = match req.service_function_parameters.given() {
        None => ServiceFunctionParameters::default(),
        Some(v) => ServiceFunctionParameters::parse(v)?,
    };
    Ok(NewPortPair {
        project_id,
        name,
        description,
        ingress,
        egress,
        params,
    })
}

async fn create(
    State(state): State<AppState>,
    ctx: Context,
    Body(req): Body<PortPairCreate>,
) -> Result<Response, ApiError> {
    let new = validate_create(&ctx, &req)?;
    let mut tx = state.db.begin_write().await?;
    check_quota(
        tx.conn(),
        "sfc_port_pairs",
        "port_pair",
        &new.project_id,
        state.quotas.port_pair,
    )
    .await?;
    // networking-sfc checks the pair's uniqueness among the caller's port pairs before it
    // looks the ports up; one of another project (possible when both may use the ports) is
    // caught after the lookups, so that a stranger's ports stay a 404.
    let in_use: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, project_id FROM sfc_port_pairs WHERE ingress = $1 AND egress = $2",
    )
    .bind(&new.ingress)
    .bind(&new.egress)
    .fetch_all(tx.conn())
    .await?;
    let in_use_error = |other: &str| {
        ApiError::bad_request(
            "PortPairIngressEgressInUse",
            format!(
                "Port Pair with ingress port {} and egress port {} is already used by another Port Pair {other}.",
                new.ingress, new.egress
            ),
        )
    };
    if let Some((other, _)) = in_use.iter().find(|(_, owner)| ctx.owns(owner)) {
        return Err(in_use_error(other));
    }
    let port_not_found = |id: &str| {
        ApiError::not_found(
            "PortPairPortNotFound",
            format!("Port Pair port {id} not found."),
        )
    };
    let ingress = visible_port(tx.conn(), &ctx, &new.ingress)
        .await?
        .ok_or_else(|| port_not_found(&new.ingress))?;
    let egress = visible_port(tx.conn(), &ctx, &new.egress)
        .await?
        .ok_or_else(|| port_not_found(&new.egress))?;
    if let Some((other, _)) = in_use.first() {
        return Err(in_use_error(other));
    }
    if ingress.device_id.is_empty() {
        return Err(ApiError::bad_request(
            "PortPairIngressNoHost",
            format!(
                "Port Pair ingress port {} does not belong to a host.",
                ingress.id
            ),
        ));
    }
    if egress.device_id.is_empty() {
        return Err(ApiError::bad_request(
            "PortPairEgressNoHost",
            format!(
                "Port Pair egress port {} does not belong to a host.",
                egress.id
            ),
        ));
    }
    if ingress.device_id != egress.device_id {
        return Err(ApiError::bad_request(
            "PortPairIngressEgressDifferentHost",
            format!(
                "Port Pair ingress port {} and egress port {} not in the same host.",
                ingress.id, egress.id
            ),
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(&format!(
        "INSERT INTO sfc_port_pairs ({COLUMNS}, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    ))
    .bind(&id)
    .bind(&new.project_id)
    .bind(&new.name)
    .bind(&new.description)
    .bind(&new.ingress)
    .bind(&new.egress)
    .bind(new.params.to_json().to_string())
    .bind(timestamp())
    .execute(tx.conn())
    .await?;
    let pp = get_port_pair(tx.conn(), &id)
        .await?
        .ok_or_else(|| port_pair_not_found(&id))?;
    commit_create(&state, &ctx, tx, &pp).await?;
    Ok(one(StatusCode::CREATED, "port_pair", pp.to_json()))
}

async fn update(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    Body(req): Body<PortPairUpdate>,
) -> Result<Response, ApiError> {
    let id = path_id("PortPair", &id).map_err(|_| port_pair_not_found(&id))?;
    for (attr, value) in [
        ("id", &req.id),
        ("project_id", &req.project_id),
        ("tenant_id", &req.tenant_id),
        ("ingress", &req.ingress),
        ("egress", &req.egress),
        (
            "service_function_parameters",
            &req.service_function_parameters,
        ),
    ] {
        if value.is_given() {
            return Err(read_only(attr));
        }
    }
    let name = string("name", &req.name, NAME_MAX)?;
    let description = string("description", &req.description, DESCRIPTION_MAX)?;
    let pp: PortPair = update_names(&state, &ctx, &id, name, description).await?;
    Ok(one(StatusCode::OK, "port_pair", pp.to_json()))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = path_id("PortPair", &id).map_err(|_| port_pair_not_found(&id))?;
    delete_resource::<PortPair>(&state, &ctx, &id).await?;
    Ok(deleted())
}

async fn ensure_not_in_group(conn: &mut AnyConnection, id: &str) -> Result<(), ApiError> {
    if group_of(conn, id).await?.is_some() {
        return Err(ApiError::conflict(
            "PortPairInUse",
            format!("Port Pair {id} in use."),
        ));
    }
    Ok(())
}

impl Deletable for PortPair {
    const TABLE: &'static str = "sfc_port_pairs";
    const DEPENDENTS: &'static [(&'static str, &'static str)] = &[];

    fn names_mut(&mut self) -> (&mut String, &mut String) {
        (&mut self.name, &mut self.description)
    }

    async fn visible(conn: &mut AnyConnection, ctx: &Context, id: &str) -> Result<Self, ApiError> {
        visible_port_pair(conn, ctx, id).await
    }

    async fn ensure_unused(conn: &mut AnyConnection, id: &str) -> Result<(), ApiError> {
        ensure_not_in_group(conn, id).await
    }
}
