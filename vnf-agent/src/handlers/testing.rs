//! Test doubles and helpers shared by the handlers' tests.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use relay_protocol::{ServiceName, Uuid};

use super::root::Root;
use super::runner::{CommandLine, CommandOutput, CommandRunner};
use crate::handler::ConfigUpdate;

#[derive(Debug, Default)]
struct State {
    installed: BTreeSet<String>,
    responses: Vec<(String, CommandOutput)>,
    calls: Vec<CommandLine>,
}

/// Records every command and answers from a script: the first response whose prefix matches
/// the command's display form, else success.
#[derive(Debug, Clone, Default)]
pub(crate) struct FakeRunner {
    state: Arc<Mutex<State>>,
}

impl FakeRunner {
    pub(crate) fn with_installed(programs: &[&str]) -> FakeRunner {
        let fake = FakeRunner::default();
        fake.state.lock().unwrap().installed = programs.iter().map(|p| p.to_string()).collect();
        fake
    }

    /// Commands whose display form starts with `prefix` get `output`.
    pub(crate) fn respond(&self, prefix: &str, output: CommandOutput) {
        self.state
            .lock()
            .unwrap()
            .responses
            .push((prefix.to_owned(), output));
    }

    pub(crate) fn calls(&self) -> Vec<CommandLine> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The calls as text with the root directory shown as `<root>`.
    pub(crate) fn calls_shown(&self, root: &Root) -> Vec<String> {
        let root = root.path().display().to_string();
        self.calls()
            .iter()
            .map(|c| c.to_string().replace(&root, "<root>"))
            .collect()
    }

    pub(crate) fn arc(&self) -> Arc<dyn CommandRunner> {
        Arc::new(self.clone())
    }

    /// No program is a shell or an interpreter, every program is one of `allowed`, and no
    /// argument contains any of `hostile`.
    pub(crate) fn assert_no_shell(&self, allowed: &[&str], hostile: &[&str]) {
        for call in self.calls() {
            assert!(
                allowed.contains(&call.program.as_str()),
                "unexpected program in {call}"
            );
            for arg in &call.args {
                let arg = arg.to_string_lossy();
                for h in hostile {
                    assert!(!arg.contains(h), "{h:?} reached the command line {call}");
                }
            }
        }
    }
}

impl CommandRunner for FakeRunner {
    fn is_installed(&self, program: &str) -> bool {
        self.state.lock().unwrap().installed.contains(program)
    }

    fn run(&self, command: &CommandLine) -> io::Result<CommandOutput> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(command.clone());
        let shown = command.to_string();
        Ok(state
            .responses
            .iter()
            .find(|(prefix, _)| shown.starts_with(prefix.as_str()))
            .map(|(_, out)| out.clone())
            .unwrap_or_else(CommandOutput::ok))
    }
}

/// A temporary directory holding `root/` (the handlers' root) and `outside/` (with a
/// `shadow` file) to show that nothing outside the root is touched.
#[derive(Debug)]
pub(crate) struct TestDir {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) root: Root,
}

impl TestDir {
    pub(crate) fn new() -> TestDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/shadow"), "root:*:19000::::::\n").unwrap();
        let root = Root::new(dir.path().join("root"));
        TestDir { dir, root }
    }

    pub(crate) fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel.trim_start_matches('/'))
    }

    pub(crate) fn write(&self, rel: &str, contents: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }

    pub(crate) fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    /// Every entry below the temporary directory except under `root/`, with its content.
    pub(crate) fn outside_snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut all = walk(self.dir.path());
        all.retain(|p, _| !p.starts_with("root"));
        all
    }

    /// Every entry below the root, with its content (`<dir>`, `-> target` for links).
    pub(crate) fn root_snapshot(&self) -> BTreeMap<PathBuf, String> {
        walk(self.root.path())
    }

    /// The files below the root, as absolute paths inside the root.
    pub(crate) fn root_files(&self) -> Vec<String> {
        self.root_snapshot()
            .into_iter()
            .filter(|(_, v)| v != "<dir>")
            .map(|(p, _)| format!("/{}", p.display()))
            .collect()
    }
}

fn walk(base: &Path) -> BTreeMap<PathBuf, String> {
    fn go(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("-> {}", target.display()));
            } else if meta.is_dir() {
                out.insert(rel, "<dir>".to_owned());
                go(base, &path, out);
            } else {
                out.insert(
                    rel,
                    String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    go(base, base, &mut out);
    out
}

pub(crate) fn update(service: &str, payload: impl Into<Vec<u8>>) -> ConfigUpdate {
    ConfigUpdate {
        instance: Uuid::nil(),
        service: ServiceName::new(service).unwrap(),
        config_id: Uuid::nil(),
        version: 1,
        payload: payload.into(),
    }
}

/// Strings a hostile controller might try to smuggle into a shell or a configuration file.
pub(crate) const HOSTILE: &[&str] = &[
    "; rm -rf /",
    "$(reboot)",
    "`id`",
    "\nflush ruleset",
    "&& curl",
    "| sh",
];
