//! The `nova-patch` binary as an operator or libvirt runs it: standard input in, standard output
//! and the exit status out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

const KEY: &str = "ef223a72cf97aca146015682f36fbe1074c79730fd8875dcc16274ac78db44ad";

const DOMAIN: &str = "<domain type='kvm'>
  <name>vnf-cli</name>
  <uuid>4b5a2f9c-8d1e-4f6a-9b3c-2d7e8f9a0b1c</uuid>
  <!-- keep me -->
  <os>
    <type arch='x86_64'>hvm</type>
  </os>
  <devices>
    <interface type='bridge'><source bridge='br-int'/><virtualport type='openvswitch'/></interface>
  </devices>
</domain>
";

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nova-patch"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // The binary may exit before reading everything (usage errors); ignore a broken pipe.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn inject_is_idempotent_and_preserves_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let key_file = key_file.to_str().unwrap();

    let once = run(&["inject", "--key-file", key_file], DOMAIN);
    assert!(once.status.success(), "{}", stderr(&once));
    let once = stdout(&once);
    assert_eq!(
        once,
        format!(
            "<domain type='kvm'>
  <name>vnf-cli</name>
  <uuid>4b5a2f9c-8d1e-4f6a-9b3c-2d7e8f9a0b1c</uuid>
  <!-- keep me -->
  <sysinfo type='smbios'>
    <oemStrings>
      <entry>org.opensfc.relay.key:{KEY}</entry>
    </oemStrings>
  </sysinfo>
  <os>
    <type arch='x86_64'>hvm</type>
    <smbios mode='sysinfo'/>
  </os>
  <devices>
    <interface type='bridge'><source bridge='br-int'/><virtualport type='openvswitch'/></interface>
    <controller type='virtio-serial'/>
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='org.opensfc.relay.0'/>
    </channel>
  </devices>
</domain>
"
        )
    );
    let twice = run(&["inject", "--key", &KEY.to_uppercase()], &once);
    assert!(twice.status.success(), "{}", stderr(&twice));
    assert_eq!(stdout(&twice), once, "a second run changes nothing");

    let named = run(&["inject", "--name", "com.example.cfg.1"], DOMAIN);
    assert!(named.status.success(), "{}", stderr(&named));
    assert!(stdout(&named).contains("<target type='virtio' name='com.example.cfg.1'/>"));
    assert!(!stdout(&named).contains("oemStrings"));
}

#[test]
fn bad_input_fails_with_a_clear_message_and_no_output() {
    for (args, input, code, want) in [
        (
            vec!["inject"],
            "<domain><devices></domain>",
            1,
            "the domain XML is not well-formed",
        ),
        (vec!["inject"], "", 1, "not well-formed"),
        (vec!["inject"], "<network/>", 1, "not a libvirt <domain>"),
        (
            vec!["inject", "--key", "abc"],
            DOMAIN,
            1,
            "invalid relay key",
        ),
        (
            vec!["inject", "--name", "../x"],
            DOMAIN,
            1,
            "invalid channel target name",
        ),
        (
            vec!["inject", "--key-file", "/nonexistent/key"],
            DOMAIN,
            1,
            "cannot read /nonexistent/key",
        ),
        (
            vec!["inject", "--key", KEY, "--key-file", "/k"],
            DOMAIN,
            2,
            "cannot be used with",
        ),
        (
            vec!["inject", "--key", KEY],
            "<domain><devices/></domain>",
            1,
            "no <os> element",
        ),
    ] {
        let out = run(&args, input);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?} wrote {}", stdout(&out));
    }
}

#[test]
fn derive_key_matches_the_nova_patch() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secret = secret.to_str().unwrap();

    let out = run(
        &[
            "derive-key",
            "--secret-file",
            secret,
            "--instance",
            "4B5A2F9C-8D1E-4F6A-9B3C-2D7E8F9A0B1C",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{KEY}\n"));

    let out = run(
        &["derive-key", "--secret-file", secret, "--instance", "nope"],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid instance UUID"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_hook_never_fails_libvirt() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let socket = socket.to_str().unwrap();
    // As libvirt calls it: four arguments, the XML on standard input, no relay-host running.
    let out = run(
        &[
            "hook", "--socket", socket, "vnf-cli", "started", "begin", "-",
        ],
        DOMAIN,
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("warning: relay-host not notified that vnf-cli started"),
        "{}",
        stderr(&out)
    );
    // Unknown operations, and garbage for an operation that filters XML: no output, exit 0.
    let out = run(&["hook", "vnf-cli", "prepare", "begin", "-"], DOMAIN);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "{}",
        stderr(&out)
    );
    let out = run(&["hook", "vnf-cli", "migrate", "begin", "-"], "<domain>");
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("left unchanged"), "{}", stderr(&out));
    // The release operation carries a fifth word in newer libvirt versions.
    let out = run(
        &["hook", "vnf-cli", "release", "end", "-", "shutdown"],
        DOMAIN,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn the_hook_filters_migrating_relay_guests() {
    let keyed = format!(
        "<domain type='kvm'>\n  <uuid>4b5a2f9c-8d1e-4f6a-9b3c-2d7e8f9a0b1c</uuid>\n  \
         <sysinfo type='smbios'>\n    <oemStrings>\n      <entry>org.opensfc.relay.key:{KEY}</entry>\n    \
         </oemStrings>\n  </sysinfo>\n  <os>\n    <type>hvm</type>\n  </os>\n  <devices/>\n</domain>\n"
    );
    let out = run(&["hook", "vnf-cli", "migrate", "begin", "-"], &keyed);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let filtered = stdout(&out);
    assert!(filtered.contains("<target type='virtio' name='org.opensfc.relay.0'/>"));
    let again = run(&["hook", "vnf-cli", "restore", "begin", "-"], &filtered);
    assert!(
        again.stdout.is_empty(),
        "nothing to change: libvirt keeps its XML"
    );
}
