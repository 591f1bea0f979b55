//! The controller: a networking-sfc compatible REST API over an embedded (SQLite) or shared
//! (PostgreSQL) database.
//!
//! Layout: [`api`] holds the HTTP resources, one module each, over [`db`]; [`auth`] turns
//! request headers into the caller's [`auth::Context`]; [`error::ApiError`] is the one place
//! where failures become Neutron's status codes and bodies.
//! [`cli`] is the `sfc` command-line client of that API.
//! [`relay`] is the endpoint relay hosts connect to (mutual TLS) and the desired-state store of
//! the VNF configuration API; [`pki`] makes certificates for it for local use.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod db;
pub mod drivers;
pub mod error;
pub mod pki;
pub mod relay;

use std::future::IntoFuture;

pub use tokio_util::sync::CancellationToken;

/// A failure that stops the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("the API server failed")]
    Serve(#[source] std::io::Error),
    #[error("cannot listen for relays")]
    RelayListen(#[source] std::io::Error),
}

/// An error and its sources on one line, for logs and the binary's last word.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Serves the API on an already bound listener until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: api::AppState,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let app = api::router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .into_future()
        .await
        .map_err(Error::Serve)
}
