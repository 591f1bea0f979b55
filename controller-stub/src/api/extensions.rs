//! `/v2.0/extensions`: the API extensions this controller implements, by Neutron alias.
//!
//! Clients probe these before using optional attributes (the OpenStack client looks up
//! `tag-ports-during-bulk-creation` on every `port create`), and a missing collection makes
//! them fail outright, so the list is served even though it never changes. It names only what
//! the resources really do: each alias below corresponds to attributes and rules implemented
//! in the resource modules.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::{many, one, AppState};
use crate::error::ApiError;

/// (alias, name, description).
const EXTENSIONS: &[(&str, &str, &str)] = &[
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external application"),
    ("port-security", "Port Security", "Provides port security"),
    ("allowed-address-pairs", "Allowed Address Pairs", "Provides allowed address pairs"),
    ("project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled."),
    ("provider", "Provider Network", "Expose mapping of virtual networks to physical networks"),
    ("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    ("standard-attr-description", "standard-attr-description", "Extension to add descriptions to standard attributes"),
    ("standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes."),
    ("standard-attr-revisions", "Resource revision numbers", "This extension will display the revision number of neutron resources."),
    ("tag-ports-during-bulk-creation", "Tag Ports During Bulk Creation", "Allow to tag ports during bulk creation"),
    ("sfc", "Port Chain", "Port Chain Extension."),
    ("flow_classifier", "Flow Classifier", "Flow Classifier Extension."),
    ("service_graph", "Service Graph", "Service Graph extension to support chaining of Port Chains."),
    ("networking-sfc-tap", "Networking SFC Tap", "Extension for Tap Port Pair Groups."),
];

/// When the extensions were last changed, in Neutron's format.
const UPDATED: &str = "2026-01-01T00:00:00-00:00";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2.0/extensions", get(list))
        .route("/v2.0/extensions/{alias}", get(show))
}

fn render(&(alias, name, description): &(&str, &str, &str)) -> Value {
    json!({
        "alias": alias,
        "name": name,
        "description": description,
        "updated": UPDATED,
        "links": [],
    })
}

async fn list() -> Response {
    many("extensions", EXTENSIONS.iter().map(render).collect())
}

async fn show(Path(alias): Path<String>) -> Result<Response, ApiError> {
    EXTENSIONS
        .iter()
        .find(|(a, _, _)| *a == alias)
        .map(|e| one(StatusCode::OK, "extension", render(e)))
        .ok_or_else(|| {
            ApiError::not_found(
                "HTTPNotFound",
                format!("Extension with alias {alias} does not exist"),
            )
        })
}
