//! `/v2.0/networks`: the tenant networks ports live on. Each gets a VXLAN network identifier
//! (`provider:segmentation_id`, lowest free from 1) that the chain driver uses across hosts.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{deleted, many, one, path_id, timestamp, AppState, Body, ListQuery, Wrapped};
use crate::auth::Context;
use crate::db::{flag, get_flag};
use crate::error::ApiError;

/// Neutron's default MTU for a VXLAN network on a 1500-byte underlay.
const DEFAULT_MTU: i64 = 1450;
/// Largest VXLAN network identifier (24 bits).
const MAX_VNI: i64 = (1 << 24) - 1;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2.0/networks", get(list).post(create))
        .route("/v2.0/networks/{id}", get(show).put(update).delete(remove))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub admin_state_up: Option<bool>,
    #[serde(default)]
    pub shared: Option<bool>,
    #[serde(default)]
    pub mtu: Option<i64>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default, rename = "provider:network_type")]
    pub network_type: Option<String>,
    #[serde(default, rename = "provider:segmentation_id")]
    pub segmentation_id: Option<i64>,
    #[serde(default)]
    pub port_security_enabled: Option<bool>,
}

impl Wrapped for NetworkCreate {
    const KEY: &'static str = "network";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub admin_state_up: Option<bool>,
    #[serde(default)]
    pub shared: Option<bool>,
    #[serde(default)]
    pub mtu: Option<i64>,
}

impl Wrapped for NetworkUpdate {
    const KEY: &'static str = "network";
}

/// A stored network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    pub admin_state_up: bool,
    pub shared: bool,
    pub mtu: i64,
    pub segmentation_id: i64,
    pub created_at: String,
    pub updated_at: String,
    pub revision_number: i64,
    /// Ids of its subnets, for rendering.
    pub subnets: Vec<String>,
}

impl Network {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Network {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            admin_state_up: get_flag(row, "admin_state_up")?,
            shared: get_flag(row, "shared")?,
            mtu: row.try_get("mtu")?,
            segmentation_id: row.try_get("segmentation_id")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            revision_number: row.try_get("revision_number")?,
            subnets: Vec::new(),
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
            "admin_state_up": self.admin_state_up,
            "status": "ACTIVE",
            "shared": self.shared,
            "mtu": self.mtu,
            "subnets": self.subnets,
            "router:external": false,
            "port_security_enabled": true,
            "provider:network_type": "vxlan",
            "provider:physical_network": null,
            "provider:segmentation_id": self.segmentation_id,
            "availability_zones": [],
            "availability_zone_hints": [],
            "ipv4_address_scope": null,
            "ipv6_address_scope": null,
            "tags": [],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "revision_number": self.revision_number,
        })
    }
}

const COLUMNS: &str = "id, project_id, name, description, admin_state_up, shared, mtu, \
    segmentation_id, created_at, updated_at, revision_number";

/// Reads one network (any project's; callers check ownership).
pub async fn get_network(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<Network>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM networks WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let mut network = Network::from_row(&row)?;
    network.subnets =
        sqlx::query_scalar("SELECT id FROM subnets WHERE network_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
    Ok(Some(network))
}

/// A network the caller may see, or Neutron's 404.
pub async fn visible_network(
    conn: &mut AnyConnection,
    ctx: &Context,
    id: &str,
) -> Result<Network, ApiError> {
    match get_network(conn, id).await? {
        Some(n) if ctx.owns(&n.project_id) || n.shared => Ok(n),
        _ => Err(network_not_found(id)),
    }
}

pub fn network_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "NetworkNotFound",
        format!("Network {id} could not be found."),
    )
}

