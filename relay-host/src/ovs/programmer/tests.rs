//! The programmer against a fake bridge that keeps flows the way OpenFlow does: keyed by table
//! and match, replaced by an add with the same key, changed in place by a strict modify,
//! removed with the group they use.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use relay_protocol::flow::{
    Action, Bucket, FlowSpec, GroupKind, GroupSpec, Match, PortMask, Selection,
};
use relay_protocol::Uuid;

use super::*;
use crate::ovs::bridge::DumpedFlow;
use crate::ovs::render::GROUP_ID_BASE;

const SRC: Uuid = Uuid::from_u128(0x5c);
const SF_IN: Uuid = Uuid::from_u128(0x51);
const SF_OUT: Uuid = Uuid::from_u128(0x50);

/// A flow on the fake bridge: cookie, actions, and the bundle that created it (standing in for
/// the flow's counters: a flow that was never re-created keeps its number).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FakeFlow {
    cookie: u64,
    actions: String,
    born: usize,
}

#[derive(Debug, Default)]
struct FakeBridge {
    ports: PortMap,
    flows: BTreeMap<(u8, String), FakeFlow>,
    groups: BTreeMap<u32, String>,
    bundles: Vec<Vec<BundleOp>>,
    /// Flow text `ovs-ofctl` would refuse.
    refuse: Option<String>,
    /// Refuse bundles that contain this text.
    fail_bundles_with: Option<String>,
    parse_runs: usize,
    dumps: usize,
    /// Print flows and groups the way OVS does, differently from how they were written
    /// (see [`canon`]); otherwise they are printed as written.
    canonicalising: bool,
}

/// A stand-in for OVS's normalisation: a few spellings change, idempotently.
fn canon(text: &str) -> String {
    text.replace("dl_type=0x0800,nw_proto=6", "tcp")
        .replace("pop_mpls:0x0800", "pop_mpls:0x800")
        .replace("weight:", "weight=")
}

impl FakeBridge {
    fn with_ports(ports: &[(Uuid, u32)]) -> FakeBridge {
        let mut b = FakeBridge::default();
        for (id, n) in ports {
            b.ports.by_iface_id.insert(*id, *n);
            b.ports.by_name.insert(format!("tap{n}"), *n);
        }
        b
    }

    fn canonicalising(ports: &[(Uuid, u32)]) -> FakeBridge {
        FakeBridge {
            canonicalising: true,
            ..FakeBridge::with_ports(ports)
        }
    }

    fn print(&self, text: &str) -> String {
        if self.canonicalising {
            canon(text)
        } else {
            text.to_owned()
        }
    }

    fn flows_of(&self, chain: u64) -> Vec<(u8, String, String)> {
        self.flows
            .iter()
            .filter(|(_, f)| f.cookie == flow_cookie(chain))
            .map(|((t, m), f)| (*t, m.clone(), f.actions.clone()))
            .collect()
    }
}

impl Bridge for FakeBridge {
    async fn ports(&mut self) -> Result<PortMap, OvsError> {
        Ok(self.ports.clone())
    }

    async fn canonical_flows(
        &mut self,
        flows: &[RenderedFlow],
    ) -> Result<Vec<CanonicalFlow>, OvsError> {
        self.parse_runs += 1;
        flows
            .iter()
            .map(|f| {
                if let Some(bad) = &self.refuse {
                    if f.parse_line().contains(bad.as_str()) {
                        return Err(OvsError::Tool {
                            command: "ovs-ofctl parse-flows".into(),
                            detail: "no usable protocol".into(),
                        });
                    }
                }
                Ok(CanonicalFlow {
                    table: f.table,
                    matches: self.print(&f.matches),
                    actions: self.print(&f.actions),
                })
            })
            .collect()
    }

    async fn canonical_group(&mut self, group: &str) -> Result<String, OvsError> {
        Ok(self.print(group))
    }

