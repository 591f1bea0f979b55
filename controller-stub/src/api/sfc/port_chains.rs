//! `/v2.0/sfc/port_chains`: an ordered list of port pair groups and the classifiers that steer
//! traffic into it.
//!
//! `chain_id` (the OVS driver's service path id) is the lowest free value in 1..65534 unless
//! given (0..65535; in use: 400 `PortChainChainIdInConflict`). Groups may be shared between
//! chains, in any order, but not as an identical ordered list (409 `InvalidPortPairGroups`);
//! two tap groups may not follow each other (400 `ConsecutiveTapPPGNotSupported`); every port
//! pair's correlation must be unset or the chain's (400 `PortChainInconsistentCorrelations`).
//! A classifier steers into one chain (409 `FlowClassifierInUse`, also the association's key)
//! and must not basic-conflict with another chain's classifiers (400
//! `PortChainFlowClassifierInConflict`). A chain in a service graph keeps its groups and
//! classifiers and cannot be deleted (409 `ServiceGraphPortChainInUse`).

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::flow_classifiers::{
    all_flow_classifiers, basic_conflict, chain_of, chained_candidates, flow_classifier_not_found,
    visible_flow_classifier, FlowClassifier,
};
use super::port_pair_groups::{members, visible_port_pair_group};
use super::service_graphs::in_any_graph;
use super::{
    boolean, check_quota, commit_create_all, commit_update, delete_resource, integer, json_column,
    lowest_free, not_allowed_in_post, over_quota, project_for_create, read_only, required, show,
    string, uuid_list, Attr, Deletable, DESCRIPTION_MAX, NAME_MAX,
};
use super::{PortPair, PortPairGroup};
use crate::api::{
    created_many, deleted, many, one, path_id, timestamp, AppState, Body, BulkBody, ListQuery,
    Plural, Wrapped,
};
use crate::auth::Context;
use crate::drivers::{ResourceKind, SfcResource};
use crate::error::ApiError;

/// networking-sfc's `MAX_CHAIN_ID`: the largest chain id a request may name; automatic ids
/// stay below it.
pub const MAX_CHAIN_ID: i64 = 65535;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2.0/sfc/port_chains", get(list).post(create))
        .route(
            "/v2.0/sfc/port_chains/{id}",
            get(show_one).put(update).delete(remove),
        )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortChainCreate {
    #[serde(default)]
    pub id: Attr,
    #[serde(default)]
    pub chain_id: Attr,
    #[serde(default)]
    pub name: Attr,
    #[serde(default)]
    pub description: Attr,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub port_pair_groups: Attr,
    #[serde(default)]
    pub flow_classifiers: Attr,
    #[serde(default)]
    pub chain_parameters: Attr,
}

impl Wrapped for PortChainCreate {
    const KEY: &'static str = "port_chain";
}

impl Plural for PortChainCreate {
    const PLURAL: &'static str = "port_chains";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortChainUpdate {
    #[serde(default)]
    pub name: Attr,
    #[serde(default)]
    pub description: Attr,
    #[serde(default)]
    pub port_pair_groups: Attr,
    #[serde(default)]
    pub flow_classifiers: Attr,
    #[serde(default)]
    pub id: Attr,
    #[serde(default)]
    pub chain_id: Attr,
    #[serde(default)]
    pub project_id: Attr,
    #[serde(default)]
    pub tenant_id: Attr,
    #[serde(default)]
    pub chain_parameters: Attr,
}

impl Wrapped for PortChainUpdate {
    const KEY: &'static str = "port_chain";
}

/// `chain_parameters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainParameters {
    /// `mpls` or `nsh`.
    pub correlation: String,
    pub symmetric: bool,
}

impl Default for ChainParameters {
    fn default() -> Self {
        ChainParameters {
            correlation: "mpls".to_string(),
            symmetric: false,
        }
    }
}

