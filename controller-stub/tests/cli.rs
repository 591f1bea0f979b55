//! The `sfc` binary against a real controller: the networking-sfc seed workflow by names and
//! IDs, table and `--json` output, and the exit codes and messages of every kind of failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, TestApi};
use serde_json::Value;

/// What one run of the binary left behind.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts success and returns standard output.
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "{self:?}");
        &self.stdout
    }

    /// Asserts success and parses standard output as JSON.
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts failure with `code` and returns standard error.
    #[track_caller]
    fn failed(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "{self:?}");
        assert!(self.stdout.is_empty(), "{self:?}");
        &self.stderr
    }
}

/// Runs `sfc ARGS` with `env` set and nothing inherited from the caller's SFC_* variables.
async fn sfc_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // The server runs on this test's runtime: the child must not block it.
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sfc"))
            .args(&args)
            .env_remove("SFC_URL")
            .env_remove("SFC_PROJECT")
            .env_remove("SFC_TOKEN")
            .envs(env)
            .output()
            .expect("run sfc");
        Run {
            code: out.status.code().expect("exit code"),
            stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
        }
    })
    .await
    .expect("sfc task")
}

/// Runs `sfc --url <api> ARGS`.
async fn sfc(api: &TestApi, args: &[&str]) -> Run {
    let mut full = vec!["--url", api.base.as_str()];
    full.extend_from_slice(args);
    sfc_env(&full, &[]).await
}

/// The id of a `--json` create/show answer.
fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn networks_by_name_and_by_id() {
    let api = TestApi::start(Backend::Sqlite).await;
    let created = sfc(&api, &["net-create", "net1"]).await;
    let text = created.ok();
    assert!(text.starts_with("Created a new network:\n+"), "{text}");
    assert!(text.contains("| name "), "{text}");
    assert!(text.contains("| net1 "), "{text}");
    let net2 = sfc(&api, &["net-create", "net2", "--mtu", "1400", "--json"])
        .await
        .json();
    assert_eq!(net2["name"], "net2");
    assert_eq!(net2["mtu"], 1400);
    let net2_id = id(&net2);

    let list = sfc(&api, &["net-list"]).await;
    let text = list.ok();
    assert!(text.lines().nth(1).unwrap().contains("| id "), "{text}");
    assert!(text.contains("net1") && text.contains(&net2_id), "{text}");
    let list = sfc(&api, &["net-list", "--json"]).await.json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let list = sfc(
        &api,
        &["net-list", "--filter", "name=net2", "-f", "id", "--json"],
    )
    .await
    .json();
    assert_eq!(list, serde_json::json!([{"id": net2_id}]));

    // By name and by ID, the same network.
    let by_name = sfc(&api, &["net-show", "net2", "--json"]).await.json();
    let by_id = sfc(&api, &["net-show", &net2_id, "--json"]).await.json();
    assert_eq!(by_name, by_id);
    let shown = sfc(&api, &["net-show", "net2", "-f", "name", "-f", "mtu"]).await;
    assert_eq!(
        shown.ok(),
        "+-------+-------+\n| Field | Value |\n+-------+-------+\n| mtu   | 1400  |\n| name  | net2  |\n+-------+-------+\n"
    );

    let updated = sfc(&api, &["net-update", "net2", "--name", "net3"]).await;
    assert_eq!(updated.ok(), "Updated network: net2\n");
    let updated = sfc(&api, &["net-update", &net2_id, "--mtu", "1300", "--json"])
        .await
        .json();
    assert_eq!(
        (&updated["name"], &updated["mtu"]),
        (&"net3".into(), &1300.into())
    );

    let deleted = sfc(&api, &["net-delete", "net1", &net2_id]).await;
    assert_eq!(
        deleted.ok(),
        format!("Deleted network(s): net1, {net2_id}\n")
    );
    assert_eq!(
        sfc(&api, &["net-list", "--json"]).await.json(),
        serde_json::json!([])
    );
    let quiet = sfc(&api, &["net-create", "n", "--json"]).await.json();
    let run = sfc(&api, &["net-delete", "n", "--json"]).await;
    assert_eq!(run.ok(), "");
    assert_eq!(
        sfc(&api, &["net-show", &id(&quiet)]).await.failed(1),
        format!(
            "sfc: Unable to find network with name or id '{}'\n",
            id(&quiet)
        )
    );
}

