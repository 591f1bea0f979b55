//! networking-sfc's API: `/v2.0/sfc/port_pairs`, `port_pair_groups`, `flow_classifiers`,
//! `port_chains` and `service_graphs`, with every validation, conflict and status rule of
//! `reference/networking-sfc.md` §1.
//!
//! Each resource module follows the shape of [`crate::api::networks`], with two additions.
//! Request attributes are read as [`Attr`] (absent, or any JSON value including `null`) and
//! converted here the way neutron-lib's converters and validators do it, so that the
//! permissive inputs stock clients send (`"weight": "2"`, `"symmetric": "true"`, a single UUID
//! for a list) work and every refusal carries Neutron's exception type. And every write calls
//! the [drivers](crate::drivers) in networking-sfc's order: precommit inside the write
//! transaction, postcommit after it, with a failed create postcommit undone through the normal
//! delete path.
//!
//! Cross-resource rules that networking-sfc evaluates over "the resources the caller can see"
//! (its queries carry the project filter for non-admins) do the same here: the flow-classifier
//! overlap rules, the identical-hop-list rule and the chain-classifier conflict rule compare
//! with the caller's own resources, or with all for an administrator. Uniqueness that the
//! database enforces (a port pair's ports, group and chain ids, single ownership of port pairs
//! and classifiers) is global.

pub mod flow_classifiers;
pub mod port_chains;
pub mod port_pair_groups;
pub mod port_pairs;
pub mod service_graphs;

use std::future::Future;

use axum::Router;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use sqlx::{AnyConnection, Row};

use super::AppState;
use crate::auth::Context;
use crate::db::WriteTx;
use crate::drivers::{Dispatch, Event, EventHook, TxHook};
use crate::error::ApiError;

pub use flow_classifiers::FlowClassifier;
pub use port_chains::PortChain;
pub use port_pair_groups::PortPairGroup;
pub use port_pairs::PortPair;
pub use service_graphs::ServiceGraph;

/// Longest `name` (neutron-lib `NAME_FIELD_SIZE`).
pub const NAME_MAX: usize = 255;
/// Longest `description` (neutron-lib `DESCRIPTION_FIELD_SIZE`).
pub const DESCRIPTION_MAX: usize = 255;

/// All SFC routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(port_pairs::routes())
        .merge(port_pair_groups::routes())
        .merge(flow_classifiers::routes())
        .merge(port_chains::routes())
        .merge(service_graphs::routes())
}

/// Resources per project (networking-sfc's `[QUOTAS]` options); a negative value means no
/// limit. Going over is 409 `OverQuota`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub port_pair: i64,
    pub port_pair_group: i64,
    pub flow_classifier: i64,
    pub port_chain: i64,
    pub service_graph: i64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            port_pair: 100,
            port_pair_group: 10,
            flow_classifier: 100,
            port_chain: 10,
            service_graph: 10,
        }
    }
}

/// Refuses a new `resource` row in `table` for `project` once it holds `limit` of them.
pub(crate) async fn check_quota(
    conn: &mut AnyConnection,
    table: &str,
    resource: &str,
    project: &str,
    limit: i64,
) -> Result<(), ApiError> {
    if limit < 0 {
        return Ok(());
    }
    let used: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {table} WHERE project_id = $1"
    ))
    .bind(project)
    .fetch_one(&mut *conn)
    .await?;
    if used >= limit {
        return Err(over_quota(resource));
    }
    Ok(())
}

/// 409 `OverQuota` for `resource`.
pub(crate) fn over_quota(resource: &str) -> ApiError {
    ApiError::conflict(
        "OverQuota",
        format!("Quota exceeded for resources: ['{resource}']."),
    )
}

/// One request attribute: absent, or given with any JSON value (`null` included, which
/// neutron-lib's converters treat differently from absence).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Attr {
    #[default]
    Absent,
    Given(Value),
}

impl<'de> Deserialize<'de> for Attr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only called when the key is present; `#[serde(default)]` gives `Absent` otherwise.
        Value::deserialize(d).map(Attr::Given)
    }
}

impl Attr {
    pub fn given(&self) -> Option<&Value> {
        match self {
            Attr::Absent => None,
            Attr::Given(v) => Some(v),
        }
    }

    pub fn is_given(&self) -> bool {
        matches!(self, Attr::Given(_))
    }
}

/// Neutron's text for a value in messages: strings bare, everything else as JSON.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "None".to_string(),
        other => other.to_string(),
    }
}