    async fn dump_flows(&mut self, cookie: u64, mask: u64) -> Result<Vec<DumpedFlow>, OvsError> {
        self.dumps += 1;
        Ok(self
            .flows
            .iter()
            .filter(|(_, f)| f.cookie & mask == cookie & mask)
            .map(|((table, matches), f)| DumpedFlow {
                cookie: f.cookie,
                flow: CanonicalFlow {
                    table: *table,
                    matches: matches.clone(),
                    actions: f.actions.clone(),
                },
            })
            .collect())
    }

    async fn dump_groups(&mut self) -> Result<Vec<(u32, String)>, OvsError> {
        Ok(self.groups.iter().map(|(k, v)| (*k, v.clone())).collect())
    }

    async fn apply(&mut self, ops: &[BundleOp]) -> Result<(), OvsError> {
        let refused = |why: String| OvsError::Tool {
            command: "ovs-ofctl bundle".into(),
            detail: why,
        };
        if let Some(bad) = &self.fail_bundles_with {
            if ops.iter().any(|op| op.line().contains(bad.as_str())) {
                return Err(refused("OFPBFC_MSG_FAILED".into()));
            }
        }
        let born = self.bundles.len();
        let (mut flows, mut groups) = (self.flows.clone(), self.groups.clone());
        for op in ops {
            match op {
                BundleOp::AddGroup(g) | BundleOp::ModifyGroup(g) => {
                    let id = g["group_id=".len()..].split(',').next().unwrap();
                    groups.insert(id.parse().unwrap(), self.print(g));
                }
                BundleOp::DeleteGroup(id) => {
                    groups.remove(id);
                    let used = format!("group:{id}");
                    flows.retain(|_, f| !f.actions.contains(&used));
                }
                BundleOp::AddFlow { cookie, flow } => {
                    for g in flow
                        .actions
                        .split(',')
                        .filter_map(|a| a.strip_prefix("group:"))
                    {
                        if !groups.contains_key(&g.parse().unwrap()) {
                            return Err(refused(format!("OFPBAC_BAD_OUT_GROUP {g}")));
                        }
                    }
                    flows.insert(
                        (flow.table, self.print(&flow.matches)),
                        FakeFlow {
                            cookie: *cookie,
                            actions: self.print(&flow.actions),
                            born,
                        },
                    );
                }
                BundleOp::ModifyFlow {
                    cookie,
                    table,
                    matches,
                    actions,
                } => {
                    if let Some(f) = flows.get_mut(&(*table, self.print(matches))) {
                        if f.cookie == *cookie {
                            f.actions = self.print(actions);
                        }
                    }
                }
                BundleOp::DeleteFlow {
                    cookie,
                    table,
                    matches,
                } => {
                    let key = (*table, self.print(matches));
                    if flows.get(&key).is_some_and(|f| f.cookie == *cookie) {
                        flows.remove(&key);
                    }
                }
            }
        }
        self.flows = flows;
        self.groups = groups;
        self.bundles.push(ops.to_vec());
        Ok(())
    }
}

fn classifier(tp_dst: u16) -> FlowSpec {
    FlowSpec {
        table: 0,
        priority: 30,
        matches: vec![
            Match::InPort(PortRef::Neutron(SRC)),
            Match::EthType(0x0800),
            Match::IpProto(6),
            Match::TpDst(PortMask::exact(tp_dst)),
        ],
        actions: vec![Action::Group(1)],
    }
}

fn ingress() -> FlowSpec {
    FlowSpec {
        table: 10,
        priority: 1,
        matches: vec![Match::EthType(0x8847), Match::MplsLabel(511)],
        actions: vec![
            Action::PopMpls { ethertype: 0x0800 },
            Action::Output(PortRef::Neutron(SF_IN)),
        ],
    }
}

fn group(weight: u16) -> GroupSpec {
    GroupSpec {
        group: 1,
        kind: GroupKind::Select,
        selection: Selection::Default,
        buckets: vec![Bucket {
            weight,
            actions: vec![Action::Resubmit { table: 5 }],
        }],
    }
}

