//! The driver manager and the common driver API (reference/networking-sfc.md §3.2): hook order,
//! precommit failures roll the transaction back, a failed create postcommit deletes the new
//! resource through the delete hooks, update postcommit failures keep the update, and the two
//! hooks where networking-sfc re-raises the driver's own exception pass a 400 through.
//!
//! The drivers here are test doubles that record every call and fail on demand; two of them
//! run in order ("first", "second") so that the tests also see that a failure stops the call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sfc_common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::{assert_error, Backend, TestApi};
use controller_stub::api::sfc::PortPair;
use controller_stub::drivers::{
    DriverError, DriverManager, Hook, HookCall, Precommit, Registry, SfcDriver,
};
use controller_stub::error::ApiError;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sfc_common::*;

/// How a hook fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// An internal failure (an unreachable agent, say).
    Crash,
    /// A deliberate 400, as the OVS drivers raise for a classifier without
    /// `logical_source_port` or a symmetric chain without `logical_destination_port`.
    Refuse,
}

/// What the test drivers saw, and which hook of which driver is to fail.
#[derive(Debug, Default)]
struct Journal {
    calls: Mutex<Vec<String>>,
    failures: Mutex<Vec<(&'static str, String, Failure)>>,
    /// Rows of the new port pair that `create_port_pair_precommit` found in its transaction.
    seen_in_transaction: Mutex<Vec<i64>>,
}

impl Journal {
    /// The calls since the last `take`, as `driver:method`.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn fail(&self, driver: &'static str, method: &str, how: Failure) {
        self.failures
            .lock()
            .unwrap()
            .push((driver, method.to_string(), how));
    }

    fn heal(&self) {
        self.failures.lock().unwrap().clear();
    }
}

#[derive(Debug)]
struct TestDriver {
    name: &'static str,
    journal: Arc<Journal>,
}

#[async_trait]
impl SfcDriver for TestDriver {
    fn name(&self) -> &str {
        self.name
    }

    async fn on_hook(&self, call: HookCall) -> Result<(), DriverError> {
        let method = call.name.to_string();
        self.journal
            .calls
            .lock()
            .unwrap()
            .push(format!("{}:{method}", self.name));
        let failure = self
            .journal
            .failures
            .lock()
            .unwrap()
            .iter()
            .find(|(d, m, _)| *d == self.name && *m == method)
            .map(|(_, _, how)| *how);
        match failure {
            None => Ok(()),
            Some(Failure::Crash) => Err(DriverError::Failed(format!("{method} crashed"))),
            Some(Failure::Refuse) => Err(DriverError::Api(ApiError::bad_request(
                "SfcBadRequest",
                format!("{} refuses {}", self.name, call.id),
            ))),
        }
    }

    /// Looks into the open transaction before recording the call: a driver's precommit sees
    /// (and could extend) the row being created.
    async fn create_port_pair_precommit(
        &self,
        ctx: &mut Precommit<'_, PortPair>,
    ) -> Result<(), DriverError> {
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sfc_port_pairs WHERE id = $1")
            .bind(&ctx.current.id)
            .fetch_one(&mut *ctx.conn)
            .await?;
        self.journal.seen_in_transaction.lock().unwrap().push(rows);
        self.on_hook(HookCall::new(Hook::CreatePrecommit, ctx.current, None))
            .await
    }
}

/// A controller on `backend` whose drivers are "first" and "second", both writing to the
/// returned journal.
async fn start(backend: Backend) -> (TestApi, Arc<Journal>) {
    let journal = Arc::new(Journal::default());
    let j = journal.clone();
    let api = TestApi::start_with(backend, move |state| {
        state.with_drivers(DriverManager::new(vec![
            Arc::new(TestDriver {
                name: "first",
                journal: j.clone(),
            }),
            Arc::new(TestDriver {
                name: "second",
                journal: j.clone(),
            }),
        ]))
    })
    .await;
    (api, journal)
}

/// One test per backend with the recording drivers: `driver_test!(name, |api, journal| ...)`.
macro_rules! driver_test {
    ($name:ident, |$api:ident, $journal:ident| $body:expr) => {
        mod $name {
            use super::*;

            async fn run(backend: Backend) {
                let ($api, $journal) = start(backend).await;
                let url = $api.url.clone();
                $body.await;
                if backend == Backend::Postgres {
                    common::pg::drop_database(&url).await;
                }
            }

            #[tokio::test]
            async fn sqlite() {
                run(Backend::Sqlite).await
            }

            #[tokio::test]
            async fn postgres() {
                run(Backend::Postgres).await
            }
        }
    };
}

/// The five resources: collection, singular hook name, and a create body (building what it
/// needs first; the journal is cleared afterwards).
const KINDS: [(&str, &str); 5] = [
    ("port_pairs", "port_pair"),
    ("port_pair_groups", "port_pair_group"),
    ("flow_classifiers", "flow_classifier"),
    ("port_chains", "port_chain"),
    ("service_graphs", "service_graph"),
];

