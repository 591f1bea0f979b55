//! Reference handlers of the `vnf-agent` binary: firewall, load balancer, VPN and files.
//!
//! Each handler parses its JSON payload into typed, bounded values (unknown fields rejected),
//! validates every field before touching anything, renders the target configuration itself
//! (so controller strings cannot add lines or directives), and applies it all-or-nothing:
//! files are staged next to their targets, checked by the service's own tool where it has
//! one (`nft -c`, `haproxy -c`), renamed into place together, and put back if the reload
//! fails. Two boundaries keep controller data contained: [`root::Root`] confines every path
//! to a root directory without following symbolic links, and [`runner::CommandRunner`] runs
//! fixed programs with fixed argument vectors, never a shell. The formats are documented in
//! `vnf-agent/HANDLERS.md`.

pub mod files;
pub mod firewall;
pub mod loadbalancer;
pub mod root;
pub mod runner;
#[cfg(test)]
mod testing;
mod validate;
pub mod vpn;

use std::path::Path;
use std::sync::Arc;

use relay_protocol::ServiceName;

use crate::handler::Handler;

pub use files::{FilesHandler, FilesPolicy, PolicyError};
pub use firewall::FirewallHandler;
pub use loadbalancer::LoadBalancerHandler;
pub use root::Root;
pub use runner::{CommandLine, CommandOutput, CommandRunner, SystemRunner};
pub use vpn::VpnHandler;

/// Service names of the reference handlers, as announced in Hello.
pub const FIREWALL: &str = "firewall";
pub const LOADBALANCER: &str = "loadbalancer";
pub const VPN: &str = "vpn";
pub const FILES: &str = "files";

fn service(name: &'static str) -> ServiceName {
    // The four names above are lowercase ASCII letters, which `ServiceName::new` accepts;
    // `default_set_has_the_four_services` exercises every one.
    #[allow(clippy::expect_used)]
    ServiceName::new(name).expect("reference service names are valid")
}

/// The reference handlers, writing below `root` (`/` in production) and running the real
/// programs through [`SystemRunner`].
pub fn default_set(root: &Path, files_policy: FilesPolicy) -> Vec<(ServiceName, Box<dyn Handler>)> {
    default_set_with(
        Root::new(root),
        files_policy,
        Arc::new(SystemRunner::default()),
    )
}

/// [`default_set`] with another runner (a fake in tests, a different search path).
pub fn default_set_with(
    root: Root,
    files_policy: FilesPolicy,
    runner: Arc<dyn CommandRunner>,
) -> Vec<(ServiceName, Box<dyn Handler>)> {
    vec![
        (
            service(FIREWALL),
            Box::new(FirewallHandler::new(root.clone(), runner.clone())),
        ),
        (
            service(LOADBALANCER),
            Box::new(LoadBalancerHandler::new(root.clone(), runner.clone())),
        ),
        (
            service(VPN),
            Box::new(VpnHandler::new(root.clone(), runner.clone())),
        ),
        (
            service(FILES),
            Box::new(FilesHandler::new(root, files_policy, runner)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::testing::{update, FakeRunner, TestDir};
    use super::*;

    #[test]
    fn default_set_has_the_four_services() {
        let t = TestDir::new();
        let names: Vec<String> = default_set(t.root.path(), FilesPolicy::default())
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(names, ["firewall", "loadbalancer", "vpn", "files"]);
    }

    #[test]
    fn every_handler_rejects_garbage_without_writing() {
        let t = TestDir::new();
        let fake = FakeRunner::with_installed(&["nft", "haproxy", "ipsec", "systemctl"]);
        let policy = FilesPolicy::new().allow_dir("/etc").unwrap();
        for (name, mut handler) in default_set_with(t.root.clone(), policy, fake.arc()) {
            for payload in [
                &b""[..],
                b"null",
                b"[]",
                b"{\"unknown\": 1}",
                b"\xff\xfe",
                b"{\"rules\": [] } trailing",
            ] {
                let err = handler.apply(&update(name.as_str(), payload)).unwrap_err();
                assert!(
                    err.0.starts_with(&format!("{name} payload")),
                    "{name}: {err}"
                );
            }
        }
        assert!(t.root_snapshot().is_empty());
        assert!(fake.calls().is_empty());
    }
}