fn chain(cookie: u64, version: u64, flows: Vec<FlowSpec>) -> FlowCommand {
    FlowCommand::ChainFlows(ChainFlows {
        cookie,
        version,
        part: 0,
        parts: 1,
        groups: vec![group(1)],
        flows,
    })
}

fn programmer(bridge: FakeBridge) -> Programmer<FakeBridge> {
    Programmer::new(bridge, OvsMetrics::default())
}

fn installed(flows: u32) -> ChainState {
    ChainState::Installed { flows, groups: 1 }
}

#[tokio::test]
async fn a_chain_is_installed_in_one_bundle_and_reinstalling_it_changes_nothing() {
    let mut p = programmer(FakeBridge::with_ports(&[(SRC, 3), (SF_IN, 4)]));
    let st = p.handle(chain(1, 1, vec![classifier(80), ingress()])).await;
    assert_eq!(st.len(), 1);
    assert_eq!((st[0].cookie, st[0].version), (1, 1));
    assert_eq!(st[0].state, installed(2));
    let b = p.bridge();
    assert_eq!(b.bundles.len(), 1);
    assert_eq!(
        b.flows_of(1),
        [
            (
                0,
                "priority=30,in_port=3,dl_type=0x0800,nw_proto=6,tp_dst=0x50/0xffff".into(),
                format!("group:{}", GROUP_ID_BASE + 1)
            ),
            (
                10,
                "priority=1,dl_type=0x8847,mpls_label=511".into(),
                "pop_mpls:0x0800,output:4".into()
            ),
        ]
    );
    // The group comes before the flow that uses it.
    assert!(matches!(b.bundles[0][0], BundleOp::AddGroup(_)));

    let st = p.handle(chain(1, 1, vec![classifier(80), ingress()])).await;
    assert_eq!(st[0].state, installed(2), "every update is answered");
    assert_eq!(p.bridge().bundles.len(), 1, "nothing to change, no bundle");
    assert!(p.reconcile().await.is_empty(), "no change, no report");
}