#[tokio::test]
async fn unknown_and_ambiguous_names_are_errors() {
    let api = TestApi::start(Backend::Sqlite).await;
    assert_eq!(
        sfc(&api, &["net-show", "nope"]).await.failed(1),
        "sfc: Unable to find network with name or id 'nope'\n"
    );
    sfc(&api, &["net-create", "dup"]).await.ok();
    let second = sfc(&api, &["net-create", "dup", "--json"]).await.json();
    assert_eq!(
        sfc(&api, &["net-update", "dup", "--name", "x"])
            .await
            .failed(1),
        "sfc: Multiple network matches found for name 'dup', use an ID to be more specific.\n"
    );
    // The ID picks one of them; nothing else changed.
    sfc(&api, &["net-update", &id(&second), "--name", "x"])
        .await
        .ok();
    let mut names: Vec<String> = sfc(&api, &["net-list", "--json"])
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["dup", "x"]);
    // A name that looks like a UUID but is no ID is still looked up by name.
    let uuid_name = "6b0f4c9e-1a2b-4c3d-8e9f-001122334455";
    sfc(&api, &["net-create", uuid_name]).await.ok();
    let shown = sfc(&api, &["net-show", uuid_name, "--json"]).await.json();
    assert_eq!(shown["name"], uuid_name);
    assert_ne!(id(&shown), uuid_name);
}

#[tokio::test]
async fn failures_exit_non_zero_with_the_reason() {
    let api = TestApi::start(Backend::Sqlite).await;
    // The server's refusal, with Neutron's message.
    let stderr = sfc(&api, &["net-create", "n", "--mtu", "5"])
        .await
        .failed(1)
        .to_string();
    assert_eq!(
        stderr,
        "sfc: HTTPBadRequest: Invalid input for mtu. Reason: '5' is not in range 68 through 9000.\n"
    );
    assert_eq!(
        sfc(&api, &["net-list", "--json"]).await.json(),
        serde_json::json!([])
    );
    // Usage errors: clap's, and values only the CLI checks.
    assert!(sfc(&api, &["net-create"]).await.failed(2).contains("Usage"));
    assert!(sfc(&api, &["no-such-command"])
        .await
        .failed(2)
        .contains("Usage"));
    assert!(sfc(&api, &["net-update", "n"])
        .await
        .failed(2)
        .starts_with("sfc: nothing to update"));
    assert!(sfc(&api, &["net-list", "--filter", "x"])
        .await
        .failed(2)
        .contains("KEY=VALUE"));
    assert!(sfc_env(&["--url", "::", "net-list"], &[])
        .await
        .failed(2)
        .starts_with("sfc: invalid --url"));
    // Nobody listens on port 1.
    let stderr = sfc_env(&["--url", "http://127.0.0.1:1", "net-list"], &[]).await;
    assert!(
        stderr
            .failed(1)
            .starts_with("sfc: cannot reach the controller at http://127.0.0.1:1/: "),
        "{stderr:?}"
    );
}

#[tokio::test]
async fn url_and_project_come_from_options_or_the_environment() {
    let api = TestApi::start(Backend::Sqlite).await;
    let mine = sfc_env(
        &["net-create", "a", "--json"],
        &[("SFC_URL", &api.base), ("SFC_PROJECT", "p1")],
    )
    .await
    .json();
    assert_eq!(mine["project_id"], "p1");
    let theirs = sfc(&api, &["--project", "p2", "net-create", "a", "--json"])
        .await
        .json();
    assert_eq!(theirs["project_id"], "p2");
    // Each project resolves the name to its own network; the administrator sees two.
    let shown = sfc(&api, &["--project", "p1", "net-show", "a", "--json"])
        .await
        .json();
    assert_eq!(id(&shown), id(&mine));
    assert!(sfc(&api, &["net-show", "a"])
        .await
        .failed(1)
        .contains("Multiple network"));
    // Another project's network is not found, by name or by ID.
    assert!(sfc(&api, &["--project", "p3", "net-show", &id(&mine)])
        .await
        .failed(1)
        .contains("Unable to find network"));
}