async fn create_body(api: &TestApi, journal: &Journal, collection: &str) -> Value {
    let body = match collection {
        "port_pairs" => {
            let net = network(api, None).await;
            let p = port(api, &net, &unknown()).await;
            json!({"ingress": p, "egress": p})
        }
        "port_pair_groups" => json!({}),
        "flow_classifiers" => {
            json!({"protocol": "tcp", "destination_port_range_min": 1, "destination_port_range_max": 1})
        }
        "port_chains" => {
            let g = group(api, &[]).await;
            json!({ "port_pair_groups": [g] })
        }
        "service_graphs" => json!({"port_chains": {}}),
        other => panic!("no such collection {other}"),
    };
    journal.take();
    body
}

fn driver_error_kind(collection: &str) -> &'static str {
    // networking-sfc's flow classifiers have their own driver manager and exception.
    if collection == "flow_classifiers" {
        "FlowClassifierDriverError"
    } else {
        "SfcDriverError"
    }
}

/// `["first:m", "second:m"]` for each method, in order.
fn both(methods: &[String]) -> Vec<String> {
    methods
        .iter()
        .flat_map(|m| [format!("first:{m}"), format!("second:{m}")])
        .collect()
}

driver_test!(
    hooks_run_in_networking_sfc_order,
    |api, journal| async move {
        for (collection, kind) in KINDS {
            let body = create_body(&api, &journal, collection).await;
            let id = create_id(&api, collection, body).await;
            assert_eq!(
                journal.take(),
                both(&[
                    format!("create_{kind}_precommit"),
                    format!("create_{kind}_postcommit")
                ]),
                "{collection} create"
            );
            let (status, _) = put(&api, collection, &id, json!({"name": "renamed"})).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                journal.take(),
                both(&[
                    format!("update_{kind}_precommit"),
                    format!("update_{kind}_postcommit")
                ]),
                "{collection} update"
            );
            assert_eq!(
                delete(&api, collection, &id).await.0,
                StatusCode::NO_CONTENT
            );
            assert_eq!(
                journal.take(),
                both(&[
                    format!("delete_{kind}"),
                    format!("delete_{kind}_precommit"),
                    format!("delete_{kind}_postcommit")
                ]),
                "{collection} delete"
            );
        }
    }
);

driver_test!(
    a_failed_create_precommit_stores_nothing,
    |api, journal| async move {
        for (collection, kind) in KINDS {
            let body = create_body(&api, &journal, collection).await;
            let method = format!("create_{kind}_precommit");
            journal.fail("second", &method, Failure::Crash);
            post_refused(
                &api,
                collection,
                body.clone(),
                StatusCode::INTERNAL_SERVER_ERROR,
                driver_error_kind(collection),
            )
            .await;
            // Nothing after the failing driver's precommit ran: no postcommit.
            assert_eq!(journal.take(), both(&[method]), "{collection}");
            journal.heal();
            // The same request succeeds once the driver does.
            create(&api, collection, body).await;
            journal.take();
        }
    }
);

driver_test!(
    a_failed_precommit_rolls_back_associations_and_ids,
    |api, journal| async move {
        let net = network(&api, None).await;
        let pp = port_pair(&api, &net, "vm1", None).await;
        let fc = classifier(&api, json!({})).await;
        journal.fail("first", "create_port_pair_group_precommit", Failure::Crash);
        post_refused(
            &api,
            "port_pair_groups",
            json!({"port_pairs": [pp]}),
            StatusCode::INTERNAL_SERVER_ERROR,
            "SfcDriverError",
        )
        .await;
        journal.heal();
        // The port pair's membership was rolled back with the group, and group id 1 is unused.
        let g = create(&api, "port_pair_groups", json!({"port_pairs": [pp]})).await;
        assert_eq!(g["group_id"], 1);
        journal.fail("second", "create_port_chain_precommit", Failure::Crash);
        post_refused(
            &api,
            "port_chains",
            json!({"port_pair_groups": [g["id"]], "flow_classifiers": [fc]}),
            StatusCode::INTERNAL_SERVER_ERROR,
            "SfcDriverError",
        )
        .await;
        journal.heal();
        // The classifier is not in use and chain id 1 is free.
        let c = create(
            &api,
            "port_chains",
            json!({"port_pair_groups": [g["id"]], "flow_classifiers": [fc]}),
        )
        .await;
        assert_eq!(c["chain_id"], 1);
        // The precommit saw the new port pair inside its transaction.
        assert_eq!(*journal.seen_in_transaction.lock().unwrap(), vec![1, 1]);
    }
);