#[tokio::test]
async fn an_update_applies_only_the_difference() {
    let mut p = programmer(FakeBridge::with_ports(&[(SRC, 3), (SF_IN, 4), (SF_OUT, 5)]));
    p.handle(chain(1, 1, vec![classifier(80), classifier(81), ingress()]))
        .await;
    let mut changed = ingress();
    changed.actions[1] = Action::Output(PortRef::Neutron(SF_OUT));
    let st = p
        .handle(FlowCommand::ChainFlows(ChainFlows {
            cookie: 1,
            version: 2,
            part: 0,
            parts: 1,
            groups: vec![group(5)],
            flows: vec![classifier(80), classifier(82), changed],
        }))
        .await;
    assert_eq!(st[0].version, 2);
    let b = p.bridge();
    assert_eq!(b.bundles.len(), 2);
    let kinds: Vec<&str> = b.bundles[1]
        .iter()
        .map(|op| op.line().split(' ').take(2).collect::<Vec<_>>().join(" "))
        .map(|s| match s.as_str() {
            "group modify" => "group modify",
            "flow delete_strict" => "delete",
            "flow modify_strict" => "modify",
            "flow add" => "add",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["group modify", "delete", "modify", "add"]);
    // The unchanged classifier and the modified flow were never re-created.
    let born: Vec<usize> = b.flows.values().map(|f| f.born).collect();
    assert_eq!(
        born,
        [0, 1, 0],
        "tp_dst 80 and the ingress flow kept, 82 new"
    );
    assert!(b
        .flows_of(1)
        .iter()
        .any(|(_, _, a)| a == "pop_mpls:0x0800,output:5"));
    assert!(b.groups.values().all(|g| g.contains("weight:5")));
}

#[tokio::test]
async fn removal_takes_only_that_chain_and_unused_groups_go_once_synced() {
    let mut p = programmer(FakeBridge::with_ports(&[(SRC, 3), (SF_IN, 4)]));
    p.handle(FlowCommand::FlowSync(vec![])).await;
    p.handle(chain(1, 1, vec![classifier(80)])).await;
    let mut two = chain(2, 1, vec![classifier(443)]);
    if let FlowCommand::ChainFlows(c) = &mut two {
        c.groups[0].group = 2;
        c.flows[0].actions = vec![Action::Group(2)];
    }
    p.handle(two).await;
    assert_eq!(p.bridge().groups.len(), 2);
    let st = p.handle(FlowCommand::ChainRemoved(1)).await;
    assert_eq!(st.last().unwrap().state, ChainState::Removed);
    let b = p.bridge();
    assert!(b.flows_of(1).is_empty());
    assert_eq!(b.flows_of(2).len(), 1);
    assert_eq!(
        b.groups.keys().copied().collect::<Vec<_>>(),
        [GROUP_ID_BASE + 2]
    );
}

#[tokio::test]
async fn after_a_restart_unknown_chains_stay_until_flow_sync_removes_the_stale_ones() {
    let mut bridge = FakeBridge::with_ports(&[(SRC, 3), (SF_IN, 4)]);
    for (chain, m) in [
        (1, "priority=30,in_port=3"),
        (2, "priority=31"),
        (3, "priority=32"),
    ] {
        bridge.flows.insert(
            (0, m.into()),
            FakeFlow {
                cookie: flow_cookie(chain),
                actions: "normal".into(),
                born: 0,
            },
        );
    }
    // Someone else's flow, never ours to touch.
    bridge.flows.insert(
        (0, "priority=0".into()),
        FakeFlow {
            cookie: 0,
            actions: "NORMAL".into(),
            born: 0,
        },
    );
    bridge.groups.insert(GROUP_ID_BASE + 9, "stale".into());
    bridge.groups.insert(7, "not ours".into());
    let mut p = programmer(bridge);
    p.handle(chain(1, 4, vec![classifier(80)])).await;
    let b = p.bridge();
    assert_eq!(
        b.flows_of(1).len(),
        1,
        "chain 1 is managed: its old flow went"
    );
    assert_eq!(b.flows_of(2).len(), 1, "unknown before the sync: kept");
    assert_eq!(b.flows_of(3).len(), 1);
    assert!(b.groups.contains_key(&(GROUP_ID_BASE + 9)));

    p.handle(FlowCommand::FlowSync(vec![1, 3])).await;
    let b = p.bridge();
    assert_eq!(b.flows_of(1).len(), 1);
    assert!(b.flows_of(2).is_empty(), "not listed: stale");
    assert_eq!(
        b.flows_of(3).len(),
        1,
        "listed but not received: left alone"
    );
    assert!(b.flows.contains_key(&(0, "priority=0".into())));
    assert_eq!(
        b.groups.keys().copied().collect::<Vec<_>>(),
        [7, GROUP_ID_BASE + 1]
    );
    assert!(p.synced());
}

#[tokio::test]
async fn a_chain_waits_for_its_ports_and_follows_a_renumbered_port() {
    let mut p = programmer(FakeBridge::with_ports(&[(SRC, 3)]));
    let st = p.handle(chain(1, 1, vec![classifier(80), ingress()])).await;
    assert_eq!(
        st[0].state,
        ChainState::Pending {
            missing: vec![PortRef::Neutron(SF_IN)]
        }
    );
    assert!(p.bridge().flows.is_empty(), "nothing of a pending chain");
    assert!(
        p.poll_ports().await.is_empty(),
        "no port change, nothing to do"
    );

    p.bridge_mut().ports.by_iface_id.insert(SF_IN, 4);
    let st = p.poll_ports().await;
    assert_eq!(st[0].state, installed(2));
    assert_eq!(p.bridge().flows_of(1).len(), 2);

    // The VM rebooted and its port came back under another number.
    p.bridge_mut().ports.by_iface_id.insert(SF_IN, 9);
    assert!(p.poll_ports().await.is_empty(), "still installed");
    assert!(p
        .bridge()
        .flows_of(1)
        .iter()
        .any(|(_, _, a)| a.ends_with("output:9")));

    p.bridge_mut().ports.by_iface_id.remove(&SF_IN);
    let st = p.poll_ports().await;
    assert!(matches!(st[0].state, ChainState::Pending { .. }));
    assert!(
        p.bridge().flows_of(1).is_empty(),
        "stale port numbers removed"
    );
}

#[tokio::test]
async fn invalid_rules_are_rejected_without_touching_the_bridge() {
    let mut p = programmer(FakeBridge::with_ports(&[(SRC, 3), (SF_IN, 4)]));
    p.handle(chain(1, 1, vec![classifier(80)])).await;
    let before = p.bridge().flows.clone();

    let mut bad = classifier(81);
    bad.matches.retain(|m| *m != Match::IpProto(6));
    let st = p.handle(chain(1, 2, vec![bad])).await;
    assert_eq!(st[0].version, 2);
    let ChainState::Rejected { reason } = &st[0].state else {
        panic!("{st:?}")
    };
    assert_eq!(
        reason,
        "flow #0: a transport port needs ip_proto TCP, UDP or SCTP"
    );

    // Valid for us, refused by ovs-ofctl: the bisection names the flow.
    p.bridge_mut().refuse = Some("strip_vlan".into());
    let mut stripping = ingress();
    stripping.actions.insert(0, Action::StripVlan);
    let st = p
        .handle(chain(1, 3, vec![classifier(80), classifier(82), stripping]))
        .await;
    let ChainState::Rejected { reason } = &st[0].state else {
        panic!("{st:?}")
    };
    assert!(
        reason.starts_with("flow #2: refused by ovs-ofctl"),
        "{reason}"
    );

    let st = p
        .handle(FlowCommand::ChainFlows(ChainFlows {
            cookie: 1 << 60,
            version: 1,
            part: 0,
            parts: 1,
            groups: vec![],
            flows: vec![],
        }))
        .await;
    assert!(matches!(st[0].state, ChainState::Rejected { .. }));

    assert_eq!(p.bridge().flows, before);
    assert_eq!(p.bridge().bundles.len(), 1);
    // The last good version stays installed and is still reconciled.
    assert!(p.reconcile().await.iter().all(|s| s.version == 1));
    assert_eq!(p.bridge().flows, before);
}

#[tokio::test]
async fn a_refused_bundle_is_retried_chain_by_chain() {
    let mut p = programmer(FakeBridge::with_ports(&[(SRC, 3), (SF_IN, 4)]));
    p.handle(FlowCommand::FlowSync(vec![1, 2])).await;
    let mut two = chain(2, 1, vec![ingress()]);
    if let FlowCommand::ChainFlows(c) = &mut two {
        c.groups.clear();
    }
    p.bridge_mut().fail_bundles_with = Some("tp_dst".into());
    // Both arrive before the bridge is reconciled again: one bundle for both.
    p.chains.insert(
        1,
        ChainRules {
            cookie: 1,
            version: 1,
            groups: vec![group(1)],
            flows: vec![classifier(80)],
        },
    );
    let st = p.handle(two).await;
    let by_chain: BTreeMap<u64, &ChainState> = st.iter().map(|s| (s.cookie, &s.state)).collect();
    assert!(matches!(by_chain[&1], ChainState::Failed { .. }), "{st:?}");
    assert_eq!(
        *by_chain[&2],
        ChainState::Installed {
            flows: 1,
            groups: 0
        }
    );
    assert_eq!(p.bridge().flows_of(2).len(), 1);
    assert!(p.bridge().flows_of(1).is_empty());

    p.bridge_mut().fail_bundles_with = None;
    let st = p.reconcile().await;
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].state, installed(1), "retried at the next reconcile");
}