impl ChainParameters {
    /// networking-sfc's `normalize_chain_parameters` and its `type:dict` specification.
    pub fn parse(value: &Value) -> Result<Self, ApiError> {
        const ATTR: &str = "chain_parameters";
        let mut params = ChainParameters::default();
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
            .filter(|k| !matches!(k.as_str(), "correlation" | "symmetric"))
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
                Value::String(s) if s == "mpls" || s == "nsh" => s.clone(),
                other => {
                    return Err(ApiError::invalid_attr(
                        ATTR,
                        format!("'{}' is not in ['mpls', 'nsh']", show(other)),
                    ))
                }
            };
        }
        if let Some(s) = map.get("symmetric") {
            params.symmetric = boolean(s)?;
        }
        Ok(params)
    }

    pub fn to_json(&self) -> Value {
        json!({"correlation": self.correlation, "symmetric": self.symmetric})
    }

    fn from_json(v: &Value) -> Self {
        let default = ChainParameters::default();
        ChainParameters {
            correlation: v
                .get("correlation")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or(default.correlation),
            symmetric: v
                .get("symmetric")
                .and_then(Value::as_bool)
                .unwrap_or(default.symmetric),
        }
    }
}

/// A stored port chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortChain {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    pub chain_id: i64,
    pub chain_parameters: ChainParameters,
    /// The hops, in order.
    pub port_pair_groups: Vec<String>,
    pub flow_classifiers: Vec<String>,
}

impl PortChain {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(PortChain {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            chain_id: row.try_get("chain_id")?,
            chain_parameters: ChainParameters::from_json(&json_column(row, "chain_parameters")?),
            port_pair_groups: Vec::new(),
            flow_classifiers: Vec::new(),
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "port_pair_groups": self.port_pair_groups,
            "flow_classifiers": self.flow_classifiers,
            "chain_parameters": self.chain_parameters.to_json(),
            "chain_id": self.chain_id,
        })
    }
}

impl SfcResource for PortChain {
    const KIND: ResourceKind = ResourceKind::PortChain;
    fn id(&self) -> &str {
        &self.id
    }
    fn to_json(&self) -> Value {
        PortChain::to_json(self)
    }
}

const COLUMNS: &str = "id, project_id, name, description, chain_id, chain_parameters";

/// Reads one chain with its groups and classifiers (any project's; callers check ownership).
pub async fn get_port_chain(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<PortChain>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM sfc_port_chains WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut chain = PortChain::from_row(&row)?;
    chain.port_pair_groups = sqlx::query_scalar(
        "SELECT portpairgroup_id FROM sfc_chain_group_associations WHERE portchain_id = $1 \
         ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    chain.flow_classifiers = sqlx::query_scalar(
        "SELECT flowclassifier_id FROM sfc_chain_classifier_associations \
         WHERE portchain_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(chain))
}

/// Every chain with its groups and classifiers, oldest first.
pub async fn all_port_chains(conn: &mut AnyConnection) -> Result<Vec<PortChain>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM sfc_port_chains ORDER BY created_at, id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let groups: Vec<(String, String)> = sqlx::query_as(
        "SELECT portchain_id, portpairgroup_id FROM sfc_chain_group_associations \
         ORDER BY portchain_id, position",
    )
    .fetch_all(&mut *conn)
    .await?;
    let classifiers: Vec<(String, String)> = sqlx::query_as(
        "SELECT portchain_id, flowclassifier_id FROM sfc_chain_classifier_associations \
         ORDER BY portchain_id, position",
    )
    .fetch_all(&mut *conn)
    .await?;
    // Grouped by chain once (the rows come ordered by chain and position): filtering the
    // whole association list for every chain made this quadratic in the number of chains.
    let by_chain = |pairs: Vec<(String, String)>| {
        let mut map: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for (chain, x) in pairs {
            map.entry(chain).or_default().push(x);
        }
        map
    };
    let (mut groups, mut classifiers) = (by_chain(groups), by_chain(classifiers));
    let mut chains = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut chain = PortChain::from_row(row)?;
        chain.port_pair_groups = groups.remove(&chain.id).unwrap_or_default();
        chain.flow_classifiers = classifiers.remove(&chain.id).unwrap_or_default();
        chains.push(chain);
    }
    Ok(chains)
}

