//! Builds the bootable guest image: the host's Debian kernel plus an initramfs holding a static
//! busybox, the virtio modules and an `/init` that runs the program named on the kernel command
//! line (see `init.sh` for the contract).
//!
//! The image is cached under `<target dir>/guest-image/<hash>/`, where the hash covers
//! everything that goes into it (kernel, archive contents), so unchanged inputs are built once
//! and concurrent test processes share the result: each builds into a private directory and
//! renames it into place; a loser of that race discards its copy.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::cpio::{Node, Tree};
use crate::{io_err, Error, Result};

/// The `/init` script; its header documents the kernel command line contract.
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// Modules loaded by default (with their dependencies, resolved from `modules.dep`): the virtio
/// PCI transport, virtio-serial channels and virtio-net NICs.
pub const DEFAULT_MODULES: &[&str] = &["virtio_pci", "virtio_console", "virtio_net", "virtio_rng"];

/// Bumped when the image layout changes in a way the hashed inputs do not capture.
const LAYOUT_VERSION: &str = "sfc-guest-image-v1";
const KERNEL_FILE: &str = "vmlinuz";
const INITRAMFS_FILE: &str = "initramfs.cpio";

/// A built image, ready to boot with [`crate::qemu::GuestConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The cache directory holding both files.
    pub dir: PathBuf,
    /// The kernel (`bzImage`), for QEMU's `-kernel`.
    pub kernel: PathBuf,
    /// The uncompressed `newc` cpio archive, for QEMU's `-initrd`.
    pub initramfs: PathBuf,
    /// The `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub kernel_release: String,
}

#[derive(Debug, Clone)]
enum Source {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
struct ExtraFile {
    source: Source,
    guest_path: String,
    mode: u32,
    /// A dynamically linked host program, shipped with its libraries and loader.
    dynamic: bool,
}

/// Describes an image; [`GuestImageBuilder::build`] produces (or reuses) it.
#[derive(Debug, Clone)]
pub struct GuestImageBuilder {
    kernel_release: Option<String>,
    boot_dir: PathBuf,
    modules_dir: PathBuf,
    busybox: PathBuf,
    modules: Vec<String>,
    files: Vec<ExtraFile>,
    cache_dir: Option<PathBuf>,
}

impl Default for GuestImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GuestImageBuilder {
    /// The newest installed Debian kernel, `/bin/busybox` and [`DEFAULT_MODULES`].
    pub fn new() -> Self {
        Self {
            kernel_release: None,
            boot_dir: PathBuf::from("/boot"),
            modules_dir: PathBuf::from("/lib/modules"),
            busybox: PathBuf::from("/bin/busybox"),
            modules: DEFAULT_MODULES.iter().map(|m| (*m).to_owned()).collect(),
            files: Vec::new(),
            cache_dir: None,
        }
    }

    /// Uses `/boot/vmlinuz-<release>` instead of the newest installed kernel.
    pub fn kernel_release(mut self, release: impl Into<String>) -> Self {
        self.kernel_release = Some(release.into());
        self
    }

    /// Uses another static busybox binary.
    pub fn busybox(mut self, path: impl Into<PathBuf>) -> Self {
        self.busybox = path.into();
        self
    }

    /// Also loads kernel module `name` (and its dependencies) at boot; a no-op if it is built in.
    pub fn module(mut self, name: impl Into<String>) -> Self {
        self.modules.push(name.into());
        self
    }

    /// Copies host file `host` to absolute path `guest` with permission bits `mode`. ELF
    /// binaries must be statically linked: the guest has no dynamic loader or libc.
    pub fn file(mut self, host: impl Into<PathBuf>, guest: impl Into<String>, mode: u32) -> Self {
        self.files.push(ExtraFile {
            source: Source::Host(host.into()),
            guest_path: guest.into(),
            mode,
            dynamic: false,
        });
        self
    }

    /// Copies the dynamically linked host program `host` to `guest` (mode 0755) together with
    /// the shared libraries and the dynamic loader it needs, each at the path `ldd` resolves
    /// it to on the host (e.g. `/lib/x86_64-linux-gnu/libc.so.6`, `/lib64/ld-linux-x86-64.so.2`):
    /// Debian's loader searches those directories without an `ld.so.cache`. For host tools
    /// such as `nft` that have no static build.
    pub fn dynamic_program(mut self, host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        self.files.push(ExtraFile {
            source: Source::Host(host.into()),
            guest_path: guest.into(),
            mode: 0o755,
            dynamic: true,
        });
        self
    }