/// 400 for an attribute required on create.
pub(crate) fn required(attr: &str) -> ApiError {
    ApiError::bad_request(
        "HTTPBadRequest",
        format!("Failed to parse request. Required attribute '{attr}' not specified"),
    )
}

/// 400 for an attribute the API computes itself.
pub(crate) fn not_allowed_in_post(attr: &str) -> ApiError {
    ApiError::bad_request(
        "HTTPBadRequest",
        format!("Attribute '{attr}' not allowed in POST"),
    )
}

/// 400 for an attribute that can only be set on create.
pub(crate) fn read_only(attr: &str) -> ApiError {
    ApiError::bad_request(
        "HTTPBadRequest",
        format!("Cannot update read-only attribute {attr}"),
    )
}

/// `type:string` with a length bound; absent is `None`.
pub(crate) fn string(attr: &str, value: &Attr, max: usize) -> Result<Option<String>, ApiError> {
    match value.given() {
        None => Ok(None),
        Some(Value::String(s)) => {
            if s.chars().count() > max {
                return Err(ApiError::invalid_attr(
                    attr,
                    format!("'{s}' exceeds maximum length of {max}"),
                ));
            }
            Ok(Some(s.clone()))
        }
        Some(other) => Err(ApiError::invalid_attr(
            attr,
            format!("'{}' is not a valid string", show(other)),
        )),
    }
}

/// Parses a UUID the way `uuidutils.is_uuid_like` accepts it and returns its canonical form.
pub(crate) fn parse_uuid(s: &str) -> Option<String> {
    uuid::Uuid::parse_str(s.trim_matches(['{', '}']))
        .ok()
        .map(|u| u.to_string())
}

/// `type:uuid` of one JSON value.
pub(crate) fn uuid_value(attr: &str, v: &Value) -> Result<String, ApiError> {
    v.as_str()
        .and_then(parse_uuid)
        .ok_or_else(|| ApiError::invalid_attr(attr, format!("'{}' is not a valid UUID", show(v))))
}

/// `type:uuid_or_none`.
pub(crate) fn uuid_or_none(attr: &str, value: &Attr) -> Result<Option<String>, ApiError> {
    match value.given() {
        None | Some(Value::Null) => Ok(None),
        Some(v) => uuid_value(attr, v).map(Some),
    }
}

