//! `/v2.0/sfc/service_graphs`: chains joined end to start, `{src_chain: [dst_chain, ...]}`.
//!
//! The graph is fixed at creation (only name and description change). A chain belongs to one
//! graph (409 `ServiceGraphInvalidPortChains`); the port pairs of a source chain's last group
//! and of a destination chain's first group must carry the chain's correlation (400
//! `ServiceGraphImpossibleBranching`); all chains use one correlation (400
//! `ServiceGraphInconsistentEncapsulation`); a destination appears once per branching point
//! (400 `ServiceGraphPortChainInConflict`), the classifiers of one branching point's
//! destinations must not basic-conflict (400 `ServiceGraphFlowClassifierInConflict`), and the
//! graph has no loop (400 `ServiceGraphLoopDetected`).

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::flow_classifiers::{basic_conflict, visible_flow_classifier, FlowClassifier};
use super::port_chains::{visible_port_chain, PortChain};
use super::port_pair_groups::{members, visible_port_pair_group};
use super::{
    check_quota, commit_create, delete_resource, not_allowed_in_post, parse_uuid,
    project_for_create, read_only, required, show, string, update_names, Attr, Deletable,
    DESCRIPTION_MAX, NAME_MAX,
};
use crate::api::{deleted, many, one, path_id, timestamp, AppState, Body, ListQuery, Wrapped};
use crate::auth::Context;
use crate::drivers::{ResourceKind, SfcResource};
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2.0/sfc/service_graphs", get(list).post(create))
        .route(
            "/v2.0/sfc/service_graphs/{id}",
            get(show_one).put(update).delete(remove),
        )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceGraphCreate {
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
    pub port_chains: Attr,
}

impl Wrapped for ServiceGraphCreate {
    const KEY: &'static str = "service_graph";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceGraphUpdate {
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
    pub port_chains: Attr,
}

impl Wrapped for ServiceGraphUpdate {
    const KEY: &'static str = "service_graph";
}

/// A stored service graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceGraph {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    /// Source chain to its destination chains, in request order per source.
    pub port_chains: BTreeMap<String, Vec<String>>,
}

impl ServiceGraph {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(ServiceGraph {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            port_chains: BTreeMap::new(),
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "port_chains": self.port_chains,
        })
    }
}

impl SfcResource for ServiceGraph {
    const KIND: ResourceKind = ResourceKind::ServiceGraph;
    fn id(&self) -> &str {
        &self.id
    }
    fn to_json(&self) -> Value {
        ServiceGraph::to_json(self)
    }
}

const COLUMNS: &str = "id, project_id, name, description";

fn edges_into(graph: &mut ServiceGraph, edges: &[(String, String, String)]) {
    for (g, src, dst) in edges {
        if *g == graph.id {
            graph
                .port_chains
                .entry(src.clone())
                .or_default()
                .push(dst.clone());
        }
    }
}

const EDGES: &str = "SELECT service_graph_id, src_chain, dst_chain \
    FROM sfc_service_graph_chain_associations";

/// Reads one graph with its edges (any project's; callers check ownership).
pub async fn get_service_graph(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<ServiceGraph>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM sfc_service_graphs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut graph = ServiceGraph::from_row(&row)?;
    let edges: Vec<(String, String, String)> = sqlx::query_as(&format!(
        "{EDGES} WHERE service_graph_id = $1 ORDER BY position"
    ))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    edges_into(&mut graph, &edges);
    Ok(Some(graph))
}

pub fn service_graph_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "ServiceGraphNotFound",
        format!("Service Graph {id} not found."),
    )
}

/// A graph the caller may see, or 404 `ServiceGraphNotFound`.
pub async fn visible_service_graph(
    conn: &mut AnyConnection,
    ctx: &Context,
    id: &str,
) -> Result<ServiceGraph, ApiError> {
    match get_service_graph(conn, id).await? {
        Some(g) if ctx.owns(&g.project_id) => Ok(g),
        _ => Err(service_graph_not_found(id)),
    }
}