    /// Writes `contents` to absolute path `guest` with permission bits `mode`.
    pub fn file_bytes(
        mut self,
        contents: impl Into<Vec<u8>>,
        guest: impl Into<String>,
        mode: u32,
    ) -> Self {
        self.files.push(ExtraFile {
            source: Source::Bytes(contents.into()),
            guest_path: guest.into(),
            mode,
            dynamic: false,
        });
        self
    }

    /// An executable shell script (run by busybox sh unless it has its own `#!`).
    pub fn script(self, guest: impl Into<String>, text: &str) -> Self {
        let text = if text.starts_with("#!") {
            text.to_owned()
        } else {
            format!("#!/bin/sh\n{text}")
        };
        self.file_bytes(text, guest, 0o755)
    }

    /// Caches images under `dir/guest-image/` instead of the cargo target directory.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Builds the image, or returns the cached one with identical contents.
    pub fn build(&self) -> Result<GuestImage> {
        let release = match &self.kernel_release {
            Some(r) => r.clone(),
            None => newest_kernel(&self.boot_dir, &self.modules_dir)?,
        };
        let kernel_path = self.boot_dir.join(format!("vmlinuz-{release}"));
        let kernel = read_prerequisite(&kernel_path, "linux-image-amd64 kernel")?;

        let archive = self.archive(&release)?.to_newc()?;

        let mut hasher = Sha256::new();
        for part in [LAYOUT_VERSION.as_bytes(), release.as_bytes()] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.update((kernel.len() as u64).to_le_bytes());
        hasher.update(&kernel);
        hasher.update(&archive);
        let hash = hex::encode(&hasher.finalize()[..12]);

        let root = match &self.cache_dir {
            Some(d) => d.clone(),
            None => target_dir()?,
        }
        .join("guest-image");
        let image = GuestImage {
            dir: root.join(&hash),
            kernel: root.join(&hash).join(KERNEL_FILE),
            initramfs: root.join(&hash).join(INITRAMFS_FILE),
            kernel_release: release,
        };
        if image.dir.is_dir() {
            return Ok(image);
        }

        fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = root.join(format!(
            ".tmp-{hash}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = write_image_dir(&tmp, &kernel, &archive);
        let result = result.and_then(|()| match fs::rename(&tmp, &image.dir) {
            Ok(()) => Ok(()),
            // Another process or thread renamed an identical image into place first.
            Err(_) if image.dir.is_dir() => Ok(()),
            Err(e) => Err(io_err(format!("renaming {} into place", tmp.display()))(e)),
        });
        // Still there only if we lost the race or failed; either way it is garbage.
        let _ = fs::remove_dir_all(&tmp);
        result.map(|()| image)
    }

    fn archive(&self, release: &str) -> Result<Tree> {
        let mut tree = Tree::default();
        for dir in [
            "proc", "sys", "dev", "tmp", "run", "root", "etc", "var", "mnt",
        ] {
            tree.insert(dir, Node::Dir { mode: 0o755 });
        }
        tree.insert("tmp", Node::Dir { mode: 0o1777 });
        tree.insert("root", Node::Dir { mode: 0o700 });
        // The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
        tree.insert(
            "dev/console",
            Node::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        tree.insert(
            "dev/null",
            Node::CharDev {
                mode: 0o666,
                major: 1,
                minor: 3,
            },
        );

        let busybox = read_prerequisite(&self.busybox, "busybox-static")?;
        if elf_is_dynamic(&busybox) {
            return Err(Error::MissingPrerequisite {
                what: format!(
                    "a statically linked busybox ({} is dynamically linked, from package busybox?)",
                    self.busybox.display()
                ),
            });
        }
        for applet in busybox_applets(&self.busybox)? {
            tree.insert(
                &applet,
                Node::Symlink {
                    target: "/bin/busybox".into(),
                },
            );
        }
        tree.insert(
            "bin/busybox",
            Node::File {
                mode: 0o755,
                data: busybox,
            },
        );
        tree.insert(
            "init",
            Node::File {
                mode: 0o755,
                data: INIT_SCRIPT.as_bytes().to_vec(),
            },
        );
        tree.insert(
            "etc/passwd",
            Node::File {
                mode: 0o644,
                data: b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            },
        );
        tree.insert(
            "etc/group",
            Node::File {
                mode: 0o644,
                data: b"root:x:0:\n".to_vec(),
            },
        );

        let modules = resolve_modules(&self.modules_dir.join(release), release, &self.modules)?;
        let mut load_order = String::new();
        for module in &modules {
            let file = format!("{}.ko", module.name);
            tree.insert(
                &format!("lib/modules/{file}"),
                Node::File {
                    mode: 0o644,
                    data: read_module(&module.path)?,
                },
            );
            load_order.push_str(&file);
            load_order.push('\n');
        }
        tree.insert(
            "etc/sfc-guest/modules",
            Node::File {
                mode: 0o644,
                data: load_order.into_bytes(),
            },
        );
        tree.insert(
            "etc/sfc-guest/kernel-release",
            Node::File {
                mode: 0o644,
                data: format!("{release}\n").into_bytes(),
            },
        );

        for extra in &self.files {
            let path = &extra.guest_path;
            if !path.starts_with('/')
                || path
                    .split('/')
                    .skip(1)
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                return Err(Error::InvalidConfig(format!(
                    "guest path {path:?} must be absolute and normalized"
                )));
            }
            let data = match &extra.source {
                Source::Bytes(b) => b.clone(),
                Source::Host(p) => {
                    fs::read(p).map_err(io_err(format!("reading {}", p.display())))?
                }
            };
            if extra.dynamic {
                if let Source::Host(program) = &extra.source {
                    for lib in shared_libraries(program)? {
                        let bytes =
                            fs::read(&lib).map_err(io_err(format!("reading {}", lib.display())))?;
                        tree.insert(
                            &lib.to_string_lossy(),
                            Node::File {
                                mode: 0o755,
                                data: bytes,
                            },
                        );
                    }
                }
            } else if elf_is_dynamic(&data) {
                return Err(Error::InvalidConfig(format!(
                    "{path} is a dynamically linked ELF binary; the guest has no libc, build it \
                     with RUSTFLAGS='-C target-feature=+crt-static'"
                )));
            }
            tree.insert(
                path,
                Node::File {
                    mode: extra.mode & 0o7777,
                    data,
                },
            );
        }
        Ok(tree)
    }
}

fn write_image_dir(tmp: &Path, kernel: &[u8], archive: &[u8]) -> Result<()> {
    fs::create_dir(tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    for (name, data) in [(KERNEL_FILE, kernel), (INITRAMFS_FILE, archive)] {
        let dest = tmp.join(name);
        fs::write(&dest, data).map_err(io_err(format!("writing {}", dest.display())))?;
    }
    Ok(())
}

fn read_prerequisite(path: &Path, package: &str) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => Error::MissingPrerequisite {
            what: format!("{} ({package})", path.display()),
        },
        _ => io_err(format!("reading {}", path.display()))(e),
    })
}

/// The cargo target directory of the running test binary: the nearest ancestor of the
/// executable that cargo marked with `CACHEDIR.TAG`.
pub(crate) fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(io_err("locating the test executable"))?;
    if let Some(dir) = exe.ancestors().find(|d| d.join("CACHEDIR.TAG").is_file()) {
        return Ok(dir.to_owned());
    }
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => Ok(dir),
        _ => Err(Error::NoTargetDir { exe }),
    }
}

