//! `sfc`, the command-line client of the controller, in the style of the neutron CLI that the
//! networking-sfc workflow is written for (`port-pair-create --ingress p1 --egress p2 PP1`).
//!
//! One command runs in three steps, each in its own module: [`args`] is the clap grammar;
//! [`plan`] turns the parsed arguments into the HTTP calls to make and the shape of their
//! answer, resolving every resource the user named through a [`plan::Resolve`] (the real one is
//! the [`client::Client`], which looks names up with a `GET ...?name=` like neutronclient; unit
//! tests use a table); [`client`] makes the calls and turns Neutron's error bodies into
//! [`CliError`]; [`table`] renders the answer as Field|Value and list tables for people, or
//! `--json` prints the response object (or list) for scripts. The library never prints: the
//! `sfc` binary prints the [`Output`] and maps a [`CliError`] to its exit code.

pub mod args;
pub mod client;
pub mod plan;
pub mod table;

pub use args::{Args, Command};
use client::Client;
use plan::{Plan, Shape};
use serde_json::Value;

/// What a successful command prints on standard output.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Text for people: a table or a one-line message.
    Text(String),
    /// `--json`: the response object or list, for scripts.
    Json(Value),
    /// Nothing to print (e.g. a delete with `--json`).
    Nothing,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad option value the parser could not catch (e.g. `--source-port 1-2`).
    #[error("{0}")]
    Usage(String),
    /// The server refused the request; `kind` is Neutron's exception class when it sent one.
    #[error("{}", server_message(.kind.as_deref(), .message))]
    Server {
        status: u16,
        kind: Option<String>,
        message: String,
    },
    #[error("Unable to find {resource} with name or id '{name}'")]
    NotFound { resource: String, name: String },
    #[error("Multiple {resource} matches found for name '{name}', use an ID to be more specific.")]
    Ambiguous { resource: String, name: String },
    /// Several deletes were asked for and one failed after others succeeded.
    #[error("{}unable to delete {resource} '{failed}'", deleted_prefix(.resource, .deleted))]
    PartialDelete {
        resource: String,
        deleted: Vec<String>,
        failed: String,
        #[source]
        source: Box<CliError>,
    },
    #[error("cannot reach the controller at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the request to the controller failed")]
    Http(#[source] reqwest::Error),
    #[error("unexpected answer from the controller: {0}")]
    BadResponse(String),
    #[error("cannot read {path}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

fn server_message(kind: Option<&str>, message: &str) -> String {
    match kind {
        Some(k) if !k.is_empty() => format!("{k}: {message}"),
        _ => message.to_string(),
    }
}

fn deleted_prefix(resource: &str, deleted: &[String]) -> String {
    if deleted.is_empty() {
        String::new()
    } else {
        format!("Deleted {resource}(s): {}; ", deleted.join(", "))
    }
}

impl CliError {
    /// The process exit code: 2 for usage errors (as clap's own), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Runs one command to completion on a current-thread runtime: the binary's entry point.
pub fn run(args: Args) -> Result<Output, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(execute(args))
}

/// Runs one command; usable from async code (tests drive it against an in-process server).
pub async fn execute(args: Args) -> Result<Output, CliError> {
    let client = Client::new(&args.url, args.project.clone(), args.token.clone())?;
    let plan = plan::plan(&args.command, &args.fields, &client).await?;
    let response = perform(&client, &plan).await?;
    Ok(render(&plan.shape, response, args.json, &args.fields))
}

/// Makes the plan's calls in order; the answer of the last one is the command's.
async fn perform(client: &Client, plan: &Plan) -> Result<Option<Value>, CliError> {
    let mut last = None;
    for (i, call) in plan.calls.iter().enumerate() {
        match client.send(call).await {
            Ok(v) => last = v,
            Err(e) => {
                return Err(match &plan.shape {
                    // Every name was resolved before the first delete, so only a refusal of
                    // the server (e.g. in use) stops the run half-way; say what is gone.
                    Shape::Deleted { resource, labels } if plan.calls.len() > 1 => {
                        CliError::PartialDelete {
                            resource: resource.clone(),
                            deleted: labels[..i].to_vec(),
                            failed: labels.get(i).cloned().unwrap_or_default(),
                            source: Box::new(e),
                        }
                    }
                    _ => e,
                });
            }
        }
    }
    Ok(last)
}

/// Turns the last answer into what to print.
fn render(shape: &Shape, response: Option<Value>, json: bool, fields: &[String]) -> Output {
    let response = response.unwrap_or(Value::Null);
    match shape {
        Shape::Object { key, heading } => {
            let object = table::select_fields(&response[*key], fields);
            if json {
                Output::Json(object)
            } else {
                let mut text = heading.clone().map(|h| h + "\n").unwrap_or_default();
                text.push_str(&table::object_table(&object));
                Output::Text(text)
            }
        }
        Shape::List { key, columns } => {
            let items = response[*key].clone();
            if json {
                Output::Json(items)
            } else {
                let items = items.as_array().cloned().unwrap_or_default();
                Output::Text(table::list_table(&items, columns, fields))
            }
        }
        Shape::Updated { key, message } => {
            if json {
                Output::Json(table::select_fields(&response[*key], fields))
            } else {
                Output::Text(message.clone())
            }
        }
        Shape::Deleted { resource, labels } => {
            if json {
                Output::Nothing
            } else {
                Output::Text(format!("Deleted {resource}(s): {}", labels.join(", ")))
            }
        }
        Shape::Done(message) => {
            if json {
                Output::Nothing
            } else {
                Output::Text(message.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn error_messages_read_like_neutronclient() {
        let e = CliError::Server {
            status: 409,
            kind: Some("PortPairInUse".into()),
            message: "Port Pair 1 is in use.".into(),
        };
        assert_eq!(e.to_string(), "PortPairInUse: Port Pair 1 is in use.");
        assert_eq!(e.exit_code(), 1);
        let e = CliError::NotFound {
            resource: "port".into(),
            name: "x".into(),
        };
        assert_eq!(e.to_string(), "Unable to find port with name or id 'x'");
        let e = CliError::Ambiguous {
            resource: "port".into(),
            name: "x".into(),
        };
        assert_eq!(
            e.to_string(),
            "Multiple port matches found for name 'x', use an ID to be more specific."
        );
        assert_eq!(CliError::Usage("bad".into()).exit_code(), 2);
        let e = CliError::PartialDelete {
            resource: "port_pair".into(),
            deleted: vec!["PP1".into()],
            failed: "PP2".into(),
            source: Box::new(CliError::Usage("x".into())),
        };
        assert_eq!(
            e.to_string(),
            "Deleted port_pair(s): PP1; unable to delete port_pair 'PP2'"
        );
    }

    #[test]
    fn json_mode_prints_the_object_and_people_get_a_table() {
        let shape = Shape::Object {
            key: "port_pair",
            heading: Some("Created a new port_pair:".into()),
        };
        let response = json!({"port_pair": {"id": "1", "name": "PP1"}});
        assert_eq!(
            render(&shape, Some(response.clone()), true, &[]),
            Output::Json(json!({"id": "1", "name": "PP1"}))
        );
        let Output::Text(text) = render(&shape, Some(response.clone()), false, &[]) else {
            panic!("text expected");
        };
        assert!(text.starts_with("Created a new port_pair:\n+-"), "{text}");
        assert!(text.contains("| name  | PP1   |"), "{text}");
        assert_eq!(
            render(&shape, Some(response), true, &["name".into()]),
            Output::Json(json!({"name": "PP1"}))
        );
        let deleted = Shape::Deleted {
            resource: "port".into(),
            labels: vec!["p1".into(), "p2".into()],
        };
        assert_eq!(
            render(&deleted, None, false, &[]),
            Output::Text("Deleted port(s): p1, p2".into())
        );
        assert_eq!(render(&deleted, None, true, &[]), Output::Nothing);
    }
}
