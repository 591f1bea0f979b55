//! The REST API: Neutron's `/v2.0/...` resources and networking-sfc's `/v2.0/sfc/...`.
//!
//! Every resource module follows one shape: request bodies are typed structs
//! (`#[serde(deny_unknown_fields)]`) read by [`Body`], which checks the singular wrapper key and
//! turns serde's complaint into Neutron's 400; the handler checks policy through the
//! [`Context`](crate::auth::Context) and calls a plain function on the database; responses
//! are JSON objects wrapped in the singular key (one) or the plural key (lists), and lists
//! honour `fields` and attribute filters through [`ListQuery`].

pub mod extensions;
pub mod networks;
pub mod ports;
pub mod sfc;
pub mod subnets;
pub mod vnf;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::auth::Auth;
use crate::db::Db;
use crate::error::ApiError;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub db: Db,
    pub auth: Auth,
    /// The drivers every SFC write calls (`crate::drivers`).
    pub drivers: crate::drivers::DriverManager,
    /// Per-project limits of the SFC resources.
    pub quotas: sfc::Quotas,
    /// Tells the relay endpoint that an instance's desired VNF configuration changed.
    pub vnf: crate::relay::Notifier,
}

impl AppState {
    /// The state with the default drivers (`logging`) and networking-sfc's default quotas.
    pub fn new(db: Db, auth: Auth) -> Self {
        AppState {
            db,
            auth,
            drivers: crate::drivers::DriverManager::default_drivers(),
            quotas: sfc::Quotas::default(),
            vnf: crate::relay::Notifier::default(),
        }
    }

    pub fn with_drivers(mut self, drivers: crate::drivers::DriverManager) -> Self {
        self.drivers = drivers;
        self
    }

    pub fn with_quotas(mut self, quotas: sfc::Quotas) -> Self {
        self.quotas = quotas;
        self
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(versions))
        .route("/v2.0", get(extensions_root))
        .merge(networks::routes())
        .merge(extensions::routes())
        .merge(subnets::routes())
        .merge(ports::routes())
        .merge(sfc::routes())
        .merge(crate::drivers::ovs::status::routes())
        .merge(vnf::routes())
        .fallback(not_found)
        .with_state(state)
}

/// `GET /`: the version document clients use for discovery.
async fn versions() -> Json<Value> {
    Json(serde_json::json!({
        "versions": [{
            "id": "v2.0",
            "status": "CURRENT",
            "links": [{"rel": "self", "href": "/v2.0/"}],
        }]
    }))
}

/// `GET /v2.0`: the resource collections.
async fn extensions_root() -> Json<Value> {
    let names = [
        "networks",
        "subnets",
        "ports",
        "port_pairs",
        "port_pair_groups",
        "flow_classifiers",
        "port_chains",
        "service_graphs",
    ];
    let resources: Vec<Value> = names
        .iter()
        .map(|n| serde_json::json!({"name": n.trim_end_matches('s'), "collection": n, "links": []}))
        .collect();
    Json(serde_json::json!({ "resources": resources }))
}

async fn not_found() -> ApiError {
    ApiError::not_found("HTTPNotFound", "The resource could not be found.")
}

/// A request body `{"<key>": {...}}` whose inner object deserialises into `T`.
///
/// Errors are Neutron's: a body that is not JSON, lacks the key or has an attribute `T` does
/// not know is a 400 naming the problem.
#[derive(Debug)]
pub struct Body<T>(pub T);

/// A request's body (within axum's size limit), or 400.
async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|e| ApiError::bad_request("HTTPBadRequest", e.body_text()))
}

/// The singular key a body type is wrapped in.
pub trait Wrapped {
    const KEY: &'static str;
}

impl<S, T> FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Wrapped,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        parse_body(&body_bytes(req, state).await?).map(Body)
    }
}

/// A body that may be Neutron's bulk form: `{"<plural>": [{...}, ...]}` as well as the
/// singular `{"<singular>": {...}}`. A bulk create is one transaction: all or nothing.
#[derive(Debug)]
pub enum BulkBody<T> {
    One(T),
    Many(Vec<T>),
}

/// A body type that may come in bulk, under its plural key.
pub trait Plural: Wrapped {
    const PLURAL: &'static str;
}

/// The most items one bulk request may carry.
pub const MAX_BULK: usize = 1000;

impl<S, T> FromRequest<S> for BulkBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Plural,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        parse_bulk_body(&body_bytes(req, state).await?)
    }
}

