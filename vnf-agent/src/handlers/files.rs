//! `files`: arbitrary configuration files, but only where the operator allows, and a reload
//! chosen by name from the operator's list.
//!
//! The controller names absolute paths; the agent writes them below its root only if they are
//! in normal form (no `..`, `.`, `//`, NUL or control characters) and match the operator's
//! allow-list ([`FilesPolicy`]: exact files or directory prefixes, compared component by
//! component so `/etc/app` does not allow `/etc/application`). Symbolic links are never
//! followed (see [`super::root`]), so a link planted in the tree cannot redirect a write. Modes
//! are bounded to `0777`: no setuid, setgid or sticky bit. All files of an update are staged
//! first and renamed into place together; an optional reload is chosen by name from argv
//! vectors the operator configured, so the controller never supplies a program or an argument.
//! If the reload fails, the previous files are put back and the reload is run once more so the
//! service reads them again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

use super::root::{FileMode, RelPath, Root, Transaction};
use super::runner::{CommandLine, CommandRunner};
use super::validate::{check_count, parse_payload, tool_output};
use crate::handler::{ConfigUpdate, Handler, Rejection};

/// Mode of a new file when the payload gives none (an existing file keeps its mode).
const DEFAULT_MODE: u32 = 0o644;

/// A mistake in the operator's files policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("allow-list entry {path:?}: {reason}")]
    Path { path: String, reason: String },
    #[error("reload command {name:?}: {reason}")]
    Reload { name: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    File(RelPath),
    Directory(RelPath),
}

/// What the operator lets the controller write, and which reloads it may ask for. Set by the
/// operator (command line or agent configuration), never by the controller. The default
/// allows nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesPolicy {
    allowed: Vec<Allowed>,
    reloads: BTreeMap<String, Vec<String>>,
    max_files: usize,
    max_file_bytes: usize,
    max_payload_bytes: usize,
}

impl Default for FilesPolicy {
    fn default() -> FilesPolicy {
        FilesPolicy {
            allowed: Vec::new(),
            reloads: BTreeMap::new(),
            max_files: 64,
            max_file_bytes: 1024 * 1024,
            max_payload_bytes: 4 * 1024 * 1024,
        }
    }
}

impl FilesPolicy {
    /// Allows nothing; add entries with the builder methods.
    pub fn new() -> FilesPolicy {
        FilesPolicy::default()
    }

    fn parse(path: &str) -> Result<RelPath, PolicyError> {
        RelPath::parse_absolute(path).map_err(|reason| PolicyError::Path {
            path: path.to_owned(),
            reason,
        })
    }

    /// Allows writing exactly `path` (absolute, normal form).
    pub fn allow_file(mut self, path: &str) -> Result<FilesPolicy, PolicyError> {
        self.allowed.push(Allowed::File(Self::parse(path)?));
        Ok(self)
    }

    /// Allows writing any file below the directory `path` (absolute, normal form), at any
    /// depth; missing directories below it are created.
    pub fn allow_dir(mut self, path: &str) -> Result<FilesPolicy, PolicyError> {
        self.allowed.push(Allowed::Directory(Self::parse(path)?));
        Ok(self)
    }

