//! `GET /v2.0/sfc/port_chains/{id}/status`: where the OVS driver's rules of a chain stand on
//! each host, as the hosts' relays reported them. A sub-resource rather than extra attributes
//! on the chain, so that the chain's own representation stays exactly networking-sfc's.
//!
//! Body: `{"port_chain_status": {"id", "hosts": [{"host", "version", "state", "detail",
//! "flows", "groups", "updated_at"}]}}` with `state` one of `sent` (no report yet for this
//! version), `installed`, `pending` (detail: the missing ports), `rejected` or `failed`
//! (detail: the host's reason).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::json;
use sqlx::Row;

use crate::api::sfc::port_chains::visible_port_chain;
use crate::api::AppState;
use crate::auth::Context;
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v2.0/sfc/port_chains/{id}/status", get(show))
}

async fn show(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut conn = state.db.pool().acquire().await?;
    let chain = visible_port_chain(&mut conn, &ctx, &id).await?;
    let rows = sqlx::query(
        "SELECT host, version, state, detail, flows, groups, updated_at \
         FROM sfc_ovs_chain_hosts WHERE portchain_id = $1 ORDER BY host",
    )
    .bind(&chain.id)
    .fetch_all(&mut *conn)
    .await?;
    let mut hosts = Vec::with_capacity(rows.len());
    for r in rows {
        hosts.push(json!({
            "host": r.try_get::<String, _>("host")?,
            "version": r.try_get::<i64, _>("version")?,
            "state": r.try_get::<String, _>("state")?,
            "detail": r.try_get::<String, _>("detail")?,
            "flows": r.try_get::<i64, _>("flows")?,
            "groups": r.try_get::<i64, _>("groups")?,
            "updated_at": r.try_get::<String, _>("updated_at")?,
        }));
    }
    Ok(crate::api::one(
        StatusCode::OK,
        "port_chain_status",
        json!({"id": chain.id, "hosts": hosts}),
    ))
}