#[tokio::test]
async fn chains_that_clash_on_a_group_or_a_flow_fail_the_higher_numbered_one() {
    let mut p = programmer(FakeBridge::with_ports(&[(SRC, 3), (SF_IN, 4)]));
    p.handle(chain(1, 1, vec![classifier(80)])).await;
    let mut clash = chain(2, 1, vec![classifier(81)]);
    if let FlowCommand::ChainFlows(c) = &mut clash {
        c.groups[0].buckets[0].weight = 9;
    }
    let st = p.handle(clash).await;
    let ChainState::Failed { reason } = &st[0].state else {
        panic!("{st:?}")
    };
    assert_eq!(reason, "group 1 differs from the one chain 1 declares");

    let st = p.handle(chain(3, 1, vec![classifier(80)])).await;
    let ChainState::Failed { reason } = &st[0].state else {
        panic!("{st:?}")
    };
    assert!(reason.contains("is also chain 1's"), "{reason}");
    // Identical shared groups are fine.
    let st = p.handle(chain(4, 1, vec![classifier(82)])).await;
    assert_eq!(st[0].state, installed(1));
    assert_eq!(p.bridge().flows_of(1).len(), 1);
    assert_eq!(p.bridge().flows_of(4).len(), 1);
}

#[tokio::test]
async fn multi_part_updates_apply_once_complete() {
    let mut p = programmer(FakeBridge::with_ports(&[(SRC, 3), (SF_IN, 4)]));
    let rules = ChainRules {
        cookie: 5,
        version: 1,
        groups: vec![group(1)],
        flows: (0..2000).map(classifier).collect(),
    };
    let parts = rules.into_parts().unwrap();
    assert!(parts.len() > 1);
    let n = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        let st = p.handle(FlowCommand::ChainFlows(part)).await;
        if i + 1 < n {
            assert!(st.is_empty());
            assert!(p.bridge().bundles.is_empty());
        } else {
            assert_eq!(
                st[0].state,
                ChainState::Installed {
                    flows: 2000,
                    groups: 1
                }
            );
        }
    }
    assert_eq!(p.bridge().bundles.len(), 1);
}

