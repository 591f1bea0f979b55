//! API errors, rendered exactly as Neutron renders them:
//! `{"NeutronError": {"type": ..., "message": ..., "detail": ""}}` with the status code that
//! neutron-lib's `FAULT_MAP` gives the exception class (NotFound 404, Conflict/InUse 409,
//! BadRequest/InvalidInput 400, anything else 500).
//!
//! Handlers return `Result<_, ApiError>`; the mapping to a status happens here and nowhere else.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// One API failure: the HTTP status, Neutron's exception class name (`type`) and its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// Neutron's exception class name, e.g. `PortPairInUse`.
    pub kind: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: kind.into(),
            message: message.into(),
        }
    }

    /// 400, for `BadRequest` and `InvalidInput` subclasses.
    pub fn bad_request(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, message)
    }

    /// 400 `InvalidInput`, with Neutron's message prefix.
    pub fn invalid_input(message: impl std::fmt::Display) -> Self {
        Self::bad_request(
            "InvalidInput",
            format!("Invalid input for operation: {message}."),
        )
    }

    /// 400 for an attribute that fails validation in the API layer, worded as Neutron's
    /// attribute validators word it.
    pub fn invalid_attr(attr: &str, reason: impl std::fmt::Display) -> Self {
        Self::bad_request(
            "HTTPBadRequest",
            format!("Invalid input for {attr}. Reason: {reason}."),
        )
    }

    /// 404, for `NotFound` subclasses.
    pub fn not_found(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, kind, message)
    }

    /// 409, for `Conflict` and `InUse` subclasses (and quota overruns).
    pub fn conflict(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, kind, message)
    }

    /// 401: no or unknown credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "NotAuthorized", message)
    }

    /// 403: known caller, action not allowed by policy.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "PolicyNotAuthorized", message)
    }

    /// 500, for exceptions neutron-lib does not map (driver errors, database failures).
    pub fn internal(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, kind, message)
    }

    /// The response body Neutron sends.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "NeutronError": {
                "type": self.kind,
                "message": self.message,
                "detail": "",
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(kind = %self.kind, "{}", self.message);
        }
        (self.status, Json(self.body())).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // The caller never sees SQL; the log has the chain.
        tracing::error!(error = %crate::error_chain(&e), "database error");
        ApiError::internal("DBError", "The database failed to carry out the request.")
    }
}
