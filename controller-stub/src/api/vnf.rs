//! `/v2.0/vnf/...`: the VNF configuration plugin API. Desired configuration per (instance,
//! service), its delivery status as the relay endpoint reports it, the per-instance keys that
//! authenticate the agents, and the relay hosts.
//!
//! A set stores the payload as the next version (an identical payload keeps the version) with
//! status `pending` and tells the relay endpoint through the [`Notifier`](crate::relay::Notifier),
//! which pushes it at once to a live session of that instance; the endpoint moves the status on
//! to `delivered`, `applied` or `failed` (see [`crate::relay::store`]). The agent gets the
//! compact JSON text of `payload`, or the bytes of `payload_base64`.
//!
//! A delete stops managing the service: nothing is pushed (the protocol has no removal and the
//! reference agent's handlers refuse an empty payload), the agent keeps what it applied, and a
//! later set continues with the next version, because an agent refuses versions older than the
//! one it holds. To clear a service, set the service's own empty configuration.
//!
//! Policy: a project manages the configurations of an instance it owns a port of (a port whose
//! `device_id` is the instance); an administrator manages any. Everyone else gets 404. Keys and
//! hosts are for administrators only (403).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use base64::Engine;
use relay_protocol::message::MAX_PAYLOAD;
use relay_protocol::{ServiceName, KEY_LEN};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use sqlx::AnyConnection;

use super::{deleted, many, one, parse_body, path_id, timestamp, AppState, ListQuery, Wrapped};
use crate::auth::Context;
use crate::error::ApiError;
use crate::relay::store::{self, ConfigRow, HostRow, Payload, SetOutcome};

/// Largest request body of a set: a base64 payload of [`MAX_PAYLOAD`] bytes with room for JSON
/// whitespace and escapes. Larger bodies are refused (413) before they are read whole.
const MAX_BODY: usize = 2 * MAX_PAYLOAD;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2.0/vnf/instances/{instance_id}/configs", get(list))
        .route(
            "/v2.0/vnf/instances/{instance_id}/configs/{service}",
            get(show)
                .put(set)
                .delete(remove)
                .layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .route(
            "/v2.0/vnf/instances/{instance_id}/key",
            get(show_key).post(create_key),
        )
        .route("/v2.0/vnf/hosts", get(hosts))
}

/// `{"config": {"payload": <JSON>}}` or `{"config": {"payload_base64": "..."}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSet {
    /// Present (even as `null`) or absent.
    #[serde(default, deserialize_with = "present")]
    pub payload: Option<Value>,
    #[serde(default)]
    pub payload_base64: Option<String>,
}

impl Wrapped for ConfigSet {
    const KEY: &'static str = "config";
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `{"key": {"key": "<64 hex>"}}` imports a key; an empty body or `{"key": {}}` generates one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCreate {
    #[serde(default)]
    pub key: Option<String>,
}

impl Wrapped for KeyCreate {
    const KEY: &'static str = "key";
}

fn too_large(len: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        format!("The configuration payload is {len} bytes; the limit is {MAX_PAYLOAD} bytes."),
    )
}

impl ConfigSet {
    /// The payload to store, checked: exactly one form, valid base64, within the bound.
    pub fn into_payload(self) -> Result<Payload, ApiError> {
        match (self.payload, self.payload_base64) {
            (Some(value), None) => {
                // Serialising a `Value` cannot fail: its keys are strings.
                let text = serde_json::to_string(&value).map_err(|e| {
                    ApiError::internal("InternalError", format!("cannot serialise: {e}"))
                })?;
                if text.len() > MAX_PAYLOAD {
                    return Err(too_large(text.len()));
                }
                Ok(Payload::Json(text))
            }
            (None, Some(b64)) => {
                // Base64 text four thirds the bound cannot decode to less than it.
                if b64.len() / 4 * 3 > MAX_PAYLOAD + 2 {
                    return Err(too_large(b64.len() / 4 * 3));
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&b64)
                    .map_err(|e| {
                        ApiError::invalid_input(format!(
                            "payload_base64 is not valid base64 (standard alphabet, padded): {e}"
                        ))
                    })?;
                if bytes.len() > MAX_PAYLOAD {
                    return Err(too_large(bytes.len()));
                }
                Ok(Payload::Base64(b64))
            }
            _ => Err(ApiError::invalid_input(
                "exactly one of 'payload' and 'payload_base64' is required",
            )),
        }
    }
}