/// `convert_to_list` then `type:uuid_list`: `null` is empty, a single value is a list of one,
/// items must be UUIDs and distinct.
pub(crate) fn uuid_list(attr: &str, value: &Value) -> Result<Vec<String>, ApiError> {
    let items: Vec<&Value> = match value {
        Value::Null => Vec::new(),
        Value::Array(items) => items.iter().collect(),
        Value::String(_) => vec![value],
        other => {
            return Err(ApiError::invalid_attr(
                attr,
                format!("'{}' is not a list", show(other)),
            ))
        }
    };
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in &items {
        out.push(uuid_value(attr, item)?);
    }
    let mut sorted = out.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != out.len() {
        return Err(ApiError::invalid_attr(
            attr,
            format!(
                "Duplicate items in the list: '{}'",
                items.iter().map(|v| show(v)).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(out)
}

/// neutron-lib's `convert_to_boolean`.
pub(crate) fn boolean(v: &Value) -> Result<bool, ApiError> {
    let parsed = match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    };
    parsed.ok_or_else(|| {
        ApiError::invalid_input(format!("'{}' cannot be converted to boolean", show(v)))
    })
}

/// neutron-lib's `convert_to_int`: integers and integer strings.
pub(crate) fn integer(v: &Value) -> Result<i64, ApiError> {
    let parsed = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| ApiError::invalid_input(format!("'{}' is not an integer", show(v))))
}

/// The project a new resource belongs to, from `project_id`/`tenant_id` and the caller.
pub(crate) fn project_for_create(
    ctx: &Context,
    project_id: &Option<String>,
    tenant_id: &Option<String>,
) -> Result<String, ApiError> {
    let requested = match (project_id, tenant_id) {
        (Some(p), Some(t)) if p != t => {
            return Err(ApiError::bad_request(
                "HTTPBadRequest",
                "'project_id' and 'tenant_id' do not match",
            ))
        }
        (p, t) => p.as_deref().or(t.as_deref()),
    };
    ctx.project_for_create(requested)
}

/// The Neutron port `id` if the caller may use it (Neutron's `get_port` under the caller's
/// context: its project, its network's owner, or an administrator), `None` otherwise.
pub(crate) async fn visible_port(
    conn: &mut AnyConnection,
    ctx: &Context,
    id: &str,
) -> Result<Option<crate::api::ports::Port>, ApiError> {
    match crate::api::ports::visible_port(conn, ctx, id).await {
        Ok(port) => Ok(Some(port)),
        Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => Ok(None),
        Err(e) => Err(e),
    }
}

/// A JSON document stored in a TEXT column; a malformed one is a database failure.
pub(crate) fn json_column(row: &sqlx::any::AnyRow, column: &str) -> Result<Value, sqlx::Error> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Finishes a create: `create_*_precommit` inside the transaction, the commit, then the
/// postcommit hooks. If those fail, the new resource is deleted again through the normal
/// delete path (hooks included) and the driver's error is returned.
pub(crate) async fn commit_create<R: Deletable>(
    state: &AppState,
    ctx: &Context,
    tx: WriteTx,
    item: &R,
) -> Result<(), ApiError> {
    commit_create_all(state, ctx, tx, std::slice::from_ref(item)).await
}

/// [`commit_create`] of the resources of one bulk request: every precommit inside the one
/// transaction, one commit, then the postcommits in order; if one fails, every resource of
/// the request is deleted again (all or nothing, as Neutron's bulk create).
pub(crate) async fn commit_create_all<R: Deletable>(
    state: &AppState,
    ctx: &Context,
    mut tx: WriteTx,
    items: &[R],
) -> Result<(), ApiError> {
    for item in items {
        precommit(state, ctx, TxHook::Create, tx.conn(), item, None).await?;
    }
    tx.commit().await?;
    let events: Vec<Event<'_, R>> = items
        .iter()
        .map(|current| Event {
            current,
            original: None,
            caller: ctx,
            db: &state.db,
        })
        .collect();
    let Err(e) = state.drivers.create_postcommit_all(&events).await else {
        return Ok(());
    };
    tracing::error!(
        resource = R::KIND.name(),
        count = items.len(),
        "create postcommit failed, deleting the new resources"
    );
    for item in items.iter().rev() {
        if let Err(undo_error) = delete_resource::<R>(state, ctx, item.id()).await {
            tracing::error!(
                resource = R::KIND.name(),
                id = item.id(),
                error = %undo_error,
                "cannot delete the resource whose create postcommit failed"
            );
        }
    }
    Err(e)
}

/// Finishes an update: `update_*_precommit` inside the transaction, the commit, then the
/// postcommit hooks (whose failure is reported but not undone, as in networking-sfc).
pub(crate) async fn commit_update<R: Dispatch>(
    state: &AppState,
    ctx: &Context,
    mut tx: WriteTx,
    current: &R,
    original: &R,
) -> Result<(), ApiError> {
    precommit(
        state,
        ctx,
        TxHook::Update,
        tx.conn(),
        current,
        Some(original),
    )
    .await?;
    tx.commit().await?;
    event(
        state,
        ctx,
        EventHook::UpdatePostcommit,
        current,
        Some(original),
    )
    .await
}

/// A resource the common delete path removes: how to find it, what keeps it from going, and
/// the rows that go with it.
pub(crate) trait Deletable: Dispatch + Clone + Send + Sync {
    /// Its own table, keyed by `id`.
    const TABLE: &'static str;
    /// Rows of other tables deleted with it, `(table, id column)`.
    const DEPENDENTS: &'static [(&'static str, &'static str)];

    /// Its name and description, for [`update_names`].
    fn names_mut(&mut self) -> (&mut String, &mut String);

    /// The resource as the caller may see it, or its 404.
    fn visible(
        conn: &mut AnyConnection,
        ctx: &Context,
        id: &str,
    ) -> impl Future<Output = Result<Self, ApiError>> + Send;

    /// Refuses the delete (409) while another resource uses it.
    fn ensure_unused(
        conn: &mut AnyConnection,
        id: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
}

/// Deletes a resource with its driver hooks: the driver's `delete_*`, then one transaction with
/// the rows and `delete_*_precommit`, then `delete_*_postcommit`. The in-use check runs before
/// any driver hears of the delete (networking-sfc asks the drivers first, so a refused delete
/// would already have torn down the flows) and again inside the transaction, since the first
/// look was outside the writers' lock.
pub(crate) async fn delete_resource<R: Deletable>(
    state: &AppState,
    ctx: &Context,
    id: &str,
) -> Result<(), ApiError> {
    let found = {
        let mut conn = state.db.pool().acquire().await?;
        let found = R::visible(&mut conn, ctx, id).await?;
        R::ensure_unused(&mut conn, id).await?;
        found
    };
    event(state, ctx, EventHook::Delete, &found, None).await?;
    let mut tx = state.db.begin_write().await?;
    let found = R::visible(tx.conn(), ctx, id).await?;
    R::ensure_unused(tx.conn(), id).await?;
    for (table, column) in R::DEPENDENTS.iter().chain([&(R::TABLE, "id")]) {
        sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1"))
            .bind(id)
            .execute(tx.conn())
            .await?;
    }
    precommit(state, ctx, TxHook::Delete, tx.conn(), &found, None).await?;
    tx.commit().await?;
    event(state, ctx, EventHook::DeletePostcommit, &found, None).await
}

/// Changes the name and description (the only attributes a PUT may change on port pairs,
/// flow classifiers and service graphs) with the update hooks: one transaction with the row
/// and `update_*_precommit`, then `update_*_postcommit`. `None` keeps the stored value.
pub(crate) async fn update_names<R: Deletable>(
    state: &AppState,
    ctx: &Context,
    id: &str,
    name: Option<String>,
    description: Option<String>,
) -> Result<R, ApiError> {
    let mut tx = state.db.begin_write().await?;
    let original = R::visible(tx.conn(), ctx, id).await?;
    let mut current = original.clone();
    let (stored_name, stored_description) = current.names_mut();
    if let Some(name) = name {
        *stored_name = name;
    }
    if let Some(description) = description {
        *stored_description = description;
    }
    let (name, description) = (stored_name.clone(), stored_description.clone());
    sqlx::query(&format!(
        "UPDATE {} SET name = $1, description = $2 WHERE id = $3",
        R::TABLE
    ))
    .bind(name)
    .bind(description)
    .bind(id)
    .execute(tx.conn())
    .await?;
    commit_update(state, ctx, tx, &current, &original).await?;
    Ok(current)
}

/// Runs a hook outside the transaction (update postcommit, delete, delete postcommit).
pub(crate) async fn event<R: Dispatch>(
    state: &AppState,
    ctx: &Context,
    hook: EventHook,
    current: &R,
    original: Option<&R>,
) -> Result<(), ApiError> {
    let event = Event {
        current,
        original,
        caller: ctx,
        db: &state.db,
    };
    state.drivers.event(hook, &event).await
}

/// Runs a precommit hook inside the open transaction `conn`.
pub(crate) async fn precommit<R: Dispatch>(
    state: &AppState,
    ctx: &Context,
    hook: crate::drivers::TxHook,
    conn: &mut AnyConnection,
    current: &R,
    original: Option<&R>,
) -> Result<(), ApiError> {
    let mut pre = crate::drivers::Precommit {
        current,
        original,
        caller: ctx,
        conn,
    };
    state.drivers.precommit(hook, &mut pre).await
}

/// The lowest integer `>= from` and `< until` not in `used` (sorted ascending).
pub(crate) fn lowest_free(used: &[i64], from: i64, until: i64) -> Option<i64> {
    let mut want = from;
    for &v in used {
        if v > want {
            break;
        }
        if v == want {
            want += 1;
        }
    }
    (want < until).then_some(want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lowest_free_fills_gaps() {
        assert_eq!(lowest_free(&[], 1, 10), Some(1));
        assert_eq!(lowest_free(&[1, 2, 4], 1, 10), Some(3));
        assert_eq!(lowest_free(&[1, 2, 3], 1, 4), None);
        assert_eq!(lowest_free(&[2, 3], 1, 4), Some(1));
    }

    #[test]
    fn conversions_follow_neutron_lib() {
        assert!(boolean(&json!("True")).unwrap());
        assert!(!boolean(&json!(0)).unwrap());
        assert_eq!(boolean(&json!("abc")).unwrap_err().kind, "InvalidInput");
        assert_eq!(integer(&json!("12")).unwrap(), 12);
        assert_eq!(integer(&json!(1.5)).unwrap_err().kind, "InvalidInput");
        let id = "0b2a6a35-6c1d-4f0e-8a53-6e3fbb1d0d40";
        assert_eq!(uuid_list("x", &json!(id)).unwrap(), vec![id.to_string()]);
        assert_eq!(uuid_list("x", &json!(null)).unwrap(), Vec::<String>::new());
        assert_eq!(
            uuid_list("x", &json!([id, id])).unwrap_err().kind,
            "HTTPBadRequest"
        );
        assert_eq!(
            uuid_list("x", &json!(["nope"])).unwrap_err().kind,
            "HTTPBadRequest"
        );
        assert_eq!(parse_uuid(&id.to_uppercase()).as_deref(), Some(id));
    }
}