#[tokio::test]
async fn commands_that_arrive_together_make_one_bundle_with_the_same_outcome() {
    let mut p = programmer(FakeBridge::with_ports(&[(SRC, 3), (SF_IN, 4)]));
    let st = p
        .handle_batch(vec![
            chain(1, 1, vec![classifier(80), ingress()]),
            chain(2, 1, vec![classifier(81)]),
            chain(3, 1, vec![classifier(82)]),
            FlowCommand::ChainRemoved(3),
            // Removed, then back: installed, never reported removed.
            chain(4, 1, vec![classifier(83)]),
            FlowCommand::ChainRemoved(4),
            chain(4, 2, vec![classifier(84)]),
        ])
        .await;
    assert_eq!(p.bridge().bundles.len(), 1, "one reconcile for the batch");
    let mut got: Vec<(u64, u64, ChainState)> = st
        .into_iter()
        .map(|s| (s.cookie, s.version, s.state))
        .collect();
    got.sort_by_key(|(c, v, _)| (*c, *v));
    assert_eq!(
        got,
        [
            (1, 1, installed(2)),
            (2, 1, installed(1)),
            (3, 1, ChainState::Removed),
            (4, 2, installed(1)),
        ]
    );
    assert!(p.bridge().flows_of(3).is_empty());
    assert_eq!(p.bridge().flows_of(4).len(), 1);
}

/// (table, match, actions, bundle that made it) of a chain's flows.
fn born_of(b: &FakeBridge, chain: u64) -> Vec<(u8, String, String, usize)> {
    b.flows
        .iter()
        .filter(|(_, f)| f.cookie == flow_cookie(chain))
        .map(|((t, m), f)| (*t, m.clone(), f.actions.clone(), f.born))
        .collect()
}