    /// Lets the controller ask for `argv` to be run, by `name`, after writing files.
    /// `argv[0]` is a bare program name (looked up in the runner's fixed search path) or an
    /// absolute path; it is run without a shell.
    pub fn reload_command(mut self, name: &str, argv: &[&str]) -> Result<FilesPolicy, PolicyError> {
        let err = |reason: &str| PolicyError::Reload {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !name_ok {
            return Err(err("the name must be 1-64 bytes of [A-Za-z0-9_.-]"));
        }
        let Some(program) = argv.first() else {
            return Err(err("the command is empty"));
        };
        if program.is_empty() || (program.contains('/') && !program.starts_with('/')) {
            return Err(err("the program must be a bare name or an absolute path"));
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(err("an argument contains NUL"));
        }
        self.reloads.insert(
            name.to_owned(),
            argv.iter().map(|a| a.to_string()).collect(),
        );
        Ok(self)
    }

    /// Bounds: most files per update, largest file, largest payload (bytes).
    pub fn with_limits(
        mut self,
        max_files: usize,
        max_file_bytes: usize,
        max_payload_bytes: usize,
    ) -> FilesPolicy {
        self.max_files = max_files;
        self.max_file_bytes = max_file_bytes;
        self.max_payload_bytes = max_payload_bytes;
        self
    }

    fn allows(&self, path: &RelPath) -> bool {
        self.allowed.iter().any(|a| match a {
            Allowed::File(f) => f == path,
            Allowed::Directory(d) => path.starts_with(d) && path != d,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    #[serde(default)]
    files: Vec<FileIn>,
    reload: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    path: String,
    content: Option<String>,
    content_base64: Option<String>,
    mode: Option<String>,
}

impl std::fmt::Debug for FileIn {
    // Contents may be secrets and large: show the path only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileIn")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// `"0640"` or `"640"`: three or four octal digits, at most `0777`.
fn parse_mode(field: &str, value: &str) -> Result<u32, Rejection> {
    let ok = (3..=4).contains(&value.len()) && value.bytes().all(|b| (b'0'..=b'7').contains(&b));
    let mode = u32::from_str_radix(value, 8)
        .ok()
        .filter(|_| ok)
        .ok_or_else(|| {
            Rejection::new(format!(
                "{field}: {value:?} is not an octal mode like \"0640\""
            ))
        })?;
    if mode > 0o777 {
        return Err(Rejection::new(format!(
            "{field}: {value:?} sets setuid, setgid or sticky bits; the most allowed is 0777"
        )));
    }
    Ok(mode)
}

/// One validated file of an update.
#[derive(Debug)]
struct FileOut {
    path: RelPath,
    contents: Vec<u8>,
    mode: FileMode,
}

#[derive(Debug)]
struct Plan {
    files: Vec<FileOut>,
    reload: Option<(String, CommandLine)>,
}

fn validate(policy: &FilesPolicy, payload: &[u8]) -> Result<Plan, Rejection> {
    let p: Payload = parse_payload("files", payload, policy.max_payload_bytes)?;
    check_count("files", p.files.len(), policy.max_files)?;
    let mut seen = BTreeSet::new();
    let mut files = Vec::with_capacity(p.files.len());
    for (i, f) in p.files.into_iter().enumerate() {
        let field = |name: &str| format!("files[{i}].{name}");
        let path = RelPath::parse_absolute(&f.path)
            .map_err(|reason| Rejection::new(format!("{}: {reason}", field("path"))))?;
        if !policy.allows(&path) {
            return Err(Rejection::new(format!(
                "{}: {path} is not in the operator's allow-list",
                field("path")
            )));
        }
        if !seen.insert(path.clone()) {
            return Err(Rejection::new(format!(
                "{}: {path} appears twice",
                field("path")
            )));
        }
        let contents = match (f.content, f.content_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| {
                    Rejection::new(format!(
                        "{}: not valid base64: {e}",
                        field("content_base64")
                    ))
                })?,
            _ => {
                return Err(Rejection::new(format!(
                    "files[{i}]: give exactly one of content and content_base64"
                )))
            }
        };
        if contents.len() > policy.max_file_bytes {
            return Err(Rejection::new(format!(
                "files[{i}]: {path} would be {} bytes, the limit is {}",
                contents.len(),
                policy.max_file_bytes
            )));
        }
        let mode = match f.mode {
            Some(m) => FileMode::Exact(parse_mode(&field("mode"), &m)?),
            None => FileMode::KeepOr(DEFAULT_MODE),
        };
        files.push(FileOut {
            path,
            contents,
            mode,
        });
    }
    let reload = match p.reload {
        None => None,
        Some(name) => {
            let argv = policy.reloads.get(&name).ok_or_else(|| {
                let known: Vec<&str> = policy.reloads.keys().map(String::as_str).collect();
                Rejection::new(format!(
                    "reload: {name:?} is not one of the operator's reload commands ({})",
                    if known.is_empty() {
                        "none configured".to_owned()
                    } else {
                        known.join(", ")
                    }
                ))
            })?;
            // Never empty (checked by `reload_command`), but a policy is not worth a panic.
            let Some((program, args)) = argv.split_first() else {
                return Err(Rejection::new(format!("reload: {name:?} has no program")));
            };
            let cmd = args
                .iter()
                .fold(CommandLine::new(program.clone()), |cmd, a| cmd.arg(a));
            Some((name, cmd))
        }
    };
    Ok(Plan { files, reload })
}

/// Applies `files` payloads under an operator's [`FilesPolicy`].
#[derive(Debug)]
pub struct FilesHandler {
    root: Root,
    policy: FilesPolicy,
    runner: Arc<dyn CommandRunner>,
}

impl FilesHandler {
    pub fn new(root: Root, policy: FilesPolicy, runner: Arc<dyn CommandRunner>) -> FilesHandler {
        FilesHandler {
            root,
            policy,
            runner,
        }
    }

    fn reload(&self, name: &str, cmd: &CommandLine) -> Result<(), Rejection> {
        let out = self
            .runner
            .run(cmd)
            .map_err(|e| Rejection::new(format!("reload {name:?} could not run: {e}")))?;
        if out.success {
            Ok(())
        } else {
            Err(Rejection::new(format!(
                "reload {name:?} failed: {}",
                tool_output(&out.stdout, &out.stderr)
            )))
        }
    }
}

impl Handler for FilesHandler {
    fn apply(&mut self, update: &ConfigUpdate) -> Result<(), Rejection> {
        let plan = validate(&self.policy, &update.payload)?;
        if let Some((name, cmd)) = &plan.reload {
            if !self.runner.is_installed(&cmd.program) {
                return Err(Rejection::new(format!(
                    "reload: {name:?} runs {}, which is not installed",
                    cmd.program
                )));
            }
        }
        let mut tx = Transaction::new(&self.root);
        for (i, f) in plan.files.iter().enumerate() {
            tx.stage(&f.path, &f.contents, f.mode)
                .map_err(|e| Rejection::new(format!("files[{i}].path: {e}")))?;
        }
        let committed = tx
            .commit()
            .map_err(|e| Rejection::new(format!("files: {e}")))?;
        let Some((name, cmd)) = &plan.reload else {
            committed.finish();
            return Ok(());
        };
        match self.reload(name, cmd) {
            Ok(()) => {
                committed.finish();
                Ok(())
            }
            Err(e) => match committed.rollback() {
                Ok(()) => {
                    // Best effort: let the service read the restored files.
                    let _ = self.reload(name, cmd);
                    Err(Rejection::new(format!(
                        "{e}; the previous files were restored"
                    )))
                }
                Err(r) => Err(Rejection::new(format!("{e}; and {r}"))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::runner::CommandOutput;
    use crate::handlers::testing::{update, FakeRunner, TestDir, HOSTILE};
    use std::os::unix::fs::PermissionsExt;

    fn policy() -> FilesPolicy {
        FilesPolicy::new()
            .allow_dir("/etc/app")
            .unwrap()
            .allow_file("/etc/motd")
            .unwrap()
            .reload_command("app", &["systemctl", "reload", "app.service"])
            .unwrap()
            .with_limits(4, 1024, 64 * 1024)
    }

    fn handler(t: &TestDir, fake: &FakeRunner) -> FilesHandler {
        FilesHandler::new(t.root.clone(), policy(), fake.arc())
    }

    fn mode(t: &TestDir, rel: &str) -> u32 {
        t.path(rel).metadata().unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn valid_files_are_written_with_modes_and_the_named_reload_runs() {
        let t = TestDir::new();
        t.write("/etc/motd", "old motd\n");
        std::fs::set_permissions(t.path("/etc/motd"), PermissionsExt::from_mode(0o600)).unwrap();
        let fake = FakeRunner::with_installed(&["systemctl"]);
        let payload = r#"{"files": [
            {"path": "/etc/app/conf.d/app.conf", "content": "listen 8080\n; $(not a shell)\n", "mode": "0640"},
            {"path": "/etc/app/key.bin", "content_base64": "AAEC/w==", "mode": "400"},
            {"path": "/etc/motd", "content": "welcome\n"}
        ], "reload": "app"}"#;
        handler(&t, &fake).apply(&update("files", payload)).unwrap();
        assert_eq!(
            t.read("/etc/app/conf.d/app.conf"),
            "listen 8080\n; $(not a shell)\n"
        );
        assert_eq!(
            std::fs::read(t.path("/etc/app/key.bin")).unwrap(),
            [0, 1, 2, 255]
        );
        assert_eq!(t.read("/etc/motd"), "welcome\n");
        assert_eq!(mode(&t, "/etc/app/conf.d/app.conf"), 0o640);
        assert_eq!(mode(&t, "/etc/app/key.bin"), 0o400);
        assert_eq!(
            mode(&t, "/etc/motd"),
            0o600,
            "an existing file keeps its mode"
        );
        assert_eq!(
            t.root_files(),
            ["/etc/app/conf.d/app.conf", "/etc/app/key.bin", "/etc/motd"]
        );
        assert_eq!(fake.calls_shown(&t.root), ["systemctl reload app.service"]);
        let call = &fake.calls()[0];
        assert_eq!(call.program, "systemctl");
        assert_eq!(call.args, ["reload", "app.service"]);
        fake.assert_no_shell(&["systemctl"], HOSTILE);
    }

    fn rejected(payload: &str) -> String {
        rejected_in(&TestDir::new(), payload)
    }

    fn rejected_in(t: &TestDir, payload: &str) -> String {
        let before_outside = t.outside_snapshot();
        let before_root = t.root_snapshot();
        let fake = FakeRunner::with_installed(&["systemctl"]);
        let err = handler(t, &fake)
            .apply(&update("files", payload.to_owned()))
            .unwrap_err();
        assert_eq!(
            t.root_snapshot(),
            before_root,
            "root unchanged for {payload}"
        );
        assert_eq!(t.outside_snapshot(), before_outside);
        assert!(fake.calls().is_empty());
        err.0
    }

    fn one(path: &str) -> String {
        let p = serde_json::to_string(path).unwrap();
        format!(r#"{{"files": [{{"path": {p}, "content": "pwned"}}]}}"#)
    }

    #[test]
    fn traversal_and_paths_outside_the_allow_list_are_rejected() {
        let cases = [
            ("../../etc/shadow", "files[0].path: \"../../etc/shadow\" is not an absolute path"),
            ("etc/app/x", "files[0].path: \"etc/app/x\" is not an absolute path"),
            (
                "/etc/app/../../etc/shadow",
                "files[0].path: \"/etc/app/../../etc/shadow\" contains \"..\"; paths must be normalised",
            ),
            ("/etc/app/./x", "files[0].path: \"/etc/app/./x\" contains \".\"; paths must be normalised"),
            ("/etc/app//x", "files[0].path: \"/etc/app//x\" is not normalised (empty component)"),
            ("/etc/shadow", "files[0].path: /etc/shadow is not in the operator's allow-list"),
            ("/etc/application/x", "files[0].path: /etc/application/x is not in the operator's allow-list"),
            ("/etc/app", "files[0].path: /etc/app is not in the operator's allow-list"),
            ("/etc/motd2", "files[0].path: /etc/motd2 is not in the operator's allow-list"),
            (
                "/etc/app/x\0.conf",
                "files[0].path: \"/etc/app/x\\0.conf\" contains the control character U+0000",
            ),
            (
                "/etc/app/x\n.conf",
                "files[0].path: \"/etc/app/x\\n.conf\" contains the control character U+000A",
            ),
        ];
        for (path, expected) in cases {
            assert_eq!(rejected(&one(path)), expected, "{path:?}");
        }
        for hostile in HOSTILE {
            let msg = rejected(&one(&format!("/etc/app/x{hostile}")));
            assert!(msg.starts_with("files[0].path: "), "{hostile:?}: {msg}");
            let msg = rejected(&one(&format!("/etc/{hostile}")));
            assert!(msg.starts_with("files[0].path: "), "{hostile:?}: {msg}");
        }
    }

    #[test]
    fn symlinks_in_the_root_pointing_outside_are_refused() {
        // The allowed directory itself is a link to outside the root.
        let t = TestDir::new();
        std::fs::create_dir(t.path("/etc")).unwrap();
        std::os::unix::fs::symlink(t.outside(), t.path("/etc/app")).unwrap();
        let msg = rejected_in(&t, &one("/etc/app/shadow"));
        assert_eq!(
            msg,
            "files[0].path: /etc/app is a symbolic link; links are never followed"
        );
        assert_eq!(
            std::fs::read_to_string(t.outside().join("shadow")).unwrap(),
            "root:*:19000::::::\n"
        );

        // An allowed file is a link to a file outside the root.
        let t = TestDir::new();
        std::fs::create_dir(t.path("/etc")).unwrap();
        std::os::unix::fs::symlink(t.outside().join("shadow"), t.path("/etc/motd")).unwrap();
        let msg = rejected_in(&t, &one("/etc/motd"));
        assert_eq!(
            msg,
            "files[0].path: /etc/motd is a symbolic link; links are never followed"
        );

        // A link higher up (/etc itself).
        let t = TestDir::new();
        std::os::unix::fs::symlink(t.outside(), t.path("/etc")).unwrap();
        let msg = rejected_in(&t, &one("/etc/app/x"));
        assert_eq!(
            msg,
            "files[0].path: /etc is a symbolic link; links are never followed"
        );
    }

    #[test]
    fn an_update_is_all_or_nothing() {
        let t = TestDir::new();
        t.write("/etc/app/a.conf", "previous a\n");
        // The second file is refused by policy: the first is not written either.
        let msg = rejected_in(
            &t,
            r#"{"files": [{"path": "/etc/app/a.conf", "content": "new"},
                          {"path": "/etc/passwd", "content": "x"}]}"#,
        );
        assert_eq!(
            msg,
            "files[1].path: /etc/passwd is not in the operator's allow-list"
        );
        // The second file is refused when staging (a link): the first is not written either.
        std::os::unix::fs::symlink(t.outside(), t.path("/etc/app/sub")).unwrap();
        let msg = rejected_in(
            &t,
            r#"{"files": [{"path": "/etc/app/a.conf", "content": "new"},
                          {"path": "/etc/app/sub/b.conf", "content": "x"}]}"#,
        );
        assert_eq!(
            msg,
            "files[1].path: /etc/app/sub is a symbolic link; links are never followed"
        );
        assert_eq!(t.read("/etc/app/a.conf"), "previous a\n");
    }

    #[test]
    fn modes_are_bounded() {
        for (m, expected) in [
            ("4755", "sets setuid, setgid or sticky bits"),
            ("2755", "sets setuid, setgid or sticky bits"),
            ("1777", "sets setuid, setgid or sticky bits"),
            ("7777", "sets setuid, setgid or sticky bits"),
            ("0o644", "is not an octal mode"),
            ("888", "is not an octal mode"),
            ("-644", "is not an octal mode"),
            ("64", "is not an octal mode"),
            ("00644", "is not an octal mode"),
            ("0644; chmod +s /bin/sh", "is not an octal mode"),
        ] {
            let msg = rejected(&format!(
                r#"{{"files": [{{"path": "/etc/app/x", "content": "", "mode": "{m}"}}]}}"#
            ));
            assert!(msg.starts_with("files[0].mode: "), "{m}: {msg}");
            assert!(msg.contains(expected), "{m}: {msg}");
        }
        assert_eq!(parse_mode("m", "0777").unwrap(), 0o777);
        assert_eq!(parse_mode("m", "000").unwrap(), 0);
    }

    #[test]
    fn reloads_are_only_the_operators_named_commands() {
        for name in [
            "nginx",
            "app; rm -rf /",
            "$(reboot)",
            "systemctl reload app.service",
            "/bin/sh",
        ] {
            let n = serde_json::to_string(name).unwrap();
            let msg = rejected(&format!(r#"{{"files": [], "reload": {n}}}"#));
            assert_eq!(
                msg,
                format!("reload: {n} is not one of the operator's reload commands (app)")
            );
        }
        let msg = rejected(r#"{"files": [], "reload": ["sh", "-c", "id"]}"#);
        assert!(
            msg.starts_with("files payload: reload: invalid type"),
            "{msg}"
        );
        let t = TestDir::new();
        let fake = FakeRunner::with_installed(&[]);
        let err = handler(&t, &fake)
            .apply(&update(
                "files",
                r#"{"files": [{"path": "/etc/motd", "content": "x"}], "reload": "app"}"#,
            ))
            .unwrap_err();
        assert_eq!(
            err.0,
            "reload: \"app\" runs systemctl, which is not installed"
        );
        assert!(t.root_files().is_empty());
    }

    #[test]
    fn a_failing_reload_restores_the_previous_files() {
        let t = TestDir::new();
        t.write("/etc/app/a.conf", "previous a\n");
        let fake = FakeRunner::with_installed(&["systemctl"]);
        fake.respond(
            "systemctl",
            CommandOutput::failed("Job for app.service failed."),
        );
        let err = handler(&t, &fake)
            .apply(&update(
                "files",
                r#"{"files": [{"path": "/etc/app/a.conf", "content": "new a"},
                              {"path": "/etc/app/b.conf", "content": "new b"}], "reload": "app"}"#,
            ))
            .unwrap_err();
        assert_eq!(
            err.0,
            "reload \"app\" failed: Job for app.service failed.; the previous files were restored"
        );
        assert_eq!(t.read("/etc/app/a.conf"), "previous a\n");
        assert_eq!(t.root_files(), ["/etc/app/a.conf"]);
        assert_eq!(
            fake.calls_shown(&t.root),
            [
                "systemctl reload app.service",
                "systemctl reload app.service"
            ]
        );
    }

    #[test]
    fn oversized_updates_and_bad_contents_are_rejected() {
        let f = r#"{"path": "/etc/app/x", "content": ""}"#;
        let many: Vec<String> = (0..5)
            .map(|i| f.replace("/etc/app/x", &format!("/etc/app/x{i}")))
            .collect();
        assert_eq!(
            rejected(&format!(r#"{{"files": [{}]}}"#, many.join(","))),
            "files: 5 entries, the limit is 4"
        );
        let big = "a".repeat(1025);
        assert_eq!(
            rejected(&format!(
                r#"{{"files": [{{"path": "/etc/app/x", "content": "{big}"}}]}}"#
            )),
            "files[0]: /etc/app/x would be 1025 bytes, the limit is 1024"
        );
        assert_eq!(
            rejected(&" ".repeat(64 * 1024 + 1)),
            "files payload is 65537 bytes, the limit is 65536"
        );
        assert_eq!(
            rejected(
                r#"{"files": [{"path": "/etc/app/x", "content": "a", "content_base64": "YQ=="}]}"#
            ),
            "files[0]: give exactly one of content and content_base64"
        );
        assert_eq!(
            rejected(r#"{"files": [{"path": "/etc/app/x"}]}"#),
            "files[0]: give exactly one of content and content_base64"
        );
        let msg = rejected(r#"{"files": [{"path": "/etc/app/x", "content_base64": "!!"}]}"#);
        assert!(
            msg.starts_with("files[0].content_base64: not valid base64"),
            "{msg}"
        );
        assert_eq!(
            rejected(
                r#"{"files": [{"path": "/etc/app/x", "content": "a"}, {"path": "/etc/app/x", "content": "b"}]}"#
            ),
            "files[1].path: /etc/app/x appears twice"
        );
        let msg =
            rejected(r#"{"files": [{"path": "/etc/app/x", "content": "a", "owner": "root"}]}"#);
        assert!(msg.contains("unknown field `owner`"), "{msg}");
    }

    #[test]
    fn the_default_policy_allows_nothing_and_bad_policies_are_refused() {
        let t = TestDir::new();
        let fake = FakeRunner::with_installed(&[]);
        let err = FilesHandler::new(t.root.clone(), FilesPolicy::default(), fake.arc())
            .apply(&update("files", one("/etc/app/x")))
            .unwrap_err();
        assert_eq!(
            err.0,
            "files[0].path: /etc/app/x is not in the operator's allow-list"
        );
        assert!(FilesPolicy::new().allow_dir("etc/app").is_err());
        assert!(FilesPolicy::new().allow_dir("/etc/../root").is_err());
        assert!(FilesPolicy::new().reload_command("x", &[]).is_err());
        assert!(FilesPolicy::new().reload_command("x", &["./run"]).is_err());
        assert!(FilesPolicy::new().reload_command("a b", &["true"]).is_err());
        assert!(FilesPolicy::new()
            .reload_command("x", &["/usr/sbin/nginx", "-s", "reload"])
            .is_ok());
    }
}