/// Parses a singular or bulk body; the work of [`BulkBody`].
pub fn parse_bulk_body<T: DeserializeOwned + Plural>(
    bytes: &[u8],
) -> Result<BulkBody<T>, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request("HTTPBadRequest", format!("Malformed request body: {e}"))
    })?;
    let Some(items) = value.get(T::PLURAL) else {
        return parse_body(bytes).map(BulkBody::One);
    };
    if value.as_object().map_or(0, |o| o.len()) != 1 {
        return Err(ApiError::bad_request(
            "HTTPBadRequest",
            format!("A bulk request holds '{}' and nothing else", T::PLURAL),
        ));
    }
    let Value::Array(items) = items else {
        return Err(ApiError::bad_request(
            "HTTPBadRequest",
            format!("Body contains invalid data: '{}' is not a list", T::PLURAL),
        ));
    };
    if items.is_empty() || items.len() > MAX_BULK {
        return Err(ApiError::bad_request(
            "HTTPBadRequest",
            format!(
                "A bulk request holds 1 to {MAX_BULK} '{}', not {}",
                T::PLURAL,
                items.len()
            ),
        ));
    }
    items
        .iter()
        .map(|item| {
            if !item.is_object() {
                return Err(ApiError::bad_request(
                    "HTTPBadRequest",
                    format!(
                        "Body contains invalid data: an item of '{}' is not a JSON object",
                        T::PLURAL
                    ),
                ));
            }
            serde_path_to_error::deserialize(item).map_err(|e| body_error(T::KEY, e))
        })
        .collect::<Result<Vec<T>, ApiError>>()
        .map(BulkBody::Many)
}

/// Parses a wrapped body; the work of [`Body`], usable without a request.
pub fn parse_body<T: DeserializeOwned + Wrapped>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request("HTTPBadRequest", format!("Malformed request body: {e}"))
    })?;
    let Value::Object(mut outer) = value else {
        return Err(ApiError::bad_request(
            "HTTPBadRequest",
            "Malformed request body: not a JSON object",
        ));
    };
    let inner = outer.remove(T::KEY).ok_or_else(|| {
        ApiError::bad_request(
            "HTTPBadRequest",
            format!("Unable to find '{}' in request body", T::KEY),
        )
    })?;
    if !inner.is_object() {
        return Err(ApiError::bad_request(
            "HTTPBadRequest",
            format!(
                "Body contains invalid data: '{}' is not a JSON object",
                T::KEY
            ),
        ));
    }
    serde_path_to_error::deserialize(inner).map_err(|e| body_error(T::KEY, e))
}

fn body_error(key: &str, e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = e.inner().to_string();
    // serde's "unknown field `x`, expected one of ..." is Neutron's unrecognized attribute.
    if let Some(rest) = inner.strip_prefix("unknown field `") {
        if let Some(name) = rest.split('`').next() {
            return ApiError::bad_request(
                "HTTPBadRequest",
                format!("Unrecognized attribute(s) '{name}'"),
            );
        }
    }
    let path = e.path().to_string();
    if path.is_empty() || path == "." {
        ApiError::invalid_input(format!("{key}: {inner}"))
    } else {
        ApiError::invalid_input(format!("Invalid data for attribute '{path}': {inner}"))
    }
}

/// A `GET` on a collection: `fields=a&fields=b` selects attributes, any other key filters on
/// that attribute (several values of one key: any of them). Neutron's paging and sorting keys
/// are accepted and applied.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub fields: Vec<String>,
    pub filters: Vec<(String, Vec<String>)>,
    pub limit: Option<usize>,
    pub marker: Option<String>,
    pub sort: Vec<(String, bool)>,
}

