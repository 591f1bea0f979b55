//! Who is calling: the request context every handler gets.
//!
//! Two modes, as Neutron has:
//! - `noauth` (local use): the project comes from the `X-Project-Id` header (or the older
//!   `X-Tenant-Id`), roles from `X-Roles`, as oslo.context reads them behind Neutron's noauth
//!   pipeline. A request without a project header is an administrator's, in the project named
//!   by `noauth_project` (default `admin`), so that an unconfigured stock client works.
//! - `token`: `X-Auth-Token` must be one of the tokens in the configured tokens file, which
//!   gives the project and roles; anything else is 401.
//!
//! A project sees and changes only its own resources (others' are 404, as in Neutron); an
//! administrator sees all.

use std::collections::HashMap;
use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::api::AppState;
use crate::error::ApiError;

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The caller's project; resources it creates belong to it unless an admin names another.
    pub project_id: String,
    pub is_admin: bool,
}

impl Context {
    pub fn admin(project_id: impl Into<String>) -> Self {
        Self {
            project_id: project_id.into(),
            is_admin: true,
        }
    }

    pub fn project(project_id: impl Into<String>) -> Self {
        Self {
            project_id: project_id.into(),
            is_admin: false,
        }
    }

    /// Whether a resource of `owner` is visible to (and changeable by) this caller:
    /// Neutron's `admin_or_owner`.
    pub fn owns(&self, owner: &str) -> bool {
        self.is_admin || self.project_id == owner
    }

    /// The project a new resource belongs to: the caller's, or for an admin the one named in
    /// the body. A non-admin naming another project is refused, as Neutron does.
    pub fn project_for_create(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match requested {
            None => Ok(self.project_id.clone()),
            Some(p) if p == self.project_id || self.is_admin => Ok(p.to_string()),
            Some(_) => Err(ApiError::bad_request(
                "HTTPBadRequest",
                "Specifying 'project_id' or 'tenant_id' other than the authenticated project in request requires admin privileges",
            )),
        }
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    NoAuth { default_project: String },
    Token(TokenTable),
}

/// The tokens file of token mode, held as SHA-256 digests of the tokens.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    by_digest: HashMap<[u8; 32], Context>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    /// The token itself, or ...
    token: Option<String>,
    /// ... its SHA-256 in hex, so the file need not hold the secret.
    sha256: Option<String>,
    project_id: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the tokens file {0}")]
    Read(String, #[source] std::io::Error),
    #[error("invalid tokens file {0}")]
    Parse(String, #[source] toml::de::Error),
    #[error(
        "tokens file {0}: entry {1} needs exactly one of `token` and `sha256` (64 hex digits)"
    )]
    Entry(String, usize),
}

impl TokenTable {
    /// Reads a TOML file of `[[token]]` entries (`token` or `sha256`, `project_id`, `roles`).
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TokensError::Read(name.clone(), e))?;
        let file: TokensFile =
            toml::from_str(&text).map_err(|e| TokensError::Parse(name.clone(), e))?;
        let mut table = TokenTable::default();
        for (i, entry) in file.token.into_iter().enumerate() {
            let digest = match (&entry.token, &entry.sha256) {
                (Some(t), None) if !t.is_empty() => Sha256::digest(t.as_bytes()).into(),
                (None, Some(h)) => {
                    let mut d = [0u8; 32];
                    hex::decode_to_slice(h, &mut d)
                        .map_err(|_| TokensError::Entry(name.clone(), i + 1))?;
                    d
                }
                _ => return Err(TokensError::Entry(name, i + 1)),
            };
            let is_admin = entry.roles.iter().any(|r| r == "admin");
            table.by_digest.insert(
                digest,
                Context {
                    project_id: entry.project_id,
                    is_admin,
                },
            );
        }
        Ok(table)
    }

    pub fn insert(&mut self, token: &str, context: Context) {
        self.by_digest
            .insert(Sha256::digest(token.as_bytes()).into(), context);
    }

    fn lookup(&self, token: &str) -> Option<&Context> {
        self.by_digest
            .get(&<[u8; 32]>::from(Sha256::digest(token.as_bytes())))
    }
}

impl Auth {
    /// The context of a request with these headers.
    pub fn context(&self, headers: &axum::http::HeaderMap) -> Result<Context, ApiError> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        match self {
            Auth::NoAuth { default_project } => {
                let project = header("x-project-id").or_else(|| header("x-tenant-id"));
                let roles_admin = header("x-roles")
                    .map(|r| r.split(',').any(|r| r.trim().eq_ignore_ascii_case("admin")))
                    .unwrap_or(false);
                Ok(match project {
                    Some(p) => Context {
                        project_id: p.to_string(),
                        is_admin: roles_admin,
                    },
                    None => Context::admin(default_project.clone()),
                })
            }
            Auth::Token(table) => {
                let token = header("x-auth-token")
                    .ok_or_else(|| ApiError::unauthorized("Authentication required"))?;
                table.lookup(token).cloned().ok_or_else(|| {
                    ApiError::unauthorized("The request you have made requires authentication.")
                })
            }
        }
    }
}

impl FromRequestParts<AppState> for Context {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state.auth.context(&parts.headers)
    }
}