driver_test!(
    create_port_chain_and_classifier_precommits_pass_a_400_through,
    |api, journal| async move {
        let g = group(&api, &[]).await;
        journal.take();
        // An OVS-like rule: the classifier driver refuses a classifier it cannot place.
        journal.fail(
            "second",
            "create_flow_classifier_precommit",
            Failure::Refuse,
        );
        post_refused(
            &api,
            "flow_classifiers",
            json!({}),
            StatusCode::BAD_REQUEST,
            "SfcBadRequest",
        )
        .await;
        journal.fail("first", "create_port_chain_precommit", Failure::Refuse);
        post_refused(
            &api,
            "port_chains",
            json!({"port_pair_groups": [g]}),
            StatusCode::BAD_REQUEST,
            "SfcBadRequest",
        )
        .await;
        // Only the first driver ran.
        assert_eq!(
            journal.take(),
            vec![
                "first:create_flow_classifier_precommit",
                "second:create_flow_classifier_precommit",
                "first:create_port_chain_precommit"
            ]
        );
        journal.heal();
        // Any other hook's 400 is a driver failure, as networking-sfc wraps it.
        journal.fail("first", "create_port_pair_group_precommit", Failure::Refuse);
        post_refused(
            &api,
            "port_pair_groups",
            json!({}),
            StatusCode::INTERNAL_SERVER_ERROR,
            "SfcDriverError",
        )
        .await;
        journal.fail("first", "update_port_chain_precommit", Failure::Refuse);
        let c = chain(&api, &[&g], &[]).await;
        put_refused(
            &api,
            "port_chains",
            &c,
            json!({"name": "x"}),
            StatusCode::INTERNAL_SERVER_ERROR,
            "SfcDriverError",
        )
        .await;
        // And a crash in the re-raising hooks is still a driver error.
        journal.heal();
        journal.fail("first", "create_port_chain_precommit", Failure::Crash);
        let g2 = group(&api, &[]).await;
        post_refused(
            &api,
            "port_chains",
            json!({"port_pair_groups": [g2]}),
            StatusCode::INTERNAL_SERVER_ERROR,
            "SfcDriverError",
        )
        .await;
    }
);

driver_test!(
    a_failed_create_postcommit_deletes_the_resource,
    |api, journal| async move {
        for (collection, kind) in KINDS {
            let body = create_body(&api, &journal, collection).await;
            journal.fail(
                "first",
                &format!("create_{kind}_postcommit"),
                Failure::Crash,
            );
            post_refused(
                &api,
                collection,
                body.clone(),
                StatusCode::INTERNAL_SERVER_ERROR,
                driver_error_kind(collection),
            )
            .await;
            let mut expected = both(&[format!("create_{kind}_precommit")]);
            expected.push(format!("first:create_{kind}_postcommit"));
            expected.extend(both(&[
                format!("delete_{kind}"),
                format!("delete_{kind}_precommit"),
                format!("delete_{kind}_postcommit"),
            ]));
            assert_eq!(journal.take(), expected, "{collection}");
            journal.heal();
            // Whatever the resource held is free again: the same request succeeds.
            create(&api, collection, body).await;
            journal.take();
        }
    }
);

driver_test!(update_failures, |api, journal| async move {
    for (collection, kind) in KINDS {
        let body = create_body(&api, &journal, collection).await;
        let id = create_id(&api, collection, body).await;
        // Precommit: rolled back.
        journal.fail(
            "second",
            &format!("update_{kind}_precommit"),
            Failure::Crash,
        );
        put_refused(
            &api,
            collection,
            &id,
            json!({"name": "never"}),
            StatusCode::INTERNAL_SERVER_ERROR,
            driver_error_kind(collection),
        )
        .await;
        journal.heal();
        // Postcommit: a 500, but the update stays (networking-sfc does not roll back).
        journal.fail(
            "first",
            &format!("update_{kind}_postcommit"),
            Failure::Crash,
        );
        let result = put(&api, collection, &id, json!({"name": "kept"})).await;
        assert_error(
            &result,
            StatusCode::INTERNAL_SERVER_ERROR,
            driver_error_kind(collection),
        );
        let (_, shown) = get(&api, collection, &id).await;
        assert_eq!(shown[singular(collection)]["name"], "kept", "{collection}");
        journal.heal();
        journal.take();
    }
});