#[tokio::test]
async fn changes_after_the_first_reconcile_read_nothing_back_and_verify_repairs_drift() {
    let mut p = programmer(FakeBridge::canonicalising(&[
        (SRC, 3),
        (SF_IN, 4),
        (SF_OUT, 5),
    ]));
    p.handle(chain(1, 1, vec![classifier(80), ingress()])).await;
    assert_eq!(p.bridge().dumps, 1, "the first reconcile reads the bridge");
    let first = born_of(p.bridge(), 1);
    assert_eq!(first[0].1, "priority=30,in_port=3,tcp,tp_dst=0x50/0xffff");

    // More chains and an update: the record of what was written is enough.
    let st = p
        .handle_batch(vec![
            chain(2, 1, vec![classifier(81)]),
            chain(1, 2, vec![classifier(80), classifier(82), ingress()]),
        ])
        .await;
    assert!(
        st.iter()
            .all(|s| matches!(s.state, ChainState::Installed { .. })),
        "{st:?}"
    );
    assert_eq!(p.bridge().dumps, 1);
    assert_eq!(p.bridge().bundles.len(), 2);
    let after = born_of(p.bridge(), 1);
    assert_eq!(after.len(), 3);
    assert!(
        after.contains(&first[0]),
        "unchanged flows are not rewritten"
    );
    assert!(after.contains(&first[1]));
    assert_eq!(born_of(p.bridge(), 2).len(), 1);

    // The same rules again: nothing to do.
    p.handle(chain(1, 2, vec![classifier(80), classifier(82), ingress()]))
        .await;
    assert_eq!(p.bridge().bundles.len(), 2);

    // Somebody deletes one of our flows and changes our group: only a verification sees it.
    let gone = (first[1].0, first[1].1.clone());
    p.bridge_mut().flows.remove(&gone);
    let group = GROUP_ID_BASE + 1;
    p.bridge_mut().groups.insert(group, "tampered".into());
    assert!(p.reconcile().await.is_empty());
    assert!(!p.bridge().flows.contains_key(&gone));
    p.verify().await;
    assert_eq!(p.bridge().dumps, 2);
    assert!(p.bridge().flows.contains_key(&gone), "repaired");
    assert!(p.bridge().groups[&group].contains("weight=1"), "repaired");
    assert_eq!(born_of(p.bridge(), 1).len(), 3);

    // And later changes are incremental again, without reading the bridge.
    p.handle(chain(2, 2, vec![classifier(83)])).await;
    assert_eq!(p.bridge().dumps, 2);
    let two = born_of(p.bridge(), 2);
    assert_eq!(two.len(), 1);
    assert!(two[0].1.ends_with("tp_dst=0x53/0xffff"), "{two:?}");
}

#[tokio::test]
async fn a_restarted_relay_keeps_identical_flows_and_stays_incremental() {
    // What the previous relay left: chain 1 as the switch prints it.
    let mut before = programmer(FakeBridge::canonicalising(&[(SRC, 3), (SF_IN, 4)]));
    before
        .handle(chain(1, 1, vec![classifier(80), ingress()]))
        .await;
    let left = std::mem::take(&mut before.bridge_mut().flows);
    let groups = std::mem::take(&mut before.bridge_mut().groups);

    let mut bridge = FakeBridge::canonicalising(&[(SRC, 3), (SF_IN, 4)]);
    bridge.flows = left.clone();
    bridge.groups = groups;
    let mut p = programmer(bridge);
    // The first reconcile, before the controller speaks, reads the flows back.
    assert!(p.reconcile().await.is_empty());
    let st = p.handle(chain(1, 1, vec![classifier(80), ingress()])).await;
    assert_eq!(st[0].state, installed(2));
    assert!(
        p.bridge().bundles.is_empty(),
        "identical: nothing rewritten"
    );
    assert_eq!(p.bridge().flows, left);

    p.handle(FlowCommand::FlowSync(vec![1])).await;
    let st = p
        .handle(chain(1, 2, vec![classifier(80), classifier(81), ingress()]))
        .await;
    assert_eq!(st[0].state, installed(3));
    assert_eq!(
        p.bridge().dumps,
        2,
        "read once at the start, once for chain 1's rules"
    );
    let ops = p.bridge().bundles.last().unwrap();
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert!(matches!(ops[0], BundleOp::AddFlow { .. }));
    for (key, flow) in &left {
        assert_eq!(p.bridge().flows.get(key), Some(flow), "kept as it was");
    }
}