#[tokio::test]
async fn the_token_is_sent() {
    use controller_stub::auth::{Auth, Context, TokenTable};
    let mut tokens = TokenTable::default();
    tokens.insert("s3cret", Context::project("p9"));
    let api = TestApi::start_with_auth(Backend::Sqlite, Auth::Token(tokens)).await;
    let stderr = sfc(&api, &["net-list"]).await.failed(1).to_string();
    assert_eq!(stderr, "sfc: NotAuthorized: Authentication required\n");
    let created = sfc(&api, &["--token", "s3cret", "net-create", "n", "--json"])
        .await
        .json();
    assert_eq!(created["project_id"], "p9");
    let listed = sfc_env(
        &["net-list", "--json"],
        &[("SFC_URL", &api.base), ("SFC_TOKEN", "s3cret")],
    )
    .await
    .json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

/// The IDs of `--json` list output.
fn ids(v: &Value) -> Vec<String> {
    v.as_array().expect("list").iter().map(id).collect()
}

#[tokio::test]
async fn the_seed_workflow() {
    let api = TestApi::start(Backend::Sqlite).await;
    // neutron net-create / port-create: six SF ports on three VMs, and the traffic source.
    sfc(&api, &["net-create", "net1"]).await.ok();
    let sub1 = sfc(
        &api,
        &[
            "subnet-create",
            "net1",
            "10.1.0.0/24",
            "--name",
            "sub1",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(sub1["ip_version"], 4);
    let mut port_ids = std::collections::HashMap::new();
    for (port, vm) in [
        ("p1", "vm1"),
        ("p2", "vm1"),
        ("p3", "vm2"),
        ("p4", "vm2"),
        ("p5", "vm3"),
        ("p6", "vm3"),
    ] {
        let p = sfc(
            &api,
            &[
                "port-create",
                "--name",
                port,
                "--device-id",
                vm,
                "net1",
                "--json",
            ],
        )
        .await
        .json();
        port_ids.insert(port, id(&p));
    }
    let src = sfc(
        &api,
        &[
            "port-create",
            "net1",
            "--name",
            "src",
            "--device-id",
            "vm0",
            "--host",
            "compute1",
            "--fixed-ip",
            "subnet_id=sub1,ip_address=10.1.0.50",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(src["binding:host_id"], "compute1");
    assert_eq!(
        src["fixed_ips"],
        serde_json::json!([{"subnet_id": id(&sub1), "ip_address": "10.1.0.50"}])
    );
    let ports = sfc(&api, &["port-list"]).await;
    assert!(ports.ok().contains("| 10.1.0.50 "), "{ports:?}");

    // The seed's commands, verbatim but for the logical source port the OVS driver needs.
    let fc = sfc(
        &api,
        &[
            "flow-classifier-create",
            "--ethertype",
            "IPv4",
            "--source-ip-prefix",
            "22.1.20.1/32",
            "--destination-ip-prefix",
            "172.4.5.6/32",
            "--protocol",
            "tcp",
            "--source-port",
            "23:23",
            "--destination-port",
            "100:100",
            "--logical-source-port",
            "src",
            "FC1",
        ],
    )
    .await;
    assert!(
        fc.ok().starts_with("Created a new flow_classifier:\n"),
        "{fc:?}"
    );
    for (name, ingress, egress) in [
        ("PP1", "p1", "p2"),
        ("PP2", "p3", "p4"),
        ("PP3", "p5", "p6"),
    ] {
        let ingress = format!("--ingress={ingress}");
        let egress = format!("--egress={egress}");
        sfc(&api, &["port-pair-create", &ingress, &egress, name])
            .await
            .ok();
    }
    sfc(
        &api,
        &[
            "port-pair-group-create",
            "--port-pair",
            "PP1",
            "--port-pair",
            "PP2",
            "PG1",
        ],
    )
    .await
    .ok();
    sfc(
        &api,
        &["port-pair-group-create", "--port-pair", "PP3", "PG2"],
    )
    .await
    .ok();
    let pc = sfc(
        &api,
        &[
            "port-chain-create",
            "--port-pair-group",
            "PG1",
            "--port-pair-group",
            "PG2",
            "--flow-classifier",
            "FC1",
            "PC1",
        ],
    )
    .await;
    assert!(pc.ok().contains("| chain_id "), "{pc:?}");

    // What was stored, by name and by ID.
    let pp1 = sfc(&api, &["port-pair-show", "PP1", "--json"]).await.json();
    assert_eq!(pp1["ingress"], port_ids["p1"].as_str());
    assert_eq!(pp1["egress"], port_ids["p2"].as_str());
    let pp2 = sfc(&api, &["port-pair-show", "PP2", "--json"]).await.json();
    let pp3 = sfc(&api, &["port-pair-show", "PP3", "--json"]).await.json();
    let pg1 = sfc(&api, &["port-pair-group-show", "PG1", "--json"])
        .await
        .json();
    assert_eq!(pg1["port_pairs"], serde_json::json!([id(&pp1), id(&pp2)]));
    assert_eq!(
        sfc(&api, &["port-pair-group-show", &id(&pg1), "--json"])
            .await
            .json(),
        pg1
    );
    let pg2 = sfc(&api, &["port-pair-group-show", "PG2", "--json"])
        .await
        .json();
    let fc1 = sfc(&api, &["flow-classifier-show", "FC1", "--json"])
        .await
        .json();
    assert_eq!(fc1["source_port_range_min"], 23);
    assert_eq!(fc1["destination_port_range_max"], 100);
    assert_eq!(fc1["logical_source_port"], id(&src).as_str());
    let pc1 = sfc(&api, &["port-chain-show", "PC1", "--json"])
        .await
        .json();
    assert_eq!(
        pc1["port_pair_groups"],
        serde_json::json!([id(&pg1), id(&pg2)])
    );
    assert_eq!(pc1["flow_classifiers"], serde_json::json!([id(&fc1)]));
    assert_eq!(pc1["chain_id"], 1);

    // Lists for people show the key attributes.
    let list = sfc(&api, &["port-pair-list"]).await;
    let line = list
        .ok()
        .lines()
        .find(|l| l.contains("PP1"))
        .unwrap()
        .to_string();
    assert!(
        line.contains(&port_ids["p1"]) && line.contains(&port_ids["p2"]),
        "{list:?}"
    );
    let list = sfc(&api, &["port-pair-group-list"]).await;
    assert!(list.ok().contains(&format!("| {} ", id(&pp2))), "{list:?}");
    let list = sfc(&api, &["flow-classifier-list"]).await;
    assert!(
        list.ok().contains("source[port]: 22.1.20.1/32[23:23],"),
        "{list:?}"
    );
    let list = sfc(&api, &["port-chain-list"]).await;
    let text = list.ok();
    assert!(text.contains(&format!("| PC1  | {} ", id(&pg1))), "{text}");
    assert!(text.contains(&format!("| {} ", id(&pg2))), "{text}");
    let listed = sfc(&api, &["port-chain-list", "--json"]).await.json();
    assert_eq!(listed, serde_json::json!([pc1]));

    // The server's rules come back as its messages, and nothing changes.
    let err = sfc(&api, &["port-pair-delete", "PP1"]).await;
    assert!(err.failed(1).starts_with("sfc: PortPairInUse: "), "{err:?}");
    let err = sfc(&api, &["flow-classifier-delete", "FC1"]).await;
    assert!(
        err.failed(1).starts_with("sfc: FlowClassifierInUse: "),
        "{err:?}"
    );
    let err = sfc(
        &api,
        &["port-pair-create", "--ingress", "p1", "--egress", "p3", "X"],
    )
    .await;
    assert!(
        err.failed(1)
            .starts_with("sfc: PortPairIngressEgressDifferentHost: "),
        "{err:?}"
    );
    let err = sfc(&api, &["port-pair-group-create", "--port-pair", "PP9", "X"]).await;
    assert_eq!(
        err.failed(1),
        "sfc: Unable to find port_pair with name or id 'PP9'\n"
    );
    assert_eq!(
        ids(&sfc(&api, &["port-pair-list", "--json"]).await.json()).len(),
        3
    );

    // Updates.
    let run = sfc(&api, &["port-pair-update", "PP3", "--description", "third"]).await;
    assert_eq!(run.ok(), "Updated port_pair: PP3\n");
    assert_eq!(
        sfc(
            &api,
            &["port-pair-show", &id(&pp3), "-f", "description", "--json"]
        )
        .await
        .json(),
        serde_json::json!({"description": "third"})
    );
    let pg1 = sfc(
        &api,
        &[
            "port-pair-group-update",
            "PG1",
            "--port-pair",
            "PP1",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(pg1["port_pairs"], serde_json::json!([id(&pp1)]));
    let pc1 = sfc(
        &api,
        &["port-chain-update", "PC1", "--no-flow-classifier", "--json"],
    )
    .await
    .json();
    assert_eq!(pc1["flow_classifiers"], serde_json::json!([]));
    let pc1 = sfc(
        &api,
        &[
            "port-chain-update",
            "PC1",
            "--flow-classifier",
            "FC1",
            "--name",
            "PC-one",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(pc1["name"], "PC-one");
    assert_eq!(pc1["flow_classifiers"], serde_json::json!([id(&fc1)]));
    sfc(
        &api,
        &["flow-classifier-update", "FC1", "--description", "seed"],
    )
    .await
    .ok();
    sfc(&api, &["port-update", "src", "--host", "compute2"])
        .await
        .ok();
    let src = sfc(&api, &["port-show", "src", "--json"]).await.json();
    assert_eq!(src["binding:host_id"], "compute2");

    // Several deletes stop at the first refusal and say what is gone.
    let err = sfc(&api, &["port-pair-delete", "PP2", "PP1"]).await;
    assert!(
        err.failed(1).starts_with(
            "sfc: Deleted port_pair(s): PP2; unable to delete port_pair 'PP1': PortPairInUse: "
        ),
        "{err:?}"
    );
    let mut left = ids(&sfc(&api, &["port-pair-list", "--json"]).await.json());
    left.sort();
    let mut expected = [id(&pp1), id(&pp3)];
    expected.sort();
    assert_eq!(left, expected);

    // Tear down in dependency order; everything is gone.
    sfc(&api, &["port-chain-delete", "PC-one"]).await.ok();
    let run = sfc(&api, &["port-pair-group-delete", "PG1", "PG2"]).await;
    assert_eq!(run.ok(), "Deleted port_pair_group(s): PG1, PG2\n");
    sfc(&api, &["port-pair-delete", "PP1", &id(&pp3)])
        .await
        .ok();
    sfc(&api, &["flow-classifier-delete", "FC1"]).await.ok();
    for list in [
        "port-chain-list",
        "port-pair-group-list",
        "port-pair-list",
        "flow-classifier-list",
    ] {
        assert_eq!(
            sfc(&api, &[list, "--json"]).await.json(),
            serde_json::json!([]),
            "{list}"
        );
    }
    let mut all: Vec<&str> = vec!["port-delete"];
    all.extend(["p1", "p2", "p3", "p4", "p5", "p6", "src"]);
    sfc(&api, &all).await.ok();
    sfc(&api, &["subnet-delete", "sub1"]).await.ok();
    sfc(&api, &["net-delete", "net1"]).await.ok();
    assert_eq!(
        sfc(&api, &["port-list", "--json"]).await.json(),
        serde_json::json!([])
    );
}

#[tokio::test]
async fn service_graphs_and_chain_parameters() {
    let api = TestApi::start(Backend::Sqlite).await;
    // Chains over empty groups: no port pair, so no correlation rule stands in the way.
    for n in 1..=3 {
        let group = format!("G{n}");
        sfc(&api, &["port-pair-group-create", &group]).await.ok();
    }
    let c1 = sfc(
        &api,
        &[
            "port-chain-create",
            "--port-pair-group",
            "G1",
            "--chain-id",
            "42",
            "--chain-parameters",
            "correlation=mpls,symmetric=false",
            "C1",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(c1["chain_id"], 42);
    assert_eq!(
        c1["chain_parameters"],
        serde_json::json!({"correlation": "mpls", "symmetric": false})
    );
    let c2 = sfc(
        &api,
        &[
            "port-chain-create",
            "--port-pair-group",
            "G2",
            "C2",
            "--json",
        ],
    )
    .await
    .json();
    let c3 = sfc(
        &api,
        &[
            "port-chain-create",
            "--port-pair-group",
            "G3",
            "C3",
            "--json",
        ],
    )
    .await
    .json();

    let g = sfc(
        &api,
        &[
            "service-graph-create",
            "--branching-point",
            "C1:C2,C3",
            "SG1",
            "--json",
        ],
    )
    .await
    .json();
    let mut expected = serde_json::Map::new();
    expected.insert(id(&c1), serde_json::json!([id(&c2), id(&c3)]));
    assert_eq!(g["port_chains"], Value::Object(expected));
    let list = sfc(&api, &["service-graph-list"]).await;
    assert!(
        list.ok()
            .contains(&format!("| {} -> {}, {} |", id(&c1), id(&c2), id(&c3))),
        "{list:?}"
    );
    sfc(&api, &["service-graph-update", "SG1", "--name", "SG2"])
        .await
        .ok();
    assert_eq!(
        sfc(
            &api,
            &["service-graph-show", &id(&g), "-f", "name", "--json"]
        )
        .await
        .json(),
        serde_json::json!({"name": "SG2"})
    );
    let err = sfc(&api, &["port-chain-delete", "C2"]).await;
    assert!(
        err.failed(1)
            .starts_with("sfc: ServiceGraphPortChainInUse: "),
        "{err:?}"
    );
    let err = sfc(
        &api,
        &["service-graph-create", "--branching-point", "C1:C9", "X"],
    )
    .await;
    assert_eq!(
        err.failed(1),
        "sfc: Unable to find port_chain with name or id 'C9'\n"
    );
    let err = sfc(
        &api,
        &["service-graph-create", "--branching-point", "C1", "X"],
    )
    .await;
    assert!(err.failed(2).contains("SRC_CHAIN:DST_CHAIN"), "{err:?}");
    sfc(&api, &["service-graph-delete", "SG2"]).await.ok();
    sfc(&api, &["port-chain-delete", "C1", "C2", "C3"])
        .await
        .ok();
    sfc(&api, &["port-pair-group-delete", "G1", "G2", "G3"])
        .await
        .ok();
}

#[tokio::test]
async fn vnf_configurations_and_keys() {
    let api = TestApi::start(Backend::Sqlite).await;
    let vm = "0b9e7d4c-5f1a-4b2e-9c3d-7a6f5e4d3c2b";
    sfc(&api, &["net-create", "n"]).await.ok();
    sfc(&api, &["port-create", "n", "--device-id", vm])
        .await
        .ok();

    let set = sfc(
        &api,
        &[
            "vnf-config-set",
            vm,
            "firewall",
            "--payload",
            r#"{"rules": ["allow tcp 22"]}"#,
        ],
    )
    .await;
    let text = set.ok();
    assert!(
        text.contains("| status ") && text.contains("| pending "),
        "{text}"
    );
    let listed = sfc(&api, &["vnf-config-show", vm]).await;
    let text = listed.ok();
    assert!(
        text.contains("| service ") && text.contains("| firewall "),
        "{text}"
    );
    let shown = sfc(&api, &["vnf-config-show", vm, "firewall", "--json"])
        .await
        .json();
    assert_eq!(
        shown["payload"],
        serde_json::json!({"rules": ["allow tcp 22"]})
    );
    assert_eq!(shown["version"], 1);

    // A file that is not JSON goes as its bytes.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.v4");
    std::fs::write(&file, b"*filter\n-A INPUT -j DROP\nCOMMIT\n").unwrap();
    let set = sfc(
        &api,
        &[
            "vnf-config-set",
            vm,
            "firewall",
            "--file",
            file.to_str().unwrap(),
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(set["version"], 2);
    let shown = sfc(&api, &["vnf-config-show", vm, "firewall", "--json"])
        .await
        .json();
    assert_eq!(
        shown["payload_base64"],
        "KmZpbHRlcgotQSBJTlBVVCAtaiBEUk9QCkNPTU1JVAo="
    );

    let err = sfc(&api, &["vnf-config-set", vm, "Bad Name", "--payload", "1"]).await;
    assert!(err.failed(1).starts_with("sfc: InvalidInput: "), "{err:?}");
    let run = sfc(&api, &["vnf-config-delete", vm, "firewall"]).await;
    assert_eq!(
        run.ok(),
        format!("Deleted the firewall configuration of instance {vm}\n")
    );
    let err = sfc(&api, &["vnf-config-show", vm, "firewall"]).await;
    assert!(
        err.failed(1).starts_with("sfc: VnfConfigNotFound: "),
        "{err:?}"
    );

    // Keys are the administrator's.
    let key = "5a".repeat(32);
    let err = sfc(&api, &["--project", "p1", "vnf-key-create", vm]).await;
    assert!(
        err.failed(1).starts_with("sfc: PolicyNotAuthorized: "),
        "{err:?}"
    );
    let created = sfc(&api, &["vnf-key-create", vm, "--key", &key]).await;
    let text = created.ok();
    assert!(
        text.starts_with("Created a new key:\n") && text.contains(&key),
        "{text}"
    );
    let shown = sfc(&api, &["vnf-key-show", vm, "--json"]).await.json();
    assert_eq!(
        (&shown["instance_id"], &shown["key"]),
        (&vm.into(), &key.clone().into())
    );
    let err = sfc(&api, &["vnf-key-create", vm]).await;
    assert!(
        err.failed(1).starts_with("sfc: InstanceKeyExists: "),
        "{err:?}"
    );

    // No relay has connected.
    assert_eq!(
        sfc(&api, &["vnf-host-list", "--json"]).await.json(),
        serde_json::json!([])
    );
    let hosts = sfc(&api, &["vnf-host-list"]).await;
    assert!(hosts.ok().starts_with("+------+-----------+"), "{hosts:?}");
}