/// Whether any of `chains` is in a graph other than `except`.
pub async fn in_any_graph(
    conn: &mut AnyConnection,
    chains: &[String],
    except: Option<&str>,
) -> Result<bool, sqlx::Error> {
    for chain in chains {
        let graphs: Vec<String> = sqlx::query_scalar(
            "SELECT service_graph_id FROM sfc_service_graph_chain_associations \
             WHERE src_chain = $1 OR dst_chain = $1",
        )
        .bind(chain)
        .fetch_all(&mut *conn)
        .await?;
        if graphs.iter().any(|g| Some(g.as_str()) != except) {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn list(
    State(state): State<AppState>,
    ctx: Context,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let mut conn = state.db.pool().acquire().await?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM sfc_service_graphs ORDER BY created_at, id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let edges: Vec<(String, String, String)> =
        sqlx::query_as(&format!("{EDGES} ORDER BY service_graph_id, position"))
            .fetch_all(&mut *conn)
            .await?;
    let mut items = Vec::new();
    for row in &rows {
        let mut graph = ServiceGraph::from_row(row)?;
        if ctx.owns(&graph.project_id) {
            edges_into(&mut graph, &edges);
            items.push(graph.to_json());
        }
    }
    Ok(many("service_graphs", query.apply(items)))
}

async fn show_one(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let id = path_id("ServiceGraph", &id).map_err(|_| service_graph_not_found(&id))?;
    let mut conn = state.db.pool().acquire().await?;
    let graph = visible_service_graph(&mut conn, &ctx, &id).await?;
    Ok(one(
        StatusCode::OK,
        "service_graph",
        query.select(graph.to_json()),
    ))
}

fn invalid_uuid(message: String) -> ApiError {
    ApiError::bad_request(
        "InvalidUUID",
        format!(
            "An invalid UUID was specified: {message}. Make sure only valid UUIDs are provided."
        ),
    )
}

/// networking-sfc's `normalize_service_graph`: a dictionary (`null` is empty) of chain UUIDs
/// to lists of chain UUIDs.
fn parse_port_chains(v: &Value) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let map = match v {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Object(m) => m,
        other => {
            return Err(ApiError::invalid_attr(
                "port_chains",
                format!("'{}' is not a dictionary", show(other)),
            ))
        }
    };
    let mut out = BTreeMap::new();
    for (src, dsts) in map {
        let src_id = parse_uuid(src)
            .ok_or_else(|| invalid_uuid(format!("UUID of source Port-Chain is invalid: {src}")))?;
        let Value::Array(dsts) = dsts else {
            return Err(ApiError::invalid_attr(
                "port_chains",
                format!("'{}' is not a list", show(dsts)),
            ));
        };
        let mut dst_ids = Vec::with_capacity(dsts.len());
        for dst in dsts {
            let id = dst.as_str().and_then(parse_uuid).ok_or_else(|| {
                invalid_uuid(format!(
                    "UUID of destination Port-Chain is invalid: {}",
                    show(dst)
                ))
            })?;
            dst_ids.push(id);
        }
        out.insert(src_id, dst_ids);
    }
    Ok(out)
}

/// Whether the directed graph `src -> dst` has a cycle (networking-sfc's
/// `_is_there_a_loop` walks the same edges backwards).
fn has_loop(edges: &BTreeMap<String, Vec<String>>) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        edges: &'a BTreeMap<String, Vec<String>>,
        marks: &mut HashMap<&'a str, Mark>,
    ) -> bool {
        match marks.get(node) {
            Some(Mark::Active) => return true,
            Some(Mark::Done) => return false,
            None => {}
        }
        marks.insert(node, Mark::Active);
        for next in edges.get(node).into_iter().flatten() {
            if visit(next, edges, marks) {
                return true;
            }
        }
        marks.insert(node, Mark::Done);
        false
    }
    let mut marks = HashMap::new();
    edges.keys().any(|start| visit(start, edges, &mut marks))
}