impl ListQuery {
    /// Parses a query string (`a=1&b=2`, percent-encoded).
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut q = ListQuery::default();
        let mut sort_keys = Vec::new();
        let mut sort_dirs = Vec::new();
        for (k, v) in form_pairs(query.unwrap_or("")) {
            match k.as_str() {
                "fields" => q.fields.extend(v.split(',').map(str::to_string).filter(|s| !s.is_empty())),
                "limit" => {
                    let n: usize = v.parse().map_err(|_| {
                        ApiError::bad_request("BadRequest", format!("Bad limit request: Limit must be an integer 0 or greater and not '{v}'."))
                    })?;
                    q.limit = (n > 0).then_some(n);
                }
                "marker" => q.marker = Some(v),
                "sort_key" => sort_keys.push(v),
                "sort_dir" => match v.as_str() {
                    "asc" => sort_dirs.push(true),
                    "desc" => sort_dirs.push(false),
                    _ => {
                        return Err(ApiError::bad_request(
                            "BadRequest",
                            format!("Bad sort_dir request: Sort direction specified '{v}' is invalid. Acceptable values are asc and desc."),
                        ))
                    }
                },
                "page_reverse" => {}
                _ => match q.filters.iter_mut().find(|(name, _)| *name == k) {
                    Some((_, values)) => values.push(v),
                    None => q.filters.push((k, vec![v])),
                },
            }
        }
        q.sort = sort_keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k, sort_dirs.get(i).copied().unwrap_or(true)))
            .collect();
        Ok(q)
    }

    /// Applies filters, sorting, paging and field selection to the rendered resources.
    pub fn apply(&self, items: Vec<Value>) -> Vec<Value> {
        let mut items: Vec<Value> = items
            .into_iter()
            .filter(|item| self.matches(item))
            .collect();
        for (key, asc) in self.sort.iter().rev() {
            items.sort_by(|a, b| {
                let (a, b) = (sort_text(a.get(key)), sort_text(b.get(key)));
                if *asc {
                    a.cmp(&b)
                } else {
                    b.cmp(&a)
                }
            });
        }
        if let Some(marker) = &self.marker {
            if let Some(pos) = items
                .iter()
                .position(|i| i.get("id").and_then(Value::as_str) == Some(marker))
            {
                items.drain(..=pos);
            }
        }
        if let Some(limit) = self.limit {
            items.truncate(limit);
        }
        items.into_iter().map(|item| self.select(item)).collect()
    }

    fn matches(&self, item: &Value) -> bool {
        self.filters.iter().all(|(name, wanted)| {
            // Neutron filters `tenant_id` and `project_id` as the same attribute.
            let value = item.get(name.as_str());
            match value {
                // An attribute this resource does not have filters nothing out, as Neutron
                // ignores unknown filters.
                None => true,
                Some(Value::Array(list)) => wanted
                    .iter()
                    .any(|w| list.iter().any(|v| scalar_matches(v, w))),
                Some(v) => wanted.iter().any(|w| scalar_matches(v, w)),
            }
        })
    }

    /// Keeps only the requested fields (all of them without `fields`).
    pub fn select(&self, item: Value) -> Value {
        if self.fields.is_empty() {
            return item;
        }
        match item {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .filter(|(k, _)| self.fields.iter().any(|f| f == k))
                    .collect::<Map<String, Value>>(),
            ),
            other => other,
        }
    }
}

fn scalar_matches(value: &Value, wanted: &str) -> bool {
    match value {
        Value::String(s) => s == wanted,
        Value::Bool(b) => wanted.eq_ignore_ascii_case(if *b { "true" } else { "false" }),
        Value::Number(n) => n.to_string() == wanted,
        Value::Null => wanted.is_empty() || wanted.eq_ignore_ascii_case("none"),
        _ => false,
    }
}

fn sort_text(v: Option<&Value>) -> (u8, String, i64) {
    match v {
        Some(Value::Number(n)) => (0, String::new(), n.as_i64().unwrap_or_default()),
        Some(Value::String(s)) => (1, s.clone(), 0),
        Some(other) => (2, other.to_string(), 0),
        None => (3, String::new(), 0),
    }
}

/// `application/x-www-form-urlencoded` pairs, percent-decoded.
fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `{"<singular>": item}` with a status.
pub fn one(status: StatusCode, key: &str, item: Value) -> Response {
    let mut map = Map::new();
    map.insert(key.to_string(), item);
    (status, Json(Value::Object(map))).into_response()
}

/// `{"<plural>": [items]}`.
pub fn many(key: &str, items: Vec<Value>) -> Response {
    let mut map = Map::new();
    map.insert(key.to_string(), Value::Array(items));
    Json(Value::Object(map)).into_response()
}

/// `201 Created` with `{"<plural>": [items]}`, for bulk creates.
pub fn created_many(key: &str, items: Vec<Value>) -> Response {
    let mut map = Map::new();
    map.insert(key.to_string(), Value::Array(items));
    (StatusCode::CREATED, Json(Value::Object(map))).into_response()
}

/// `204 No Content`, for deletes.
pub fn deleted() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Current time as Neutron prints it (`2026-11-21T06:42:29Z`).
pub fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (days, secs) = ((now / 86_400) as i64, now % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Parses a path id as a UUID; anything else cannot name a resource (404 as Neutron).
pub fn path_id(kind: &str, id: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| {
            ApiError::not_found(
                format!("{kind}NotFound"),
                format!("{kind} {id} could not be found."),
            )
        })
}