async fn list(
    State(state): State<AppState>,
    ctx: Context,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let mut conn = state.db.pool().acquire().await?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM networks ORDER BY created_at, id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let subnets: Vec<(String, String)> =
        sqlx::query_as("SELECT network_id, id FROM subnets ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    let mut items = Vec::new();
    for row in &rows {
        let mut n = Network::from_row(row)?;
        if !(ctx.owns(&n.project_id) || n.shared) {
            continue;
        }
        n.subnets = subnets
            .iter()
            .filter(|(net, _)| *net == n.id)
            .map(|(_, id)| id.clone())
            .collect();
        items.push(n.to_json());
    }
    Ok(many("networks", query.apply(items)))
}

async fn show(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let id = path_id("Network", &id)?;
    let mut conn = state.db.pool().acquire().await?;
    let network = visible_network(&mut conn, &ctx, &id).await?;
    Ok(one(
        StatusCode::OK,
        "network",
        query.select(network.to_json()),
    ))
}

fn check_name(attr: &str, value: &str) -> Result<(), ApiError> {
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

fn check_mtu(mtu: i64) -> Result<(), ApiError> {
    if !(68..=9000).contains(&mtu) {
        return Err(ApiError::invalid_attr(
            "mtu",
            format!("'{mtu}' is not in range 68 through 9000"),
        ));
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    ctx: Context,
    Body(req): Body<NetworkCreate>,
) -> Result<Response, ApiError> {
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
    check_name("name", &name)?;
    check_name("description", &description)?;
    let mtu = req.mtu.unwrap_or(DEFAULT_MTU);
    check_mtu(mtu)?;
    if let Some(t) = &req.network_type {
        if t != "vxlan" {
            return Err(ApiError::invalid_input(format!(
                "network_type value '{t}' not supported"
            )));
        }
    }
    if (req.network_type.is_some() || req.segmentation_id.is_some()) && !ctx.is_admin {
        return Err(ApiError::forbidden(
            "rule:create_network:provider:network_type is disallowed by policy",
        ));
    }
    if req.port_security_enabled == Some(false) {
        return Err(ApiError::invalid_input(
            "port_security_enabled=False is not supported",
        ));
    }

    let mut tx = state.db.begin_write().await?;
    let vni = match req.segmentation_id {
        Some(v) if !(1..=MAX_VNI).contains(&v) => {
            return Err(ApiError::invalid_input(format!(
                "segmentation_id {v} out of range 1..{MAX_VNI}"
            )))
        }
        Some(v) => {
            let taken: Option<String> =
                sqlx::query_scalar("SELECT id FROM networks WHERE segmentation_id = $1")
                    .bind(v)
                    .fetch_optional(tx.conn())
                    .await?;
            if taken.is_some() {
                return Err(ApiError::conflict(
                    "TunnelIdInUse",
                    format!("Unable to create the network. The tunnel ID {v} is in use."),
                ));
            }
            v
        }
        None => lowest_free_vni(tx.conn()).await?,
    };
    let now = timestamp();
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(&format!(
        "INSERT INTO networks ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(&id)
    .bind(&project_id)
    .bind(&name)
    .bind(&description)
    .bind(flag(req.admin_state_up.unwrap_or(true)))
    .bind(flag(req.shared.unwrap_or(false)))
    .bind(mtu)
    .bind(vni)
    .bind(&now)
    .bind(&now)
    .bind(1_i64)
    .execute(tx.conn())
    .await?;
    let network = get_network(tx.conn(), &id)
        .await?
        .ok_or_else(|| network_not_found(&id))?;
    tx.commit().await?;
    Ok(one(StatusCode::CREATED, "network", network.to_json()))
}

/// The lowest VXLAN id no network uses.
async fn lowest_free_vni(conn: &mut AnyConnection) -> Result<i64, ApiError> {
    let used: Vec<i64> =
        sqlx::query_scalar("SELECT segmentation_id FROM networks ORDER BY segmentation_id")
            .fetch_all(&mut *conn)
            .await?;
    let mut want = 1;
    for v in used {
        if v > want {
            break;
        }
        if v == want {
            want += 1;
        }
    }
    if want > MAX_VNI {
        return Err(ApiError::conflict(
            "NoNetworkAvailable",
            "Unable to create the network. No tenant network is available for allocation.",
        ));
    }
    Ok(want)
}

async fn update(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    Body(req): Body<NetworkUpdate>,
) -> Result<Response, ApiError> {
    let id = path_id("Network", &id)?;
    let mut tx = state.db.begin_write().await?;
    let mut network = match get_network(tx.conn(), &id).await? {
        Some(n) if ctx.owns(&n.project_id) => n,
        _ => return Err(network_not_found(&id)),
    };
    if let Some(name) = req.name {
        check_name("name", &name)?;
        network.name = name;
    }
    if let Some(description) = req.description {
        check_name("description", &description)?;
        network.description = description;
    }
    if let Some(mtu) = req.mtu {
        check_mtu(mtu)?;
        network.mtu = mtu;
    }
    network.admin_state_up = req.admin_state_up.unwrap_or(network.admin_state_up);
    network.shared = req.shared.unwrap_or(network.shared);
    network.updated_at = timestamp();
    network.revision_number += 1;
    sqlx::query(
        "UPDATE networks SET name = $1, description = $2, admin_state_up = $3, shared = $4, mtu = $5, \
         updated_at = $6, revision_number = $7 WHERE id = $8",
    )
    .bind(&network.name)
    .bind(&network.description)
    .bind(flag(network.admin_state_up))
    .bind(flag(network.shared))
    .bind(network.mtu)
    .bind(&network.updated_at)
    .bind(network.revision_number)
    .bind(&id)
    .execute(tx.conn())
    .await?;
    tx.commit().await?;
    Ok(one(StatusCode::OK, "network", network.to_json()))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = path_id("Network", &id)?;
    let mut tx = state.db.begin_write().await?;
    match get_network(tx.conn(), &id).await? {
        Some(n) if ctx.owns(&n.project_id) => {}
        _ => return Err(network_not_found(&id)),
    }
    let ports: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ports WHERE network_id = $1")
        .bind(&id)
        .fetch_one(tx.conn())
        .await?;
    if ports > 0 {
        return Err(ApiError::conflict(
            "NetworkInUse",
            format!("Unable to complete operation on network {id}. There are one or more ports still in use on the network."),
        ));
    }
    // Neutron deletes the subnets of a network with it.
    sqlx::query("DELETE FROM subnets WHERE network_id = $1")
        .bind(&id)
        .execute(tx.conn())
        .await?;
    sqlx::query("DELETE FROM networks WHERE id = $1")
        .bind(&id)
        .execute(tx.conn())
        .await?;
    tx.commit().await?;
    Ok(deleted())
}