pub fn port_chain_not_found(id: &str) -> ApiError {
    ApiError::not_found("PortChainNotFound", format!("Port Chain {id} not found."))
}

/// A chain the caller may see, or 404 `PortChainNotFound`.
pub async fn visible_port_chain(
    conn: &mut AnyConnection,
    ctx: &Context,
    id: &str,
) -> Result<PortChain, ApiError> {
    match get_port_chain(conn, id).await? {
        Some(c) if ctx.owns(&c.project_id) => Ok(c),
        _ => Err(port_chain_not_found(id)),
    }
}

async fn list(
    State(state): State<AppState>,
    ctx: Context,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let mut conn = state.db.pool().acquire().await?;
    let items = all_port_chains(&mut conn)
        .await?
        .into_iter()
        .filter(|c| ctx.owns(&c.project_id))
        .map(|c| c.to_json())
        .collect();
    Ok(many("port_chains", query.apply(items)))
}

async fn show_one(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let id = path_id("PortChain", &id).map_err(|_| port_chain_not_found(&id))?;
    let mut conn = state.db.pool().acquire().await?;
    let chain = visible_port_chain(&mut conn, &ctx, &id).await?;
    Ok(one(
        StatusCode::OK,
        "port_chain",
        query.select(chain.to_json()),
    ))
}

/// `port_pair_groups`: networking-sfc's `normalize_port_pair_groups` (a list, not empty) and
/// `type:uuid_list`.
fn parse_groups(v: &Value) -> Result<Vec<String>, ApiError> {
    let groups = uuid_list("port_pair_groups", v)?;
    if groups.is_empty() {
        return Err(ApiError::bad_request(
            "PortPairGroupNotSpecified",
            "Port Pair Group is not specified in Port Chain.",
        ));
    }
    Ok(groups)
}

/// What the checks of a create compare a new chain with. A single create reads the few
/// stored chains that matter through narrow queries; a bulk create reads every chain's group
/// list, classifiers and id once and adds each chain of the request as it is accepted, so that
/// its checks cost no query per chain and see the chains before it in the request.
#[derive(Default)]
struct Known {
    /// Groups with their port pairs, as read by this request.
    groups: HashMap<String, (PortPairGroup, Vec<PortPair>)>,
    /// Bulk only: the other chains.
    chains: Option<KnownChains>,
}

struct KnownChains {
    /// Group list -> (chain, project) of the chains that have it.
    lists: HashMap<Vec<String>, Vec<(String, String)>>,
    /// Classifier -> the chain steering with it.
    owners: HashMap<String, String>,
    /// Every chain's classifiers, with the chain and its project.
    chained: Vec<(FlowClassifier, String, String)>,
    /// Chain id -> chain.
    chain_ids: BTreeMap<i64, String>,
    /// Every classifier, chained or not.
    classifiers: HashMap<String, FlowClassifier>,
    /// Project -> its number of chains.
    per_project: HashMap<String, i64>,
}

impl Known {
    /// For a bulk create: every chain read once.
    async fn everything(conn: &mut AnyConnection) -> Result<Known, ApiError> {
        let chains = all_port_chains(conn).await?;
        let classifiers: HashMap<String, FlowClassifier> = all_flow_classifiers(conn)
            .await?
            .into_iter()
            .map(|fc| (fc.id.clone(), fc))
            .collect();
        let mut known = KnownChains {
            lists: HashMap::new(),
            owners: HashMap::new(),
            chained: Vec::new(),
            chain_ids: BTreeMap::new(),
            classifiers,
            per_project: HashMap::new(),
        };
        for chain in &chains {
            known.add(chain);
        }
        Ok(Known {
            groups: HashMap::new(),
            chains: Some(known),
        })
    }
}

