//! The HTTP side of `sfc`: one reqwest client with the caller's project and token headers,
//! URLs built segment by segment (so names and service strings are percent-encoded), Neutron's
//! `{"NeutronError": {...}}` bodies turned into [`CliError::Server`], and name→ID resolution as
//! neutronclient does it.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::plan::{Call, Resolve, Resource};
use super::CliError;

/// How long to wait for a TCP connection to the controller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take in all; chain creation is the slowest call and takes
/// milliseconds, so a minute only ever trips on a hung controller.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to one controller, acting as one project.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    project: Option<String>,
    token: Option<String>,
}

impl Client {
    /// A client of the API at `url` (e.g. `http://127.0.0.1:9696`, or with a path prefix).
    pub fn new(
        url: &str,
        project: Option<String>,
        token: Option<String>,
    ) -> Result<Client, CliError> {
        let base =
            Url::parse(url).map_err(|e| CliError::Usage(format!("invalid --url {url:?}: {e}")))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(CliError::Usage(format!(
                "invalid --url {url:?}: an http:// or https:// URL is needed"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("sfc/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(CliError::Http)?;
        Ok(Client {
            http,
            base,
            project,
            token,
        })
    }

    /// The URL of `segments` (each percent-encoded) under the base, with `query`.
    pub fn url(&self, segments: &[String], query: &[(String, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            // `new` refused cannot-be-a-base URLs, so this branch is always taken.
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Makes one call: the JSON answer (None for an empty one, e.g. 204), or the server's
    /// refusal as [`CliError::Server`].
    pub async fn send(&self, call: &Call) -> Result<Option<Value>, CliError> {
        let url = self.url(&call.path, &call.query);
        let mut request = self
            .http
            .request(call.method.clone(), url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(p) = &self.project {
            request = request.header("X-Project-Id", p);
        }
        if let Some(t) = &self.token {
            request = request.header("X-Auth-Token", t);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.transport(e))?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(None);
            }
            return serde_json::from_str(&text).map(Some).map_err(|e| {
                CliError::BadResponse(format!("{} {}: not JSON: {e}", call.method, path(call)))
            });
        }
        Err(server_error(status, &text))
    }

    fn transport(&self, e: reqwest::Error) -> CliError {
        if e.is_connect() || e.is_timeout() {
            CliError::Unreachable {
                url: self.base.to_string(),
                source: e,
            }
        } else {
            CliError::Http(e)
        }
    }
}

fn path(call: &Call) -> String {
    format!("/{}", call.path.join("/"))
}

/// A refusal: Neutron's error body when there is one, else the status and the text.
pub fn server_error(status: StatusCode, text: &str) -> CliError {
    let body: Option<Value> = serde_json::from_str(text).ok();
    let neutron = body.as_ref().map(|b| &b["NeutronError"]);
    if let Some(message) = neutron.and_then(|n| n["message"].as_str()) {
        return CliError::Server {
            status: status.as_u16(),
            kind: neutron.and_then(|n| n["type"].as_str()).map(str::to_string),
            message: message.to_string(),
        };
    }
    // Not a Neutron body (a proxy in the way, or a plain-text error): keep it short.
    let text: String = text.trim().chars().take(500).collect();
    let reason = status.canonical_reason().unwrap_or("error");
    CliError::Server {
        status: status.as_u16(),
        kind: None,
        message: if text.is_empty() {
            format!("HTTP {} {reason}", status.as_u16())
        } else {
            format!("HTTP {} {reason}: {text}", status.as_u16())
        },
    }
}

impl Resolve for Client {
    /// neutronclient's `find_resourceid_by_name_or_id`: a UUID is checked with a GET and used
    /// as it is; anything else (or a UUID that is no resource's ID, since a name may look like
    /// one) is looked up by name, and must match exactly one resource.
    async fn id(&self, resource: Resource, name_or_id: &str) -> Result<String, CliError> {
        if let Ok(uuid) = uuid::Uuid::parse_str(name_or_id) {
            let mut path = resource.path();
            path.push(uuid.to_string());
            let call = Call {
                method: Method::GET,
                path,
                query: vec![("fields".into(), "id".into())],
                body: None,
            };
            match self.send(&call).await {
                Ok(found) => {
                    let id = found
                        .as_ref()
                        .and_then(|v| v[resource.singular()]["id"].as_str())
                        .map(str::to_string);
                    return Ok(id.unwrap_or_else(|| uuid.to_string()));
                }
                Err(CliError::Server { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let call = Call {
            method: Method::GET,
            path: resource.path(),
            query: vec![
                ("name".into(), name_or_id.into()),
                ("fields".into(), "id".into()),
            ],
            body: None,
        };
        let list = self.send(&call).await?.unwrap_or(Value::Null);
        let ids: Vec<&str> = list[resource.plural()]
            .as_array()
            .ok_or_else(|| {
                CliError::BadResponse(format!(
                    "GET {}: no '{}' list",
                    path(&call),
                    resource.plural()
                ))
            })?
            .iter()
            .filter_map(|item| item["id"].as_str())
            .collect();
        match ids.as_slice() {
            [id] => Ok((*id).to_string()),
            [] => Err(CliError::NotFound {
                resource: resource.singular().into(),
                name: name_or_id.into(),
            }),
            _ => Err(CliError::Ambiguous {
                resource: resource.singular().into(),
                name: name_or_id.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn urls_encode_each_segment_and_keep_a_path_prefix() {
        let c = Client::new("http://h:9696/networking/", None, None).unwrap();
        let url = c.url(
            &["v2.0".into(), "vnf".into(), "a b/c".into()],
            &[("name".into(), "x&y".into())],
        );
        assert_eq!(
            url.as_str(),
            "http://h:9696/networking/v2.0/vnf/a%20b%2Fc?name=x%26y"
        );
        let c = Client::new("http://h:9696", None, None).unwrap();
        assert_eq!(
            c.url(&["v2.0".into(), "networks".into()], &[]).as_str(),
            "http://h:9696/v2.0/networks"
        );
    }

    #[test]
    fn bad_urls_are_usage_errors() {
        for url in ["not a url", "ftp://h/", "mailto:x@y"] {
            let e = Client::new(url, None, None).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{url}");
        }
    }

    #[test]
    fn neutron_error_bodies_become_the_message() {
        let e = server_error(
            StatusCode::CONFLICT,
            r#"{"NeutronError": {"type": "PortPairInUse", "message": "Port Pair x is in use.", "detail": ""}}"#,
        );
        assert_eq!(e.to_string(), "PortPairInUse: Port Pair x is in use.");
        assert!(matches!(e, CliError::Server { status: 409, .. }));
        let e = server_error(StatusCode::BAD_GATEWAY, "upstream down\n");
        assert_eq!(e.to_string(), "HTTP 502 Bad Gateway: upstream down");
        let e = server_error(StatusCode::NOT_FOUND, "");
        assert_eq!(e.to_string(), "HTTP 404 Not Found");
    }
}