driver_test!(delete_failures, |api, journal| async move {
    for (collection, kind) in KINDS {
        let body = create_body(&api, &journal, collection).await;
        let id = create_id(&api, collection, body).await;
        journal.take();
        let error = driver_error_kind(collection);
        // `delete_*` runs before the transaction: nothing is deleted.
        journal.fail("first", &format!("delete_{kind}"), Failure::Crash);
        delete_refused(
            &api,
            collection,
            &id,
            StatusCode::INTERNAL_SERVER_ERROR,
            error,
        )
        .await;
        assert_eq!(journal.take(), vec![format!("first:delete_{kind}")]);
        journal.heal();
        // Precommit: the delete is rolled back.
        journal.fail(
            "second",
            &format!("delete_{kind}_precommit"),
            Failure::Crash,
        );
        delete_refused(
            &api,
            collection,
            &id,
            StatusCode::INTERNAL_SERVER_ERROR,
            error,
        )
        .await;
        assert_eq!(
            journal.take(),
            both(&[format!("delete_{kind}"), format!("delete_{kind}_precommit")])
        );
        journal.heal();
        // Postcommit: too late, it is gone; the caller still hears of the failure.
        journal.fail(
            "first",
            &format!("delete_{kind}_postcommit"),
            Failure::Crash,
        );
        assert_error(
            &delete(&api, collection, &id).await,
            StatusCode::INTERNAL_SERVER_ERROR,
            error,
        );
        assert_eq!(get(&api, collection, &id).await.0, StatusCode::NOT_FOUND);
        journal.heal();
        journal.take();
    }
});

driver_test!(
    refused_requests_reach_no_driver,
    |api, journal| async move {
        // Validation and conflicts come first: the drivers hear only of accepted changes.
        post_refused(
            &api,
            "port_chains",
            json!({"port_pair_groups": []}),
            StatusCode::BAD_REQUEST,
            "PortPairGroupNotSpecified",
        )
        .await;
        let g = group(&api, &[]).await;
        chain(&api, &[&g], &[]).await;
        journal.take();
        delete_refused(
            &api,
            "port_pair_groups",
            &g,
            StatusCode::CONFLICT,
            "PortPairGroupInUse",
        )
        .await;
        assert_eq!(journal.take(), Vec::<String>::new());
    }
);

#[test]
fn drivers_are_loaded_by_name_in_order() {
    let mut registry = Registry::default();
    assert_eq!(registry.names(), vec!["logging"]);
    let journal = Arc::new(Journal::default());
    let j = journal.clone();
    registry.register("recorder", move || {
        Arc::new(TestDriver {
            name: "first",
            journal: j.clone(),
        })
    });
    let manager = DriverManager::from_names(&["recorder", "logging"], &registry).unwrap();
    assert_eq!(manager.names(), vec!["first", "logging"]);
    let err = DriverManager::from_names(&["logging", "ovs-typo"], &registry).unwrap_err();
    assert_eq!(err.name, "ovs-typo");
    assert!(err.to_string().contains("logging, recorder"), "{err}");
}

#[test]
fn the_default_state_runs_the_logging_driver() {
    let manager = DriverManager::default_drivers();
    assert_eq!(manager.names(), vec!["logging"]);
}

#[test]
fn an_unknown_driver_name_stops_the_controller() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_controller-stub"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--drivers",
            "logging,nope",
        ])
        .arg("--database")
        .arg(format!("sqlite:{}", dir.path().join("c.db").display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown SFC driver \"nope\""), "{stderr}");
}

driver_test!(
    a_bulk_create_runs_every_precommit_then_the_postcommits_and_undoes_all,
    |api, journal| async move {
        let (g1, g2) = (group(&api, &[]).await, group(&api, &[]).await);
        let body = json!({"port_chains": [
            {"name": "a", "port_pair_groups": [g1]},
            {"name": "b", "port_pair_groups": [g2]},
        ]});
        journal.take();
        let (status, made) = api.post("/v2.0/sfc/port_chains", body.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{made}");
        let pre = both(&["create_port_chain_precommit".to_string()]);
        let mut expected: Vec<String> = pre.iter().chain(&pre).cloned().collect();
        for driver in ["first", "second"] {
            for _ in 0..2 {
                expected.push(format!("{driver}:create_port_chain_postcommit"));
            }
        }
        assert_eq!(journal.take(), expected);
        for chain in made["port_chains"].as_array().unwrap() {
            delete(&api, "port_chains", chain["id"].as_str().unwrap()).await;
        }
        journal.take();

        // A failed postcommit undoes the whole request through the delete path.
        journal.fail("second", "create_port_chain_postcommit", Failure::Crash);
        let (status, refused) = api.post("/v2.0/sfc/port_chains", body.clone()).await;
        assert_error(
            &(status, refused),
            StatusCode::INTERNAL_SERVER_ERROR,
            driver_error_kind("port_chains"),
        );
        assert!(list(&api, "port_chains").await.is_empty());
        let hooks = journal.take();
        let deletes = hooks
            .iter()
            .filter(|h| h.ends_with(":delete_port_chain_postcommit"))
            .count();
        assert_eq!(
            deletes, 4,
            "both chains deleted through both drivers: {hooks:?}"
        );
        journal.heal();
        let (status, _) = api.post("/v2.0/sfc/port_chains", body).await;
        assert_eq!(status, StatusCode::CREATED);
    }
);