impl KnownChains {
    fn add(&mut self, chain: &PortChain) {
        self.lists
            .entry(chain.port_pair_groups.clone())
            .or_default()
            .push((chain.id.clone(), chain.project_id.clone()));
        for fc in &chain.flow_classifiers {
            self.owners.insert(fc.clone(), chain.id.clone());
            if let Some(fc) = self.classifiers.get(fc) {
                self.chained
                    .push((fc.clone(), chain.id.clone(), chain.project_id.clone()));
            }
        }
        self.chain_ids.insert(chain.chain_id, chain.id.clone());
        *self
            .per_project
            .entry(chain.project_id.clone())
            .or_default() += 1;
    }
}

/// networking-sfc's `_validate_port_pair_groups` and `_validate_correlation_consistency`: the
/// groups exist, no two tap groups follow each other, no other chain the caller sees has the
/// same ordered list, and every port pair's correlation is unset or the chain's.
async fn check_groups(
    conn: &mut AnyConnection,
    ctx: &Context,
    groups: &[String],
    correlation: &str,
    chain: Option<&str>,
    known: &mut Known,
) -> Result<(), ApiError> {
    let mut loaded = Vec::with_capacity(groups.len());
    let mut previous_tap = false;
    for id in groups {
        if !known.groups.contains_key(id) {
            let group = visible_port_pair_group(conn, ctx, id).await?;
            let pairs = members(conn, &group).await?;
            known.groups.insert(id.clone(), (group, pairs));
        }
        let (group, _) = &known.groups[id];
        if previous_tap && group.tap_enabled {
            return Err(ApiError::bad_request(
                "ConsecutiveTapPPGNotSupported",
                "Consecutive Tap PPG in port-chain is not supported now.",
            ));
        }
        previous_tap = group.tap_enabled;
        loaded.push(id);
    }
    let same: Vec<(String, String)> = match &known.chains {
        Some(k) => k.lists.get(groups).cloned().unwrap_or_default(),
        None => {
            // Only chains that start with the same group can have the same list.
            let rows: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT c.id, c.project_id, a.portpairgroup_id FROM sfc_port_chains c \
                 JOIN sfc_chain_group_associations a ON a.portchain_id = c.id \
                 WHERE c.id IN (SELECT portchain_id FROM sfc_chain_group_associations \
                                WHERE portpairgroup_id = $1 AND position = 0) \
                 ORDER BY c.id, a.position",
            )
            .bind(&groups[0])
            .fetch_all(&mut *conn)
            .await?;
            let mut lists: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
            for (id, project, group) in rows {
                lists.entry((id, project)).or_default().push(group);
            }
            lists
                .into_iter()
                .filter(|(_, list)| list == groups)
                .map(|(key, _)| key)
                .collect()
        }
    };
    for (other, project) in same {
        if Some(other.as_str()) == chain || !ctx.owns(&project) {
            continue;
        }
        return Err(ApiError::conflict(
            "InvalidPortPairGroups",
            format!("Port Pair Group(s) {groups:?} in use by Port Chain {other}."),
        ));
    }
    for id in loaded {
        let (group, pairs) = &known.groups[id];
        for pp in pairs {
            if pp.correlation().is_some_and(|c| c != correlation) {
                return Err(ApiError::bad_request(
                    "PortChainInconsistentCorrelations",
                    format!(
                        "Port Chain attempted creation included a Port Pair Group ({}) with a \
                         different protocol used as correlation type.",
                        group.id
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// networking-sfc's `_validate_flow_classifiers`: the classifiers exist, none steers into
/// another chain, and none basic-conflicts with a classifier of another chain the caller sees.
async fn check_classifiers(
    conn: &mut AnyConnection,
    ctx: &Context,
    classifiers: &[String],
    chain: Option<&str>,
    known: &Known,
) -> Result<(), ApiError> {
    let mut fcs: Vec<FlowClassifier> = Vec::with_capacity(classifiers.len());
    for id in classifiers {
        let fc = match known.chains.as_ref().map(|k| k.classifiers.get(id)) {
            Some(Some(fc)) if ctx.owns(&fc.project_id) => fc.clone(),
            Some(_) => return Err(flow_classifier_not_found(id)),
            None => visible_flow_classifier(conn, ctx, id).await?,
        };
        fcs.push(fc);
    }
    for fc in &fcs {
        let owner = match &known.chains {
            Some(k) => k.owners.get(&fc.id).cloned(),
            None => chain_of(conn, &fc.id).await?,
        };
        if owner.is_some_and(|owner| Some(owner.as_str()) != chain) {
            return Err(ApiError::conflict(
                "FlowClassifierInUse",
                format!("Flow Classifier {} in use.", fc.id),
            ));
        }
    }
    for fc in &fcs {
        let candidates = match &known.chains {
            Some(k) => k
                .chained
                .iter()
                .filter(|(other, _, _)| basic_conflict(other, fc))
                .cloned()
                .collect(),
            None => chained_candidates(conn, fc).await?,
        };
        for (other_fc, other, project) in candidates {
            if Some(other.as_str()) == chain || !ctx.owns(&project) {
                continue;
            }
            return Err(ApiError::bad_request(
                "PortChainFlowClassifierInConflict",
                format!(
                    "Flow Classifier {} conflicts with Flow Classifier {} in port chain {other}.",
                    fc.id, other_fc.id
                ),
            ));
        }
    }
    Ok(())
}

async fn set_groups(
    conn: &mut AnyConnection,
    chain: &str,
    groups: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sfc_chain_group_associations WHERE portchain_id = $1")
        .bind(chain)
        .execute(&mut *conn)
        .await?;
    insert_positions(conn, GROUP_ROWS, &positions(chain, groups)).await
}

async fn set_classifiers(
    conn: &mut AnyConnection,
    chain: &str,
    classifiers: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sfc_chain_classifier_associations WHERE portchain_id = $1")
        .bind(chain)
        .execute(&mut *conn)
        .await?;
    insert_positions(conn, CLASSIFIER_ROWS, &positions(chain, classifiers)).await
}

/// Rows per multi-row INSERT: 50 rows in one statement took a tenth of the time of 1000 rows
/// in one (measured through sqlx on SQLite), and well within both databases' parameter limits.
pub(crate) const ROWS_PER_INSERT: usize = 50;

const GROUP_ROWS: &str = "sfc_chain_group_associations (portchain_id, portpairgroup_id, position)";
const CLASSIFIER_ROWS: &str =
    "sfc_chain_classifier_associations (portchain_id, flowclassifier_id, position)";

/// Inserts (chain, item, position) rows, many per statement.
async fn insert_positions(
    conn: &mut AnyConnection,
    table_and_columns: &str,
    rows: &[(&str, &str, i64)],
) -> Result<(), sqlx::Error> {
    for batch in rows.chunks(ROWS_PER_INSERT) {
        let values: Vec<String> = (0..batch.len())
            .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
            .collect();
        let sql = format!(
            "INSERT INTO {table_and_columns} VALUES {}",
            values.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for (chain, item, position) in batch {
            query = query.bind(*chain).bind(*item).bind(*position);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// One chain's (chain, item, position) rows.
fn positions<'a>(chain: &'a str, items: &'a [String]) -> Vec<(&'a str, &'a str, i64)> {
    items
        .iter()
        .enumerate()
        .map(|(i, x)| (chain, x.as_str(), i64::try_from(i).unwrap_or(i64::MAX)))
        .collect()
}

/// A create request, parsed and checked on its own (what needs no database).
struct NewChain {
    project_id: String,
    name: String,
    description: String,
    requested_chain_id: i64,
    groups: Vec<String>,
    classifiers: Vec<String>,
    params: ChainParameters,
}

fn parse_create(ctx: &Context, req: PortChainCreate) -> Result<NewChain, ApiError> {
    if req.id.is_given() {
        return Err(not_allowed_in_post("id"));
    }
    let groups = req
        .port_pair_groups
        .given()
        .ok_or_else(|| required("port_pair_groups"))?;
    let requested_chain_id = match req.chain_id.given() {
        None => 0,
        Some(v) => {
            let id = integer(v)?;
            if !(0..=MAX_CHAIN_ID).contains(&id) {
                return Err(ApiError::invalid_attr(
                    "chain_id",
                    format!("'{id}' is not in range 0 through {MAX_CHAIN_ID}"),
                ));
            }
            id
        }
    };
    let name = string("name", &req.name, NAME_MAX)?.unwrap_or_default();
    let description = string("description", &req.description, DESCRIPTION_MAX)?.unwrap_or_default();
    let project_id = project_for_create(ctx, &req.project_id, &req.tenant_id)?;
    let groups = parse_groups(groups)?;
    let classifiers = match req.flow_classifiers.given() {
        None => Vec::new(),
        Some(v) => uuid_list("flow_classifiers", v)?,
    };
    let params = match req.chain_parameters.given() {
        None => ChainParameters::default(),
        Some(v) => ChainParameters::parse(v)?,
    };
    Ok(NewChain {
        project_id,
        name,
        description,
        requested_chain_id,
        groups,
        classifiers,
        params,
    })
}

/// Checks a new chain against what is stored (and, in a bulk create, the chains of the
/// request before it) and returns it; nothing is written.
async fn check_chain(
    conn: &mut AnyConnection,
    state: &AppState,
    ctx: &Context,
    new: NewChain,
    known: &mut Known,
) -> Result<PortChain, ApiError> {
    if let Some(k) = &known.chains {
        // The stored chains and the request's own before this one.
        let used = k.per_project.get(&new.project_id).copied().unwrap_or(0);
        if state.quotas.port_chain >= 0 && used >= state.quotas.port_chain {
            return Err(over_quota("port_chain"));
        }
    } else {
        check_quota(
            conn,
            "sfc_port_chains",
            "port_chain",
            &new.project_id,
            state.quotas.port_chain,
        )
        .await?;
    }
    check_groups(conn, ctx, &new.groups, &new.params.correlation, None, known).await?;
    check_classifiers(conn, ctx, &new.classifiers, None, known).await?;
    let unavailable = || {
        ApiError::bad_request(
            "PortChainUnavailableChainId",
            "Port Chain no available chain id.",
        )
    };
    let chain_id = match (&known.chains, new.requested_chain_id) {
        (Some(k), 0) => {
            let ids: Vec<i64> = k.chain_ids.keys().copied().collect();
            lowest_free(&ids, 1, MAX_CHAIN_ID).ok_or_else(unavailable)?
        }
        (None, 0) => {
            // The lowest free id: 1, or one above a used id whose successor is free; found
            // through the unique index on chain_id rather than by reading every chain.
            let free: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(candidate) FROM (\
                   SELECT 1 AS candidate WHERE NOT EXISTS \
                     (SELECT 1 FROM sfc_port_chains WHERE chain_id = 1) \
                   UNION ALL SELECT c.chain_id + 1 FROM sfc_port_chains c \
                     WHERE c.chain_id >= 1 AND NOT EXISTS (SELECT 1 FROM sfc_port_chains d \
                                     WHERE d.chain_id = c.chain_id + 1)) AS candidates",
            )
            .fetch_one(&mut *conn)
            .await?;
            free.filter(|id| *id < MAX_CHAIN_ID)
                .ok_or_else(unavailable)?
        }
        (known_chains, requested) => {
            let other: Option<String> = match known_chains {
                Some(k) => k.chain_ids.get(&requested).cloned(),
                None => {
                    sqlx::query_scalar("SELECT id FROM sfc_port_chains WHERE chain_id = $1")
                        .bind(requested)
                        .fetch_optional(&mut *conn)
                        .await?
                }
            };
            if let Some(other) = other {
                return Err(ApiError::bad_request(
                    "PortChainChainIdInConflict",
                    format!("Chain id {requested} conflicts with Chain id in port chain {other}."),
                ));
            }
            requested
        }
    };
    let chain = PortChain {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: new.project_id,
        name: new.name,
        description: new.description,
        chain_id,
        chain_parameters: new.params,
        port_pair_groups: new.groups,
        flow_classifiers: new.classifiers,
    };
    Ok(chain)
}

/// Writes new chains with their group and classifier rows, many rows per statement.
async fn insert_chains(conn: &mut AnyConnection, chains: &[PortChain]) -> Result<(), sqlx::Error> {
    let now = timestamp();
    // Statements of 50 rows: much larger ones cost more per row than they save.
    for batch in chains.chunks(ROWS_PER_INSERT) {
        let values: Vec<String> = (0..batch.len())
            .map(|i| {
                let p: Vec<String> = (1..=7).map(|k| format!("${}", 7 * i + k)).collect();
                format!("({})", p.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO sfc_port_chains ({COLUMNS}, created_at) VALUES {}",
            values.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for c in batch {
            query = query
                .bind(&c.id)
                .bind(&c.project_id)
                .bind(&c.name)
                .bind(&c.description)
                .bind(c.chain_id)
                .bind(c.chain_parameters.to_json().to_string())
                .bind(&now);
        }
        query.execute(&mut *conn).await?;
    }
    let rows = |items: fn(&PortChain) -> &Vec<String>| -> Vec<(&str, &str, i64)> {
        chains
            .iter()
            .flat_map(|c| {
                items(c).iter().enumerate().map(|(i, x)| {
                    (
                        c.id.as_str(),
                        x.as_str(),
                        i64::try_from(i).unwrap_or(i64::MAX),
                    )
                })
            })
            .collect()
    };
    insert_positions(conn, GROUP_ROWS, &rows(|c| &c.port_pair_groups)).await?;
    insert_positions(conn, CLASSIFIER_ROWS, &rows(|c| &c.flow_classifiers)).await
}

/// `POST /v2.0/sfc/port_chains`, singular or in bulk (`{"port_chains": [...]}`, all in one
/// transaction: every chain is checked against the stored ones and those before it in the
/// request, and one refused chain refuses the request). networking-sfc does not allow bulk
/// creates; Neutron's core resources do, and creating many chains at once is what a
/// controller resync or a tenant's service rollout does.
async fn create(
    State(state): State<AppState>,
    ctx: Context,
    body: BulkBody<PortChainCreate>,
) -> Result<Response, ApiError> {
    let (requests, bulk) = match body {
        BulkBody::One(r) => (vec![r], false),
        BulkBody::Many(rs) => (rs, true),
    };
    let new: Vec<NewChain> = requests
        .into_iter()
        .map(|r| parse_create(&ctx, r))
        .collect::<Result<_, _>>()?;
    let mut tx = state.db.begin_write().await?;
    let mut known = if bulk {
        Known::everything(tx.conn()).await?
    } else {
        Known::default()
    };
    let mut chains = Vec::with_capacity(new.len());
    for n in new {
        let chain = check_chain(tx.conn(), &state, &ctx, n, &mut known).await?;
        if let Some(k) = &mut known.chains {
            k.add(&chain);
        }
        chains.push(chain);
    }
    insert_chains(tx.conn(), &chains).await?;
    commit_create_all(&state, &ctx, tx, &chains).await?;
    if bulk {
        let items = chains.iter().map(PortChain::to_json).collect();
        Ok(created_many("port_chains", items))
    } else {
        Ok(one(StatusCode::CREATED, "port_chain", chains[0].to_json()))
    }
}

async fn update(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    Body(req): Body<PortChainUpdate>,
) -> Result<Response, ApiError> {
    let id = path_id("PortChain", &id).map_err(|_| port_chain_not_found(&id))?;
    for (attr, value) in [
        ("id", &req.id),
        ("chain_id", &req.chain_id),
        ("project_id", &req.project_id),
        ("tenant_id", &req.tenant_id),
        ("chain_parameters", &req.chain_parameters),
    ] {
        if value.is_given() {
            return Err(read_only(attr));
        }
    }
    let name = string("name", &req.name, NAME_MAX)?;
    let description = string("description", &req.description, DESCRIPTION_MAX)?;
    let groups = req.port_pair_groups.given().map(parse_groups).transpose()?;
    let classifiers = req
        .flow_classifiers
        .given()
        .map(|v| uuid_list("flow_classifiers", v))
        .transpose()?;

    let mut tx = state.db.begin_write().await?;
    let original = visible_port_chain(tx.conn(), &ctx, &id).await?;
    if (groups.is_some() || classifiers.is_some())
        && in_any_graph(tx.conn(), std::slice::from_ref(&id), None).await?
    {
        return Err(graph_chain_in_use(&id));
    }
    if let Some(classifiers) = &classifiers {
        check_classifiers(tx.conn(), &ctx, classifiers, Some(&id), &Known::default()).await?;
        set_classifiers(tx.conn(), &id, classifiers).await?;
    }
    if let Some(groups) = &groups {
        // Stricter than networking-sfc, which checks correlations on create only: an update
        // cannot bring in port pairs the chain's encapsulation does not fit either.
        check_groups(
            tx.conn(),
            &ctx,
            groups,
            &original.chain_parameters.correlation,
            Some(&id),
            &mut Known::default(),
        )
        .await?;
        set_groups(tx.conn(), &id, groups).await?;
    }
    if let Some(name) = &name {
        sqlx::query("UPDATE sfc_port_chains SET name = $1 WHERE id = $2")
            .bind(name)
            .bind(&id)
            .execute(tx.conn())
            .await?;
    }
    if let Some(description) = &description {
        sqlx::query("UPDATE sfc_port_chains SET description = $1 WHERE id = $2")
            .bind(description)
            .bind(&id)
            .execute(tx.conn())
            .await?;
    }
    let chain = get_port_chain(tx.conn(), &id)
        .await?
        .ok_or_else(|| port_chain_not_found(&id))?;
    commit_update(&state, &ctx, tx, &chain, &original).await?;
    Ok(one(StatusCode::OK, "port_chain", chain.to_json()))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = path_id("PortChain", &id).map_err(|_| port_chain_not_found(&id))?;
    delete_resource::<PortChain>(&state, &ctx, &id).await?;
    Ok(deleted())
}

pub(crate) fn graph_chain_in_use(id: &str) -> ApiError {
    ApiError::conflict(
        "ServiceGraphPortChainInUse",
        format!("Port Chain {id} in use."),
    )
}

async fn ensure_not_in_graph(conn: &mut AnyConnection, id: &str) -> Result<(), ApiError> {
    if in_any_graph(conn, &[id.to_string()], None).await? {
        return Err(graph_chain_in_use(id));
    }
    Ok(())
}

impl Deletable for PortChain {
    const TABLE: &'static str = "sfc_port_chains";
    const DEPENDENTS: &'static [(&'static str, &'static str)] = &[
        ("sfc_chain_group_associations", "portchain_id"),
        ("sfc_chain_classifier_associations", "portchain_id"),
    ];

    fn names_mut(&mut self) -> (&mut String, &mut String) {
        (&mut self.name, &mut self.description)
    }

    async fn visible(conn: &mut AnyConnection, ctx: &Context, id: &str) -> Result<Self, ApiError> {
        visible_port_chain(conn, ctx, id).await
    }

    async fn ensure_unused(conn: &mut AnyConnection, id: &str) -> Result<(), ApiError> {
        ensure_not_in_graph(conn, id).await
    }
}