/// The newest kernel with both a `vmlinuz` and a module tree (the running kernel of a container
/// host usually has neither).
fn newest_kernel(boot_dir: &Path, modules_dir: &Path) -> Result<String> {
    let missing = || Error::MissingPrerequisite {
        what: format!("a kernel in {} (linux-image-amd64)", boot_dir.display()),
    };
    let entries = match fs::read_dir(boot_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(io_err(format!("listing {}", boot_dir.display()))(e)),
    };
    let mut releases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(format!("listing {}", boot_dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            if modules_dir.join(release).join("modules.dep").is_file() {
                releases.push(release.to_owned());
            }
        }
    }
    releases
        .into_iter()
        .max_by(|a, b| version_key(a).cmp(&version_key(b)))
        .ok_or_else(missing)
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum VersionPart {
    Num(u64),
    Text(String),
}

/// Orders `6.10.0-1-amd64` after `6.9.0-9-amd64`: digit runs compare as numbers.
fn version_key(v: &str) -> Vec<VersionPart> {
    let mut parts = Vec::new();
    let mut rest = v;
    while let Some(c) = rest.chars().next() {
        let is_digit = c.is_ascii_digit();
        let end = rest
            .find(|ch: char| ch.is_ascii_digit() != is_digit)
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        parts.push(match run.parse::<u64>() {
            Ok(n) if is_digit => VersionPart::Num(n),
            _ => VersionPart::Text(run.to_owned()),
        });
        rest = tail;
    }
    parts
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Module {
    name: String,
    path: PathBuf,
}

/// `kernel/drivers/virtio/virtio_pci.ko.xz` -> `virtio_pci`; the kernel treats `-` and `_` in
/// module names alike.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.find(".ko").map_or(file, |i| &file[..i]);
    stem.replace('-', "_")
}

/// The loadable modules needed for `wanted`, dependencies first, each once; built-ins are
/// dropped.
fn resolve_modules(dir: &Path, release: &str, wanted: &[String]) -> Result<Vec<Module>> {
    let read = |file: &str| {
        let path = dir.join(file);
        fs::read_to_string(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::MissingPrerequisite {
                what: format!("{} (linux-image-{release})", path.display()),
            },
            _ => io_err(format!("reading {}", path.display()))(e),
        })
    };
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in read("modules.dep")?.lines() {
        if let Some((path, rest)) = line.split_once(':') {
            let d = rest.split_whitespace().map(module_name).collect();
            deps.insert(module_name(path), (path.to_owned(), d));
        }
    }
    let builtin: HashSet<String> = read("modules.builtin")?.lines().map(module_name).collect();

    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for name in wanted {
        let name = name.replace('-', "_");
        visit(&name, &deps, &builtin, &mut seen, &mut order, dir, release)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    deps: &HashMap<String, (String, Vec<String>)>,
    builtin: &HashSet<String>,
    seen: &mut HashSet<String>,
    order: &mut Vec<Module>,
    dir: &Path,
    release: &str,
) -> Result<()> {
    if !seen.insert(name.to_owned()) {
        return Ok(());
    }
    let Some((path, requires)) = deps.get(name) else {
        if builtin.contains(name) {
            return Ok(());
        }
        return Err(Error::ModuleNotFound {
            name: name.to_owned(),
            release: release.to_owned(),
        });
    };
    // modprobe loads a modules.dep dependency list from its end.
    for dep in requires.iter().rev() {
        visit(dep, deps, builtin, seen, order, dir, release)?;
    }
    order.push(Module {
        name: name.to_owned(),
        path: dir.join(path),
    });
    Ok(())
}

/// Reads a module, decompressing it on the host: busybox `insmod` only takes plain `.ko`.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        ("xz", "xz-utils")
    } else if name.ends_with(".ko.zst") {
        ("zstd", "zstd")
    } else if name.ends_with(".ko.gz") {
        ("gzip", "gzip")
    } else {
        return fs::read(path).map_err(io_err(format!("reading {}", path.display())));
    };
    let output = Command::new(tool.0)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::MissingPrerequisite {
                what: format!(
                    "{} (package {}) to decompress kernel modules",
                    tool.0, tool.1
                ),
            },
            _ => io_err(format!("running {} -dc {}", tool.0, path.display()))(e),
        })?;
    if !output.status.success() {
        return Err(Error::ToolFailed {
            tool: format!("{} -dc {}", tool.0, path.display()),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(output.stdout)
}

/// Applet paths relative to `/`, e.g. `sbin/insmod`, from the binary itself (it runs on the
/// host: it is static x86_64).
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let output = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(io_err(format!("running {} --list-full", busybox.display())))?;
    if !output.status.success() {
        return Err(Error::ToolFailed {
            tool: format!("{} --list-full", busybox.display()),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_owned())
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect())
}

/// The absolute paths of the shared libraries and the loader `program` needs, from `ldd`.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(io_err(format!("running ldd {}", program.display())))?;
    if !output.status.success() {
        return Err(Error::ToolFailed {
            tool: format!("ldd {}", program.display()),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    parse_ldd(program, &String::from_utf8_lossy(&output.stdout))
}

/// The paths in `ldd`'s output: lines are `libc.so.6 => /lib/.../libc.so.6 (0x...)`,
/// `/lib64/ld-linux-x86-64.so.2 (0x...)` or `linux-vdso.so.1 (0x...)` (in the kernel, nothing
/// to copy); `libx.so => not found` is an error.
fn parse_ldd(program: &Path, text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            return Err(Error::InvalidConfig(format!(
                "{}: a library is missing: {}",
                program.display(),
                line.trim()
            )));
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Whether `data` is an ELF file that asks for a dynamic loader (has a `PT_INTERP` header).
fn elf_is_dynamic(data: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    // Only 64-bit little-endian ELF matters here (the guest is x86_64).
    if !data.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).any(|i| {
        let at = phoff.saturating_add(i.saturating_mul(usize::from(phentsize)));
        u32_at(at) == Some(PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        let mut v = vec![
            "6.10.0-1-amd64",
            "6.9.0-9-amd64",
            "6.1.0-56-amd64",
            "6.1.0-9-amd64",
        ];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(
            v,
            [
                "6.1.0-9-amd64",
                "6.1.0-56-amd64",
                "6.9.0-9-amd64",
                "6.10.0-1-amd64"
            ]
        );
    }

    #[test]
    fn module_names_strip_compression_and_dashes() {
        assert_eq!(module_name("kernel/a/virtio_pci.ko.xz"), "virtio_pci");
        assert_eq!(module_name("kernel/a/net-failover.ko.zst"), "net_failover");
        assert_eq!(module_name("kernel/a/virtio.ko"), "virtio");
    }

    #[test]
    fn modules_resolve_dependencies_first_and_skip_builtins() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("modules.dep"),
            "kernel/virtio_ring.ko.xz:\n\
             kernel/virtio.ko.xz: kernel/virtio_ring.ko.xz\n\
             kernel/virtio_pci_modern_dev.ko.xz:\n\
             kernel/virtio_pci_legacy_dev.ko.xz:\n\
             kernel/virtio_pci.ko.xz: kernel/virtio_pci_legacy_dev.ko.xz \
             kernel/virtio_pci_modern_dev.ko.xz kernel/virtio.ko.xz kernel/virtio_ring.ko.xz\n\
             kernel/virtio_console.ko.xz: kernel/virtio.ko.xz kernel/virtio_ring.ko.xz\n",
        )
        .unwrap();
        fs::write(dir.path().join("modules.builtin"), "kernel/failover.ko\n").unwrap();
        let wanted: Vec<String> = ["virtio_pci", "virtio_console", "failover"]
            .map(String::from)
            .to_vec();
        let names: Vec<_> = resolve_modules(dir.path(), "r", &wanted)
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "virtio_console"
            ]
        );
        let err = resolve_modules(dir.path(), "r", &["nope".to_owned()]).unwrap_err();
        assert!(matches!(err, Error::ModuleNotFound { .. }), "{err}");
    }

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibnftables.so.1 => /lib/x86_64-linux-gnu/libnftables.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        let libs = parse_ldd(Path::new("/usr/sbin/nft"), text).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libnftables.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        let missing = "\tlibgone.so.2 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n";
        let err = parse_ldd(Path::new("/x"), missing).unwrap_err();
        assert!(err.to_string().contains("libgone.so.2"), "{err}");
    }

    #[test]
    fn detects_dynamic_elf() {
        // A 64-byte ELF header followed by one 56-byte program header at 0x40.
        let mut elf = vec![0u8; 0x40 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20] = 0x40;
        elf[0x36] = 56;
        elf[0x38] = 1;
        elf[0x40] = 1; // PT_LOAD
        assert!(!elf_is_dynamic(&elf));
        elf[0x40] = 3; // PT_INTERP
        assert!(elf_is_dynamic(&elf));
        assert!(!elf_is_dynamic(b"#!/bin/sh\n"));
    }
}
