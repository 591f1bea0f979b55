//! Boots the test guest under QEMU and talks to a program in it over a virtio-serial channel.
//! There is deliberately no skip: a machine without QEMU or the Debian kernel fails here, with a
//! pointer to scripts/setup.sh.

use std::io::{BufRead, BufReader, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e_tests::guest_image::{GuestImage, GuestImageBuilder};
use e2e_tests::qemu::{GuestConfig, BOOT_TIMEOUT};
use e2e_tests::Error;

const PORT: &str = "org.opensfc.relay.0";

/// Echoes each line from the port back with a prefix until it reads `quit`. The port is opened
/// once: while no host is connected its reads return EOF, so the loop just retries.
const ECHO_SCRIPT: &str = r#"#!/bin/sh
exec 3<>"/dev/virtio-ports/$1"
echo "echo-guest: ready on $1"
while :; do
    while IFS= read -r line <&3; do
        if [ "$line" = quit ]; then
            echo uart-bye >/dev/ttyS1
            exit 7
        fi
        printf '%s%s\n' "$2" "$line" >&3
    done
    sleep 0.1
done
"#;

/// Built once per test binary: building is cheap but hashing the inputs takes ~0.3 s unoptimized.
fn image() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let start = Instant::now();
        let image = GuestImageBuilder::new()
            .script("/opt/test/echo", ECHO_SCRIPT)
            .build()
            .unwrap_or_else(|e| panic!("building the guest image failed: {e}"));
        eprintln!(
            "guest image {} ready in {:?}",
            image.dir.display(),
            start.elapsed()
        );
        image
    })
}

#[test]
fn echo_over_virtio_serial() {
    let image = image();
    let start = Instant::now();
    let mut guest = GuestConfig::new(image)
        .run("/opt/test/echo")
        .args([PORT, "echo:"])
        .channel(PORT)
        .uart("uart")
        .launch()
        .unwrap_or_else(|e| panic!("{e}"));
    guest
        .wait_for_console("echo-guest: ready on org.opensfc.relay.0", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("guest booted in {:?}", start.elapsed());

    let stream = guest.connect_channel(PORT).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let long = "x".repeat(4000);
    for line in ["hello", "second line with spaces", long.as_str()] {
        writer.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        assert_eq!(reply, format!("echo:{line}\n"));
    }

    assert_eq!(guest.uart_guest_device("uart").unwrap(), "/dev/ttyS1");
    let uart = guest.connect_uart("uart").unwrap();
    uart.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    writer.write_all(b"quit\n").unwrap();
    let mut uart_line = String::new();
    BufReader::new(uart).read_line(&mut uart_line).unwrap();
    // The guest tty's output processing turns \n into \r\n.
    assert_eq!(uart_line.trim_end(), "uart-bye");
    let status = guest.wait_for_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "qemu exited with {status}");
    assert_eq!(guest.run_exit_code(), Some(7), "{}", guest.diagnostics());
    eprintln!("guest round trip done in {:?}", start.elapsed());
}

#[test]
fn init_reports_a_missing_program() {
    let image = image();
    let mut guest = GuestConfig::new(image)
        .run("/does/not/exist")
        .launch()
        .unwrap_or_else(|e| panic!("{e}"));
    match guest.wait_for_boot() {
        Err(Error::GuestFatal { console, .. }) => {
            assert!(console.contains("sfc.run=/does/not/exist is not an executable file"));
        }
        other => panic!("expected a fatal init error, got {other:?}"),
    }
}

#[test]
fn invalid_arguments_are_rejected_before_boot() {
    let image = GuestImage {
        dir: "/nonexistent".into(),
        kernel: "/nonexistent/vmlinuz".into(),
        initramfs: "/nonexistent/initramfs.cpio".into(),
        kernel_release: "none".into(),
    };
    let err = GuestConfig::new(&image)
        .run("/bin/true")
        .arg("a,b")
        .launch()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
}