/// The service path segment, as the protocol's [`ServiceName`] accepts it.
fn service_name(service: &str) -> Result<String, ApiError> {
    ServiceName::new(service)
        .map(String::from)
        .map_err(ApiError::invalid_input)
}

fn instance_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "InstanceNotFound",
        format!("Instance {id} could not be found."),
    )
}

fn config_not_found(id: &str, service: &str) -> ApiError {
    ApiError::not_found(
        "VnfConfigNotFound",
        format!("Instance {id} has no configuration for service {service}."),
    )
}

fn admin_only(ctx: &Context, action: &str) -> Result<(), ApiError> {
    if ctx.is_admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "rule:{action} is disallowed by policy"
        )))
    }
}

/// What the caller may do with an instance's configurations.
struct Access {
    /// The project new configurations belong to: the instance's port owner's, else the
    /// caller's.
    project_id: String,
    /// Whether the controller knows the instance at all (a port, a configuration, a key or a
    /// relay reporting it).
    known: bool,
}

/// The caller's access to `instance`: a non-admin must own one of its ports (else 404).
async fn access(
    conn: &mut AnyConnection,
    ctx: &Context,
    instance: &str,
) -> Result<Access, ApiError> {
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT project_id FROM ports WHERE device_id = $1 ORDER BY project_id",
    )
    .bind(instance)
    .fetch_all(&mut *conn)
    .await?;
    if !ctx.is_admin {
        return if owners.contains(&ctx.project_id) {
            Ok(Access {
                project_id: ctx.project_id.clone(),
                known: true,
            })
        } else {
            Err(instance_not_found(instance))
        };
    }
    let known = !owners.is_empty() || {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM vnf_configs WHERE instance_id = $1) \
             + (SELECT COUNT(*) FROM vnf_instance_keys WHERE instance_id = $1) \
             + (SELECT COUNT(*) FROM relay_guests WHERE instance_id = $1)",
        )
        .bind(instance)
        .fetch_one(&mut *conn)
        .await?;
        n > 0
    };
    Ok(Access {
        project_id: owners
            .into_iter()
            .next()
            .unwrap_or_else(|| ctx.project_id.clone()),
        known,
    })
}

/// The API representation of a configuration; `payload` (or `payload_base64`) only for one.
pub fn config_json(row: &ConfigRow, with_payload: bool) -> Value {
    let d = &row.delivery;
    let mut v = json!({
        "instance_id": row.instance_id,
        "service": row.service,
        "version": d.version,
        "config_id": d.config_id,
        "status": d.status.as_str(),
        "applied_version": d.applied_version,
        "message": d.message,
        "updated_at": row.updated_at,
        "project_id": row.project_id,
    });
    if with_payload {
        match &row.payload {
            Payload::Json(text) => {
                // Stored by `set` from a `Value`, so it parses; a damaged row shows as null.
                v["payload"] = serde_json::from_str(text).unwrap_or(Value::Null);
            }
            Payload::Base64(b64) => v["payload_base64"] = Value::String(b64.clone()),
        }
    }
    v
}

fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!(
                "The request body is larger than {MAX_BODY} bytes (payloads are limited to \
                 {MAX_PAYLOAD} bytes)."
            ),
        )
    } else {
        ApiError::bad_request("HTTPBadRequest", e.body_text())
    }
}

async fn list(
    State(state): State<AppState>,
    ctx: Context,
    Path(instance): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let instance = path_id("Instance", &instance)?;
    let mut conn = state.db.pool().acquire().await?;
    if !access(&mut conn, &ctx, &instance).await?.known {
        return Err(instance_not_found(&instance));
    }
    let items = store::list_configs(&mut conn, &instance)
        .await?
        .iter()
        .map(|row| config_json(row, false))
        .collect();
    Ok(many("configs", query.apply(items)))
}

