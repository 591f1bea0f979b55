//! `relay-host check`: one line per check, and each broken input reported as what it is.
//! libvirt is libvirt's in-process test driver (`test:///default`), so no daemon is needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use relay_host::check::{check, CheckLine};
use relay_host::testing::{self, ControllerOptions, Pki, Result, TestController, TlsFiles};
use relay_host::Config;

struct Setup {
    dir: tempfile::TempDir,
    pki: Pki,
    files: TlsFiles,
    controller: TestController,
}

async fn setup() -> Result<Setup> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new("check CA")?;
    let files = TlsFiles::write(dir.path(), &pki.ca_pem, &pki.client("relay")?)?;
    let tls = testing::server_tls(&pki.ca_pem, &pki.server(&["localhost"])?)?;
    let controller =
        TestController::start(tls, HashMap::new(), ControllerOptions::default()).await?;
    Ok(Setup {
        dir,
        pki,
        files,
        controller,
    })
}

fn config(s: &Setup) -> Config {
    let mut c = s.files.config(s.controller.addr());
    c.libvirt_uri = "test:///default".into();
    c
}

fn line<'a>(lines: &'a [CheckLine], name: &str) -> &'a CheckLine {
    lines
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no {name} line in {lines:#?}"))
}

fn failed(lines: &[CheckLine], name: &str, needle: &str) {
    let l = line(lines, name);
    assert!(!l.ok, "{name} should fail: {lines:#?}");
    assert!(
        l.detail.contains(needle),
        "{name}: {:?} lacks {needle:?}",
        l.detail
    );
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn everything_in_order_passes() -> Result<()> {
    let s = setup().await?;
    let lines = check(&config(&s)).await;
    assert!(lines.iter().all(|l| l.ok), "{lines:#?}");
    let names: Vec<_> = lines.iter().map(|l| l.name).collect();
    assert_eq!(
        names,
        ["config", "ca", "cert", "key", "libvirt", "controller"]
    );
    assert!(line(&lines, "controller")
        .detail
        .contains("speaks the uplink protocol"));
    assert!(line(&lines, "cert")
        .detail
        .contains("issued under the configured CA"));
    Ok(())
}

#[tokio::test]
async fn unreadable_and_non_pem_files_are_named() -> Result<()> {
    let s = setup().await?;
    let mut c = config(&s);
    c.ca = s.dir.path().join("missing.pem");
    let lines = check(&c).await;
    failed(&lines, "ca", "cannot read");
    failed(&lines, "cert", "not verified");
    failed(&lines, "controller", "not tried");

    let mut c = config(&s);
    write(&c.cert, "this is not a certificate\n");
    let lines = check(&c).await;
    failed(&lines, "cert", "no CERTIFICATE found");

    write(
        &c.cert,
        "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
    );
    let lines = check(&c).await;
    failed(&lines, "cert", "not PEM");

    c = config(&s);
    c.key = s.dir.path().join("ca.pem");
    let lines = check(&c).await;
    failed(&lines, "key", "no PRIVATE KEY found");
    Ok(())
}

#[tokio::test]
async fn a_key_of_another_certificate_is_refused() -> Result<()> {
    let s = setup().await?;
    let other = s.pki.client("other")?;
    let c = config(&s);
    write(&c.key, &other.key_pem);
    let lines = check(&c).await;
    failed(&lines, "key", "does not match the certificate");
    failed(&lines, "controller", "not tried");
    // The daemon refuses to start on it, with the same words.
    let err = relay_host::Relay::new(c).unwrap_err();
    assert!(
        relay_host::error_chain(&err).contains("does not match the certificate"),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn expired_and_wrong_purpose_certificates_are_refused() -> Result<()> {
    let s = setup().await?;
    let c = config(&s);
    let expired = s.pki.client_valid("relay", (2001, 1, 1), (2002, 1, 1))?;
    write(&c.cert, &expired.cert_pem);
    write(&c.key, &expired.key_pem);
    let lines = check(&c).await;
    failed(&lines, "cert", "expired or not yet valid");

    let server_only = s.pki.server_only("relay")?;
    write(&c.cert, &server_only.cert_pem);
    write(&c.key, &server_only.key_pem);
    let lines = check(&c).await;
    failed(&lines, "cert", "not valid for TLS client authentication");
    Ok(())
}

#[tokio::test]
async fn controller_problems_are_told_apart() -> Result<()> {
    let s = setup().await?;

    // Nobody listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let mut c = config(&s);
    c.controller = closed.to_string();
    let lines = check(&c).await;
    failed(&lines, "controller", "cannot connect");

    // A controller whose certificate is not from our CA.
    let impostor_ca = Pki::new("impostor")?;
    let tls = testing::server_tls(&s.pki.ca_pem, &impostor_ca.server(&["localhost"])?)?;
    let impostor = TestController::start(tls, HashMap::new(), ControllerOptions::default()).await?;
    let lines = check(&s.files.config(impostor.addr())).await;
    failed(&lines, "controller", "invalid peer certificate");

    // A controller that does not accept our certificate (issued by another CA).
    let dir = tempfile::tempdir()?;
    let foreign = TlsFiles::write(dir.path(), &s.pki.ca_pem, &impostor_ca.client("relay")?)?;
    let mut c = foreign.config(s.controller.addr());
    c.libvirt_uri = "test:///default".into();
    let lines = check(&c).await;
    assert!(line(&lines, "cert").ok, "{lines:#?}");
    assert!(line(&lines, "cert")
        .detail
        .contains("not issued under the configured CA"));
    failed(&lines, "controller", "alert");
    Ok(())
}

#[tokio::test]
async fn the_command_prints_one_line_per_check_and_sets_the_exit_code() -> Result<()> {
    let s = setup().await?;
    let toml = s.dir.path().join("relay-host.toml");
    let body = format!(
        "host = \"compute-1\"\ncontroller = \"{}\"\nserver_name = \"localhost\"\n\
         ca = {:?}\ncert = {:?}\nkey = {:?}\nlibvirt_uri = \"test:///default\"\n",
        s.controller.addr(),
        s.files.ca,
        s.files.cert,
        s.files.key
    );
    write(&toml, &body);
    let bin = env!("CARGO_BIN_EXE_relay-host");
    let run = |args: &[&str]| {
        let toml = toml.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(bin)
                    .arg("check")
                    .arg("--config")
                    .arg(&toml)
                    .args(&args)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };

    let out = run(&[]).await;
    let stdout = String::from_utf8(out.stdout)?;
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.lines().count(), 6, "{stdout}");
    assert!(stdout.lines().all(|l| l.starts_with("ok ")), "{stdout}");

    // A flag overrides the file: a controller port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let out = run(&["--controller", &closed.to_string()]).await;
    let stdout = String::from_utf8(out.stdout)?;
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("FAIL  controller"), "{stdout}");

    // A configuration error is a check line too.
    write(&toml, &format!("{body}bogus_key = 1\n"));
    let out = run(&[]).await;
    let stdout = String::from_utf8(out.stdout)?;
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("FAIL  config"), "{stdout}");
    assert!(stdout.contains("bogus_key"), "{stdout}");
    Ok(())
}
