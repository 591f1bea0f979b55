//! API throughput against a baseline: port-pair creates per second and list latency with
//! 10,000 port pairs, on the real controller (SQLite file) and on the same HTTP stack
//! (axum, the same extractors, validation and JSON rendering) answering without any
//! database work, in one run.
//!
//! `cargo bench -p controller-stub --bench api` (or `make bench-api`); `API_BENCH_PAIRS`
//! changes the number of port pairs (default 10,000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use controller_stub::api::sfc::port_pairs::{validate_create, PortPairCreate};
use controller_stub::api::sfc::Quotas;
use controller_stub::api::{many, one, AppState, Body, ListQuery};
use controller_stub::auth::{Auth, Context};
use controller_stub::db::Db;
use controller_stub::error::ApiError;
use controller_stub::CancellationToken;
use serde_json::{json, Value};

/// Concurrent clients for the create phase (writes are serialised by the controller anyway;
/// several clients keep the HTTP side busy while one waits).
const CLIENTS: usize = 4;
/// List requests measured per stack.
const LISTS: usize = 200;
/// Show requests measured per stack.
const SHOWS: usize = 2000;

fn main() {
    let pairs: usize = std::env::var("API_BENCH_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(pairs));
}

struct Figures {
    creates_per_sec: f64,
    list: Vec<Duration>,
    list_bytes: usize,
    show: Vec<Duration>,
}

async fn run(pairs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite:{}", dir.path().join("bench.db").display()))
        .await
        .unwrap();
    let mut state = AppState::new(
        db,
        Auth::NoAuth {
            default_project: "admin".into(),
        },
    );
    state.quotas = Quotas {
        port_pair: -1,
        port_pair_group: -1,
        flow_classifier: -1,
        port_chain: -1,
        service_graph: -1,
    };
    let shutdown = CancellationToken::new();
    let real = serve(controller_stub::api::router(state), shutdown.clone()).await;
    let baseline = serve(baseline_router(pairs), shutdown.clone()).await;
    let client = reqwest::Client::new();

    // Ports for the pairs (set-up, not measured): one VM per pair, ingress = egress.
    eprintln!("setting up {pairs} ports ...");
    let net = post(
        &client,
        &real,
        "/v2.0/networks",
        json!({"network": {"name": "bench"}}),
    )
    .await;
    let net_id = net["network"]["id"].as_str().unwrap().to_string();
    let ports = run_parallel(pairs, |i| {
        let client = client.clone();
        let real = real.clone();
        let net_id = net_id.clone();
        async move {
            let port = post(
                &client,
                &real,
                "/v2.0/ports",
                json!({"port": {"network_id": net_id, "device_id": format!("vm-{i}"), "name": format!("p{i}")}}),
            )
            .await;
            port["port"]["id"].as_str().unwrap().to_string()
        }
    })
    .await;

    eprintln!("measuring ...");
    let ours = measure(&client, &real, &ports).await;
    let base = measure(&client, &baseline, &ports).await;
    shutdown.cancel();

    println!();
    println!(
        "controller API, {pairs} port pairs, SQLite file, {CLIENTS} concurrent clients for creates"
    );
    println!("| | controller (SQLite) | same HTTP stack, no database | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| port-pair creates per second | {:.0} | {:.0} | {:.2} |",
        ours.creates_per_sec,
        base.creates_per_sec,
        ours.creates_per_sec / base.creates_per_sec
    );
    for (label, p) in [("p50", 0.50), ("p99", 0.99)] {
        let (a, b) = (percentile(&ours.list, p), percentile(&base.list, p));
        println!(
            "| list all {pairs} ({} KiB), {label} | {:.1} ms | {:.1} ms | {:.2} |",
            ours.list_bytes / 1024,
            ms(a),
            ms(b),
            ms(a) / ms(b)
        );
    }
    for (label, p) in [("p50", 0.50), ("p99", 0.99)] {
        let (a, b) = (percentile(&ours.show, p), percentile(&base.show, p));
        println!(
            "| show one, {label} | {:.2} ms | {:.2} ms | {:.2} |",
            ms(a),
            ms(b),
            ms(a) / ms(b)
        );
    }
}

async fn measure(client: &reqwest::Client, base: &str, ports: &[String]) -> Figures {
    let start = Instant::now();
    let ids = run_parallel(ports.len(), |i| {
        let client = client.clone();
        let base = base.to_string();
        let port = ports[i].clone();
        async move {
            let pp = post(
                &client,
                &base,
                "/v2.0/sfc/port_pairs",
                json!({"port_pair": {"name": format!("pp{i}"), "ingress": port, "egress": port}}),
            )
            .await;
            pp["port_pair"]["id"].as_str().unwrap().to_string()
        }
    })
    .await;
    let creates_per_sec = ports.len() as f64 / start.elapsed().as_secs_f64();

    let mut list = Vec::with_capacity(LISTS);
    let mut list_bytes = 0;
    for _ in 0..LISTS {
        let t = Instant::now();
        let resp = client
            .get(format!("{base}/v2.0/sfc/port_pairs"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.bytes().await.unwrap();
        list.push(t.elapsed());
        list_bytes = body.len();
    }
    let all: Value = serde_json::from_slice(
        &client
            .get(format!("{base}/v2.0/sfc/port_pairs"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(all["port_pairs"].as_array().unwrap().len(), ports.len());

    let mut show = Vec::with_capacity(SHOWS);
    for i in 0..SHOWS {
        let id = &ids[i * 7919 % ids.len()];
        let t = Instant::now();
        let resp = client
            .get(format!("{base}/v2.0/sfc/port_pairs/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.bytes().await.unwrap();
        show.push(t.elapsed());
    }
    Figures {
        creates_per_sec,
        list,
        list_bytes,
        show,
    }
}

/// Runs `f(0..n)` with [`CLIENTS`] requests in flight; results in index order.
async fn run_parallel<F, Fut, T>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    while next < n || !set.is_empty() {
        while next < n && set.len() < CLIENTS {
            let fut = f(next);
            let i = next;
            set.spawn(async move { (i, fut.await) });
            next += 1;
        }
        if let Some(done) = set.join_next().await {
            let (i, v) = done.unwrap();
            out[i] = Some(v);
        }
    }
    out.into_iter().map(Option::unwrap).collect()
}

async fn post(client: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    let resp = client
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let value: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{path}: {value}");
    value
}

async fn serve(app: Router, shutdown: CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

/// The baseline: the controller's own extractors (context, body, list query), validation
/// and rendering for port pairs, with the stored set held in memory instead of the database.
fn baseline_router(capacity: usize) -> Router {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    // The stored set in creation order (lists) and by id (shows), as the database's primary
    // key would find it.
    type Store = (Vec<Value>, HashMap<String, usize>);
    let store: Arc<Mutex<Store>> = Arc::new(Mutex::new((
        Vec::with_capacity(capacity),
        HashMap::with_capacity(capacity),
    )));
    let (create_store, list_store, show_store) = (store.clone(), store.clone(), store);
    let auth = Auth::NoAuth {
        default_project: "admin".into(),
    };
    let (create_auth, list_auth, show_auth) = (auth.clone(), auth.clone(), auth);
    Router::new()
        .route(
            "/v2.0/sfc/port_pairs",
            get(
                move |headers: axum::http::HeaderMap, RawQuery(q): RawQuery| {
                    let store = list_store.clone();
                    let auth = list_auth.clone();
                    async move {
                        let ctx: Context = auth.context(&headers)?;
                        let query = ListQuery::parse(q.as_deref())?;
                        let items: Vec<Value> = store
                            .lock()
                            .unwrap()
                            .0
                            .iter()
                            .filter(|v| ctx.owns(v["project_id"].as_str().unwrap_or_default()))
                            .cloned()
                            .collect();
                        Ok::<Response, ApiError>(many("port_pairs", query.apply(items)))
                    }
                },
            )
            .post(
                move |headers: axum::http::HeaderMap, Body(req): Body<PortPairCreate>| {
                    let store = create_store.clone();
                    let auth = create_auth.clone();
                    async move {
                        let ctx: Context = auth.context(&headers)?;
                        let pp = validate_create(&ctx, &req)?
                            .into_port_pair(uuid::Uuid::new_v4().to_string())
                            .to_json();
                        let mut store = store.lock().unwrap();
                        let index = store.0.len();
                        store
                            .1
                            .insert(pp["id"].as_str().unwrap_or_default().to_string(), index);
                        store.0.push(pp.clone());
                        Ok::<Response, ApiError>(one(StatusCode::CREATED, "port_pair", pp))
                    }
                },
            ),
        )
        .route(
            "/v2.0/sfc/port_pairs/{id}",
            get(
                move |headers: axum::http::HeaderMap,
                      axum::extract::Path(id): axum::extract::Path<String>| {
                    let store = show_store.clone();
                    let auth = show_auth.clone();
                    async move {
                        let ctx: Context = auth.context(&headers)?;
                        let found =
                            {
                                let store = store.lock().unwrap();
                                store.1.get(&id).map(|&i| store.0[i].clone()).filter(|v| {
                                    ctx.owns(v["project_id"].as_str().unwrap_or_default())
                                })
                            };
                        match found {
                            Some(pp) => Ok(one(StatusCode::OK, "port_pair", pp)),
                            None => Err(ApiError::not_found(
                                "PortPairNotFound",
                                format!("Port Pair {id} could not be found."),
                            )),
                        }
                    }
                },
            ),
        )
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