async fn show(
    State(state): State<AppState>,
    ctx: Context,
    Path((instance, service)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref())?;
    let instance = path_id("Instance", &instance)?;
    let service = service_name(&service)?;
    let mut conn = state.db.pool().acquire().await?;
    if !access(&mut conn, &ctx, &instance).await?.known {
        return Err(instance_not_found(&instance));
    }
    match store::get_config(&mut conn, &instance, &service).await? {
        Some(row) if !row.deleted => Ok(one(
            StatusCode::OK,
            "config",
            query.select(config_json(&row, true)),
        )),
        _ => Err(config_not_found(&instance, &service)),
    }
}

async fn set(
    State(state): State<AppState>,
    ctx: Context,
    Path((instance, service)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let instance = path_id("Instance", &instance)?;
    let service = service_name(&service)?;
    let payload = parse_body::<ConfigSet>(&body.map_err(body_error)?)?.into_payload()?;
    let mut tx = state.db.begin_write().await?;
    let access = access(tx.conn(), &ctx, &instance).await?;
    let outcome =
        store::set_config(tx.conn(), &instance, &service, &access.project_id, &payload).await?;
    let row = store::get_config(tx.conn(), &instance, &service)
        .await?
        .ok_or_else(|| ApiError::internal("DBError", "The stored configuration vanished."))?;
    tx.commit().await?;
    if outcome == SetOutcome::NewVersion {
        if let Ok(uuid) = uuid::Uuid::parse_str(&instance) {
            state.vnf.changed(uuid);
        }
    }
    Ok(one(StatusCode::OK, "config", config_json(&row, false)))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Context,
    Path((instance, service)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let instance = path_id("Instance", &instance)?;
    let service = service_name(&service)?;
    let mut tx = state.db.begin_write().await?;
    access(tx.conn(), &ctx, &instance).await?;
    if !store::delete_config(tx.conn(), &instance, &service).await? {
        return Err(config_not_found(&instance, &service));
    }
    tx.commit().await?;
    Ok(deleted())
}

fn key_json(instance: &str, key_hex: &str, created_at: &str) -> Value {
    json!({"instance_id": instance, "key": key_hex, "created_at": created_at})
}

async fn show_key(
    State(state): State<AppState>,
    ctx: Context,
    Path(instance): Path<String>,
) -> Result<Response, ApiError> {
    admin_only(&ctx, "get_vnf_instance_key")?;
    let instance = path_id("Instance", &instance)?;
    let mut conn = state.db.pool().acquire().await?;
    match store::instance_key(&mut conn, &instance).await? {
        Some((key_hex, created_at)) => Ok(one(
            StatusCode::OK,
            "key",
            key_json(&instance, &key_hex, &created_at),
        )),
        None => Err(ApiError::not_found(
            "InstanceKeyNotFound",
            format!("Instance {instance} has no key."),
        )),
    }
}

/// The key to store: the imported one (64 hex digits, kept lowercase) or a fresh random one.
fn new_key(body: &[u8]) -> Result<String, ApiError> {
    let imported = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        parse_body::<KeyCreate>(body)?.key
    };
    match imported {
        Some(hex_key) => {
            let valid =
                hex_key.len() == KEY_LEN * 2 && hex_key.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid {
                return Err(ApiError::invalid_input(format!(
                    "key must be {} hexadecimal digits ({KEY_LEN} bytes)",
                    KEY_LEN * 2
                )));
            }
            Ok(hex_key.to_ascii_lowercase())
        }
        None => {
            let mut key = [0u8; KEY_LEN];
            getrandom::fill(&mut key).map_err(|e| {
                ApiError::internal("InternalError", format!("no randomness for a key: {e}"))
            })?;
            Ok(hex::encode(key))
        }
    }
}

async fn create_key(
    State(state): State<AppState>,
    ctx: Context,
    Path(instance): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    admin_only(&ctx, "create_vnf_instance_key")?;
    let instance = path_id("Instance", &instance)?;
    let key_hex = new_key(&body.map_err(body_error)?)?;
    let mut tx = state.db.begin_write().await?;
    if store::instance_key(tx.conn(), &instance).await?.is_some() {
        return Err(ApiError::conflict(
            "InstanceKeyExists",
            format!("Instance {instance} already has a key."),
        ));
    }
    let created_at = timestamp();
    store::insert_instance_key(tx.conn(), &instance, &key_hex, &created_at).await?;
    tx.commit().await?;
    if let Ok(uuid) = uuid::Uuid::parse_str(&instance) {
        // A guest that was refused for want of a key can start its session now.
        state.vnf.changed(uuid);
    }
    Ok(one(
        StatusCode::CREATED,
        "key",
        key_json(&instance, &key_hex, &created_at),
    ))
}

fn host_json(h: &HostRow) -> Value {
    json!({
        "host": h.host,
        "connected": h.connected,
        "relay_version": h.relay_version,
        "peer_address": h.peer_address,
        "connected_at": h.connected_at,
        "last_seen": h.last_seen,
        "guests": h.guests.iter().map(|g| json!({
            "instance_id": g.instance_id,
            "name": g.name,
            "since": g.since,
        })).collect::<Vec<_>>(),
    })
}

async fn hosts(
    State(state): State<AppState>,
    ctx: Context,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    admin_only(&ctx, "get_vnf_hosts")?;
    let query = ListQuery::parse(query.as_deref())?;
    let mut conn = state.db.pool().acquire().await?;
    let items = store::list_hosts(&mut conn)
        .await?
        .iter()
        .map(host_json)
        .collect();
    Ok(many("hosts", query.apply(items)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(body: Value) -> Result<Payload, ApiError> {
        parse_body::<ConfigSet>(body.to_string().as_bytes())?.into_payload()
    }

    #[test]
    fn a_json_payload_is_stored_as_compact_text() {
        let p = set(json!({"config": {"payload": {"rules": [1, 2]}}})).unwrap();
        assert_eq!(p, Payload::Json(r#"{"rules":[1,2]}"#.into()));
        assert_eq!(
            set(json!({"config": {"payload": null}})).unwrap(),
            Payload::Json("null".into())
        );
    }

    #[test]
    fn exactly_one_payload_form_is_accepted() {
        let both = set(json!({"config": {"payload": 1, "payload_base64": "AA=="}}));
        assert_eq!(both.unwrap_err().status, StatusCode::BAD_REQUEST);
        let neither = set(json!({"config": {}}));
        assert_eq!(neither.unwrap_err().status, StatusCode::BAD_REQUEST);
        let unknown = set(json!({"config": {"payload": 1, "version": 3}}));
        assert_eq!(unknown.unwrap_err().status, StatusCode::BAD_REQUEST);
        let bad = set(json!({"config": {"payload_base64": "not base64!"}}));
        assert_eq!(bad.unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn payloads_over_the_protocol_bound_are_413() {
        let big = "x".repeat(MAX_PAYLOAD);
        let e = set(json!({"config": {"payload": big}})).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let b64 = base64::engine::general_purpose::STANDARD.encode(vec![0u8; MAX_PAYLOAD + 1]);
        let e = set(json!({"config": {"payload_base64": b64}})).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let b64 = base64::engine::general_purpose::STANDARD.encode(vec![0u8; MAX_PAYLOAD]);
        assert!(set(json!({"config": {"payload_base64": b64}})).is_ok());
    }

    #[test]
    fn service_names_follow_the_protocol() {
        for ok in ["firewall", "loadbalancer", "vpn", "files", "acme.waf-2"] {
            assert!(service_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Firewall", "-x", "a b", &"x".repeat(65)] {
            assert_eq!(
                service_name(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn imported_keys_are_64_hex_digits() {
        let k = "AB".repeat(32);
        let body = json!({"key": {"key": k}}).to_string();
        assert_eq!(new_key(body.as_bytes()).unwrap(), "ab".repeat(32));
        for bad in [
            "ab".repeat(31),
            "zz".repeat(32),
            format!(" {}", "ab".repeat(32)),
        ] {
            let body = json!({"key": {"key": bad}}).to_string();
            assert_eq!(
                new_key(body.as_bytes()).unwrap_err().status,
                StatusCode::BAD_REQUEST
            );
        }
        let generated = new_key(b"").unwrap();
        assert_eq!(generated.len(), 64);
        assert_ne!(generated, new_key(b"").unwrap());
    }
}