/// The correlation every port pair of a chain's first (or last) group must carry for the
/// chain to branch there.
async fn check_branch_end(
    conn: &mut AnyConnection,
    ctx: &Context,
    chain: &PortChain,
    last: bool,
) -> Result<(), ApiError> {
    let group = if last {
        chain.port_pair_groups.last()
    } else {
        chain.port_pair_groups.first()
    };
    let Some(group) = group else { return Ok(()) };
    let group = visible_port_pair_group(conn, ctx, group).await?;
    for pp in members(conn, &group).await? {
        if pp.correlation() != Some(chain.chain_parameters.correlation.as_str()) {
            return Err(ApiError::bad_request(
                "ServiceGraphImpossibleBranching",
                "Service Graphs require source (branching) and destination port pair groups \
                 (their PPs) to have correlation enabled.",
            ));
        }
    }
    Ok(())
}

fn inconsistent_encapsulation() -> ApiError {
    ApiError::bad_request(
        "ServiceGraphInconsistentEncapsulation",
        "Service Graph may only connect port-chains sharing the same correlation.",
    )
}

/// networking-sfc's `_validate_port_chains_for_graph`.
async fn check_graph(
    conn: &mut AnyConnection,
    ctx: &Context,
    port_chains: &BTreeMap<String, Vec<String>>,
) -> Result<(), ApiError> {
    let mut all: Vec<String> = port_chains.keys().cloned().collect();
    all.extend(port_chains.values().flatten().cloned());
    all.sort();
    all.dedup();
    if in_any_graph(conn, &all, None).await? {
        return Err(ApiError::conflict(
            "ServiceGraphInvalidPortChains",
            format!(
                "Some of the Port Chain(s): {}, are already in use by a Service Graph.",
                Value::from(
                    port_chains
                        .iter()
                        .map(|(k, v)| (k.clone(), json!(v)))
                        .collect::<Map<String, Value>>()
                )
            ),
        ));
    }
    let mut encapsulation: Option<String> = None;
    for (src, dsts) in port_chains {
        let src_chain = visible_port_chain(conn, ctx, src).await?;
        check_branch_end(conn, ctx, &src_chain, true).await?;
        let correlation = &src_chain.chain_parameters.correlation;
        match &encapsulation {
            None => encapsulation = Some(correlation.clone()),
            Some(e) if e != correlation => return Err(inconsistent_encapsulation()),
            Some(_) => {}
        }
        let mut seen = HashSet::new();
        let mut branch_fcs: Vec<FlowClassifier> = Vec::new();
        for dst in dsts {
            if !seen.insert(dst) {
                return Err(ApiError::bad_request(
                    "ServiceGraphPortChainInConflict",
                    format!(
                        "Port Chain {dst} is duplicated on one of the branching points being \
                         created."
                    ),
                ));
            }
            let dst_chain = visible_port_chain(conn, ctx, dst).await?;
            check_branch_end(conn, ctx, &dst_chain, false).await?;
            if encapsulation.as_deref() != Some(dst_chain.chain_parameters.correlation.as_str()) {
                return Err(inconsistent_encapsulation());
            }
            for fc in &dst_chain.flow_classifiers {
                branch_fcs.push(visible_flow_classifier(conn, ctx, fc).await?);
            }
            for (i, a) in branch_fcs.iter().enumerate() {
                if let Some(b) = branch_fcs[i + 1..].iter().find(|b| basic_conflict(a, b)) {
                    return Err(ApiError::bad_request(
                        "ServiceGraphFlowClassifierInConflict",
                        format!(
                            "Flow Classifier {} conflicts with Flow Classifier {} on one of the \
                             branching points being created.",
                            a.id, b.id
                        ),
                    ));
                }
            }
        }
    }
    if has_loop(port_chains) {
        return Err(ApiError::bad_request(
            "ServiceGraphLoopDetected",
            "Service Graph defined contains at least one port chain loop.",
        ));
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    ctx: Context,
    Body(req): Body<ServiceGraphCreate>,
) -> Result<Response, ApiError> {
    if req.id.is_given() {
        return Err(not_allowed_in_post("id"));
    }
    let port_chains = req
        .port_chains
        .given()
        .ok_or_else(|| required("port_chains"))?;
    let name = string("name", &req.name, NAME_MAX)?.unwrap_or_default();
    let description = string("description", &req.description, DESCRIPTION_MAX)?.unwrap_or_default();
    let project_id = project_for_create(&ctx, &req.project_id, &req.tenant_id)?;
    let port_chains = parse_port_chains(port_chains)?;

    let mut tx = state.db.begin_write().await?;
    check_quota(
        tx.conn(),
        "sfc_service_graphs",
        "service_graph",
        &project_id,
        state.quotas.service_graph,
    )
    .await?;
    check_graph(tx.conn(), &ctx, &port_chains).await?;
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(&format!(
        "INSERT INTO sfc_service_graphs ({COLUMNS}, created_at) VALUES ($1, $2, $3, $4, $5)"
    ))
    .bind(&id)
    .bind(&project_id)
    .bind(&name)
    .bind(&description)
    .bind(timestamp())
    .execute(tx.conn())
    .await?;
    let mut position: i64 = 0;
    for (src, dsts) in &port_chains {
        for dst in dsts {
            sqlx::query(
                "INSERT INTO sfc_service_graph_chain_associations \
                 (service_graph_id, src_chain, dst_chain, position) VALUES ($1, $2, $3, $4)",
            )
            .bind(&id)
            .bind(src)
            .bind(dst)
            .bind(position)
            .execute(tx.conn())
            .await?;
            position += 1;
        }
    }
    let graph = get_service_graph(tx.conn(), &id)
        .await?
        .ok_or_else(|| service_graph_not_found(&id))?;
    commit_create(&state, &ctx, tx, &graph).await?;
    Ok(one(StatusCode::CREATED, "service_graph", graph.to_json()))
}

async fn update(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    Body(req): Body<ServiceGraphUpdate>,
) -> Result<Response, ApiError> {
    let id = path_id("ServiceGraph", &id).map_err(|_| service_graph_not_found(&id))?;
    for (attr, value) in [
        ("id", &req.id),
        ("project_id", &req.project_id),
        ("tenant_id", &req.tenant_id),
        ("port_chains", &req.port_chains),
    ] {
        if value.is_given() {
            return Err(read_only(attr));
        }
    }
    let name = string("name", &req.name, NAME_MAX)?;
    let description = string("description", &req.description, DESCRIPTION_MAX)?;
    let graph: ServiceGraph = update_names(&state, &ctx, &id, name, description).await?;
    Ok(one(StatusCode::OK, "service_graph", graph.to_json()))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = path_id("ServiceGraph", &id).map_err(|_| service_graph_not_found(&id))?;
    delete_resource::<ServiceGraph>(&state, &ctx, &id).await?;
    Ok(deleted())
}

impl Deletable for ServiceGraph {
    const TABLE: &'static str = "sfc_service_graphs";
    const DEPENDENTS: &'static [(&'static str, &'static str)] =
        &[("sfc_service_graph_chain_associations", "service_graph_id")];

    fn names_mut(&mut self) -> (&mut String, &mut String) {
        (&mut self.name, &mut self.description)
    }

    async fn visible(conn: &mut AnyConnection, ctx: &Context, id: &str) -> Result<Self, ApiError> {
        visible_service_graph(conn, ctx, id).await
    }

    async fn ensure_unused(_conn: &mut AnyConnection, _id: &str) -> Result<(), ApiError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(s, d)| (s.to_string(), d.iter().map(|x| x.to_string()).collect()))
            .collect()
    }

    #[test]
    fn loops() {
        assert!(!has_loop(&graph(&[("a", &["b", "c"]), ("b", &["c"])])));
        assert!(has_loop(&graph(&[("a", &["b"]), ("b", &["b"])])));
        assert!(has_loop(&graph(&[
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["d"]),
            ("d", &["b", "e"])
        ])));
        assert!(!has_loop(&graph(&[
            ("a", &["b"]),
            ("c", &["d"]),
            ("d", &["b"])
        ])));
    }
}
