//! Root-confined, symlink-refusing, atomic file replacement.
//!
//! Every file a handler touches is named by a [`RelPath`] below a [`Root`] directory (`/` in
//! production, a temporary directory in tests). Paths are walked one component at a time from
//! a descriptor of the root with `openat(O_DIRECTORY | O_NOFOLLOW)`, so neither `..` (rejected
//! when parsing) nor a symbolic link anywhere in the path (refused when walking, including the
//! file itself) can lead outside the root, and the check cannot be raced by swapping a
//! directory for a link between check and use. Missing directories are created (0755).
//!
//! Writes go through a [`Transaction`]: each file is first written to a temporary name in its
//! own directory (created `O_EXCL` with the final mode, so a secret is never readable by others
//! even briefly), fsynced, and only then, all together, renamed over the targets. The previous
//! version of each target is kept as a hard link until the handler calls
//! [`Committed::finish`], so a failed reload can put every file back with
//! [`Committed::rollback`]. The root directory itself is opened following links: the operator
//! chose it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Suffix of the temporary file a new version is written to before the rename.
const TMP_SUFFIX: &str = ".vnf-agent-tmp";
/// Suffix of the hard link that keeps the previous version until the update is finished.
const BACKUP_SUFFIX: &str = ".vnf-agent-old";
/// Longest path component accepted, leaving room for the temporary and backup names within
/// the 255-byte `NAME_MAX`.
pub(crate) const MAX_COMPONENT: usize = 200;
/// Most components in a path.
const MAX_DEPTH: usize = 32;

/// Why a file below the root could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path} is a symbolic link; links are never followed")]
    Symlink { path: String },
    #[error("{path} is not a directory")]
    NotDirectory { path: String },
    #[error("{path} exists and is not a regular file")]
    NotRegularFile { path: String },
    #[error("{path} is larger than {max} bytes")]
    TooLarge { path: String, max: usize },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl FsError {
    fn io(op: &'static str, path: impl Into<String>, source: impl Into<io::Error>) -> FsError {
        FsError::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}

/// A normalised path below the root: one or more components, none empty, `.` or `..`, none
/// containing `/` or NUL. Shown as an absolute path (`/etc/haproxy/haproxy.cfg`), as the
/// operator and the controller think of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath {
    components: Vec<String>,
}

impl RelPath {
    /// Parses an absolute path in normal form. Anything else is rejected rather than
    /// normalised: `/etc/./x`, `/etc//x` and `/etc/x/` are not what a well-behaved sender
    /// writes, and rejecting them keeps allow-list matching exact.
    pub fn parse_absolute(path: &str) -> Result<RelPath, String> {
        if path.len() > 1024 {
            return Err(format!("{} bytes, the limit is 1024", path.len()));
        }
        if let Some(c) = path.chars().find(|c| c.is_control()) {
            return Err(format!(
                "{path:?} contains the control character U+{:04X}",
                u32::from(c)
            ));
        }
        let Some(rest) = path.strip_prefix('/') else {
            return Err(format!("{path:?} is not an absolute path"));
        };
        let mut components = Vec::new();
        for c in rest.split('/') {
            match c {
                "" => return Err(format!("{path:?} is not normalised (empty component)")),
                "." | ".." => {
                    return Err(format!("{path:?} contains {c:?}; paths must be normalised"))
                }
                c if c.len() > MAX_COMPONENT => {
                    return Err(format!(
                        "{path:?} has a component longer than {MAX_COMPONENT} bytes"
                    ))
                }
                c if c.starts_with('-') || !c.chars().all(portable) => {
                    return Err(format!(
                        "{path:?} has the component {c:?}; components are made of \
                         [A-Za-z0-9._+@=,:~-] and do not start with '-'"
                    ))
                }
                c if c.ends_with(TMP_SUFFIX) || c.ends_with(BACKUP_SUFFIX) => {
                    return Err(format!(
                        "{path:?} uses a name reserved for the agent's temporary files"
                    ))
                }
                c => components.push(c.to_owned()),
            }
        }
        if components.len() > MAX_DEPTH {
            return Err(format!("{path:?} is deeper than {MAX_DEPTH} directories"));
        }
        Ok(RelPath { components })
    }

    /// A path fixed in the agent's code, like `"/etc/haproxy/haproxy.cfg"`.
    pub(crate) fn fixed(path: &'static str) -> RelPath {
        debug_assert!(RelPath::parse_absolute(path).is_ok(), "{path}");
        RelPath {
            components: path
                .split('/')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Whether `self` is `dir` or below it, component by component.
    pub fn starts_with(&self, dir: &RelPath) -> bool {
        self.components.starts_with(&dir.components)
    }

    fn file_name(&self) -> &str {
        self.components.last().map_or("", String::as_str)
    }

    fn parent_components(&self) -> &[String] {
        &self.components[..self.components.len().saturating_sub(1)]
    }

    fn display_prefix(components: &[String]) -> String {
        if components.is_empty() {
            "/".to_owned()
        } else {
            components.iter().map(|c| format!("/{c}")).collect()
        }
    }
}

/// POSIX's portable filename characters and a few harmless ones: names that no script
/// consuming the directory can mistake for syntax (no space, quote, `$`, `;`, `*`, ...).
fn portable(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._+@=,:~-".contains(c)
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&RelPath::display_prefix(&self.components))
    }
}

/// The directory every handler's files live under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    path: PathBuf,
}

/// How the mode of a written file is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// Exactly these permission bits.
    Exact(u32),
    /// The permission bits of the file being replaced, or these for a new file.
    KeepOr(u32),
}

impl Root {
    pub fn new(path: impl Into<PathBuf>) -> Root {
        Root { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `rel` as other programs see it, for their command line.
    pub(crate) fn host_path(&self, rel: &RelPath) -> PathBuf {
        let mut p = self.path.clone();
        p.extend(&rel.components);
        p
    }

    fn open_root(&self) -> Result<OwnedFd, FsError> {
        rustix::fs::open(
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            FsError::io(
                "open the root directory",
                self.path.display().to_string(),
                e,
            )
        })
    }

    /// Opens the directory `components` below the root without following any link; with
    /// `create`, makes missing directories. `Ok(None)` when one is missing and not created.
    fn open_dir(&self, components: &[String], create: bool) -> Result<Option<OwnedFd>, FsError> {
        let mut dir = self.open_root()?;
        for (i, name) in components.iter().enumerate() {
            let shown = || RelPath::display_prefix(&components[..=i]);
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = match rustix::fs::openat(&dir, name.as_str(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(FsError::io("create directory", shown(), e)),
                    }
                    rustix::fs::openat(&dir, name.as_str(), flags, Mode::empty())
                        .map_err(|e| self.explain(&dir, name, shown(), e))?
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(self.explain(&dir, name, shown(), e)),
            };
            dir = next;
        }
        Ok(Some(dir))
    }

    /// Turns a failed directory open into the reason an operator understands.
    fn explain(&self, dir: &OwnedFd, name: &str, shown: String, e: Errno) -> FsError {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => FsError::Symlink { path: shown },
                FileType::Directory => FsError::io("open directory", shown, e),
                _ => FsError::NotDirectory { path: shown },
            },
            Err(_) => FsError::io("open directory", shown, e),
        }
    }

    /// Reads a regular file of at most `max` bytes; `Ok(None)` when it (or a directory on the
    /// way) does not exist.
    pub(crate) fn read(&self, rel: &RelPath, max: usize) -> Result<Option<Vec<u8>>, FsError> {
        let Some(dir) = self.open_dir(rel.parent_components(), false)? else {
            return Ok(None);
        };
        let shown = rel.to_string();
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(&dir, rel.file_name(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(FsError::Symlink { path: shown }),
            Err(e) => return Err(FsError::io("open", shown, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| FsError::io("stat", shown.clone(), e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(FsError::NotRegularFile { path: shown });
        }
        let mut bytes = Vec::new();
        File::from(fd)
            .take(max as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| FsError::io("read", shown.clone(), e))?;
        if bytes.len() > max {
            return Err(FsError::TooLarge { path: shown, max });
        }
        Ok(Some(bytes))
    }

    /// Whether `rel` is an existing directory (reached without following links).
    pub(crate) fn is_dir(&self, rel: &RelPath) -> bool {
        matches!(self.open_dir(&rel.components, false), Ok(Some(_)))
    }
}

/// One file of a [`Transaction`].
#[derive(Debug)]
struct Entry {
    dir: OwnedFd,
    rel: RelPath,
    tmp: String,
    backup: String,
    had_previous: bool,
    renamed: bool,
}

impl Entry {
    fn name(&self) -> &str {
        self.rel.file_name()
    }
}

/// Files written to temporary names, not yet visible under their own. Dropping it removes
/// the temporary files.
#[derive(Debug)]
pub(crate) struct Transaction<'r> {
    root: &'r Root,
    entries: Vec<Entry>,
}

impl<'r> Transaction<'r> {
    pub(crate) fn new(root: &'r Root) -> Transaction<'r> {
        Transaction {
            root,
            entries: Vec::new(),
        }
    }

    /// Writes `contents` to a temporary file next to `rel` and returns that file's path for
    /// a checking command (`haproxy -c -f <tmp>`). Refuses links, directories and other
    /// non-regular files at `rel`, and any link on the way to it.
    pub(crate) fn stage(
        &mut self,
        rel: &RelPath,
        contents: &[u8],
        mode: FileMode,
    ) -> Result<PathBuf, FsError> {
        let shown = rel.to_string();
        if self.entries.iter().any(|e| e.rel == *rel) {
            return Err(FsError::io(
                "write",
                shown,
                io::Error::new(io::ErrorKind::AlreadyExists, "written twice in one update"),
            ));
        }
        let dir = self
            .root
            .open_dir(rel.parent_components(), true)?
            .ok_or_else(|| FsError::io("create the directory of", shown.clone(), Errno::NOENT))?;
        let name = rel.file_name();
        let previous = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => Some(st),
                FileType::Symlink => return Err(FsError::Symlink { path: shown }),
                _ => return Err(FsError::NotRegularFile { path: shown }),
            },
            Err(Errno::NOENT) => None,
            Err(e) => return Err(FsError::io("stat", shown, e)),
        };
        let perm = match (mode, &previous) {
            (FileMode::Exact(m), _) => m,
            (FileMode::KeepOr(_), Some(st)) => st.st_mode & 0o777,
            (FileMode::KeepOr(m), None) => m,
        } & 0o777;

        let tmp = format!(".{name}{TMP_SUFFIX}");
        let backup = format!(".{name}{BACKUP_SUFFIX}");
        // Left over from an update that was interrupted; the names are reserved for us.
        remove_if_present(&dir, &tmp).map_err(|e| FsError::io("remove stale", &shown, e))?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // Created with the final permissions (the umask can only narrow them), so the content
        // is never readable by anyone the final file would not be readable by.
        let fd = rustix::fs::openat(&dir, tmp.as_str(), flags, Mode::from_raw_mode(perm))
            .map_err(|e| FsError::io("create", &shown, e))?;
        let mut file = File::from(fd);
        let write = |file: &mut File| -> io::Result<()> {
            file.write_all(contents)?;
            if let Some(st) = &previous {
                // Keep the owner and group of the replaced file (a service may read its
                // configuration through its group). Only root can do this; an unprivileged
                // agent owns the files it writes anyway.
                match std::os::unix::fs::fchown(&*file, Some(st.st_uid), Some(st.st_gid)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
                    Err(e) => return Err(e),
                }
            }
            file.set_permissions(std::fs::Permissions::from_mode(perm))?;
            file.sync_all()
        };
        if let Err(e) = write(&mut file) {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(FsError::io("write", shown, e));
        }
        let mut host = self.root.host_path(rel);
        host.set_file_name(&tmp);
        self.entries.push(Entry {
            dir,
            rel: rel.clone(),
            tmp,
            backup,
            had_previous: previous.is_some(),
            renamed: false,
        });
        Ok(host)
    }

    /// Renames every staged file over its target, keeping the previous versions as backups.
    /// On failure, the targets already renamed are put back before the error is returned.
    pub(crate) fn commit(mut self) -> Result<Committed, FsError> {
        let mut entries = std::mem::take(&mut self.entries);
        for i in 0..entries.len() {
            if let Err(e) = commit_one(&mut entries[i]) {
                let mut done = entries;
                for entry in done.iter_mut().take(i + 1) {
                    let _ = restore(entry);
                    if !entry.renamed {
                        let _ = remove_if_present(&entry.dir, &entry.backup);
                    }
                }
                // The not-yet-renamed temporary files are removed by this Transaction's Drop.
                self.entries = done;
                return Err(e);
            }
        }
        Ok(Committed { entries })
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        for e in &self.entries {
            if !e.renamed {
                let _ = rustix::fs::unlinkat(&e.dir, e.tmp.as_str(), AtFlags::empty());
            }
        }
    }
}

fn commit_one(e: &mut Entry) -> Result<(), FsError> {
    let shown = e.rel.to_string();
    if e.had_previous {
        remove_if_present(&e.dir, &e.backup)
            .map_err(|err| FsError::io("remove stale", &shown, err))?;
        rustix::fs::linkat(
            &e.dir,
            e.name(),
            &e.dir,
            e.backup.as_str(),
            AtFlags::empty(),
        )
        .map_err(|err| FsError::io("keep the previous version of", &shown, err))?;
    }
    rustix::fs::renameat(&e.dir, e.tmp.as_str(), &e.dir, e.name())
        .map_err(|err| FsError::io("replace", &shown, err))?;
    e.renamed = true;
    rustix::fs::fsync(&e.dir).map_err(|err| FsError::io("sync the directory of", &shown, err))
}

/// Puts the previous version back (or removes a file that did not exist before).
fn restore(e: &mut Entry) -> Result<(), FsError> {
    if !e.renamed {
        return Ok(());
    }
    let shown = e.rel.to_string();
    let result = if e.had_previous {
        rustix::fs::renameat(&e.dir, e.backup.as_str(), &e.dir, e.name())
    } else {
        rustix::fs::unlinkat(&e.dir, e.name(), AtFlags::empty())
    };
    result.map_err(|err| FsError::io("restore the previous version of", &shown, err))?;
    e.renamed = false;
    rustix::fs::fsync(&e.dir).map_err(|err| FsError::io("sync the directory of", &shown, err))
}

fn remove_if_present(dir: &OwnedFd, name: &str) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Files renamed into place whose previous versions are still kept. Dropping it is
/// [`Committed::finish`].
#[derive(Debug)]
#[must_use = "dropping it keeps the new files; call finish() or rollback()"]
pub(crate) struct Committed {
    entries: Vec<Entry>,
}

impl Committed {
    /// Keeps the new files and removes the previous versions.
    pub(crate) fn finish(mut self) {
        self.remove_backups();
    }

    /// Puts every previous version back, in reverse order. A backup that could not be put
    /// back stays on disk next to its file (`.<name>.vnf-agent-old`).
    pub(crate) fn rollback(mut self) -> Result<(), FsError> {
        let mut first_error = None;
        for mut e in self.entries.drain(..).rev() {
            if let Err(err) = restore(&mut e) {
                first_error.get_or_insert(err);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    fn remove_backups(&mut self) {
        for e in self.entries.drain(..) {
            if e.had_previous && e.renamed {
                let _ = rustix::fs::unlinkat(&e.dir, e.backup.as_str(), AtFlags::empty());
            }
        }
    }
}

impl Drop for Committed {
    fn drop(&mut self) {
        self.remove_backups();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        let root = Root::new(dir.path().join("root"));
        (dir, root)
    }

    fn rel(p: &str) -> RelPath {
        RelPath::parse_absolute(p).unwrap()
    }

    #[test]
    fn parse_rejects_traversal_and_unnormalised_paths() {
        for bad in [
            "../../etc/shadow",
            "/etc/../etc/shadow",
            "/etc/./x",
            "/etc//x",
            "/etc/x/",
            "etc/x",
            "/",
            "/etc/x\0y",
            "/etc/x\ny",
            "/etc/.x.vnf-agent-tmp",
            "/etc/.x.vnf-agent-old",
            "/etc/app/x; rm -rf /",
            "/etc/app/x$(reboot)",
            "/etc/app/`id`",
            "/etc/app/a b",
            "/etc/app/-rf",
            "/etc/app/*",
            "/etc/app/caf\u{e9}",
        ] {
            assert!(RelPath::parse_absolute(bad).is_err(), "{bad:?}");
        }
        assert_eq!(rel("/etc/app/x.conf").to_string(), "/etc/app/x.conf");
        assert!(rel("/etc/app/x").starts_with(&rel("/etc/app")));
        assert!(!rel("/etc/application/x").starts_with(&rel("/etc/app")));
    }

    #[test]
    fn writes_atomically_with_mode_and_creates_directories() {
        let (_d, root) = root();
        let target = rel("/etc/a/b/x.conf");
        let mut tx = Transaction::new(&root);
        let tmp = tx.stage(&target, b"one", FileMode::Exact(0o600)).unwrap();
        assert!(tmp.ends_with("etc/a/b/.x.conf.vnf-agent-tmp"));
        // The staged file has its final mode from the start, before any rename.
        assert_eq!(tmp.metadata().unwrap().permissions().mode() & 0o7777, 0o600);
        assert!(
            !root.host_path(&target).exists(),
            "not visible before commit"
        );
        tx.commit().unwrap().finish();
        let p = root.host_path(&target);
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(p.metadata().unwrap().permissions().mode() & 0o7777, 0o600);
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.conf"], "no temporary or backup file left");
        assert_eq!(root.read(&target, 10).unwrap().unwrap(), b"one");
        assert!(matches!(
            root.read(&target, 2),
            Err(FsError::TooLarge { .. })
        ));
        assert_eq!(root.read(&rel("/etc/none"), 10).unwrap(), None);
    }

    #[test]
    fn keep_mode_keeps_the_previous_permissions() {
        let (_d, root) = root();
        let target = rel("/x");
        std::fs::write(root.host_path(&target), "old").unwrap();
        std::fs::set_permissions(root.host_path(&target), PermissionsExt::from_mode(0o640))
            .unwrap();
        let mut tx = Transaction::new(&root);
        tx.stage(&target, b"new", FileMode::KeepOr(0o644)).unwrap();
        tx.commit().unwrap().finish();
        let meta = root.host_path(&target).metadata().unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    }

    #[test]
    fn rollback_restores_previous_versions_and_removes_new_files() {
        let (_d, root) = root();
        std::fs::write(root.path().join("old"), "previous").unwrap();
        let mut tx = Transaction::new(&root);
        tx.stage(&rel("/old"), b"next", FileMode::Exact(0o644))
            .unwrap();
        tx.stage(&rel("/new"), b"created", FileMode::Exact(0o644))
            .unwrap();
        let committed = tx.commit().unwrap();
        assert_eq!(std::fs::read(root.path().join("old")).unwrap(), b"next");
        committed.rollback().unwrap();
        assert_eq!(std::fs::read(root.path().join("old")).unwrap(), b"previous");
        assert!(!root.path().join("new").exists());
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["old"]);
    }

    #[test]
    fn dropping_a_transaction_leaves_nothing() {
        let (_d, root) = root();
        let mut tx = Transaction::new(&root);
        tx.stage(&rel("/etc/x"), b"x", FileMode::Exact(0o644))
            .unwrap();
        drop(tx);
        assert_eq!(
            std::fs::read_dir(root.path().join("etc")).unwrap().count(),
            0
        );
    }

    #[test]
    fn links_are_never_followed() {
        let (d, root) = root();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("shadow"), "secret").unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        // A directory link escaping the root, a file link escaping the root, and a link that
        // stays inside it: all refused.
        symlink(&outside, root.path().join("etc/app")).unwrap();
        symlink(outside.join("shadow"), root.path().join("etc/shadow")).unwrap();
        symlink("/etc", root.path().join("etc/inner")).unwrap();
        for (p, shown) in [
            ("/etc/app/x.conf", "/etc/app"),
            ("/etc/shadow", "/etc/shadow"),
            ("/etc/inner/x", "/etc/inner"),
        ] {
            let mut tx = Transaction::new(&root);
            let err = tx
                .stage(&rel(p), b"pwned", FileMode::Exact(0o644))
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("{shown} is a symbolic link; links are never followed")
            );
            assert!(matches!(
                root.read(&rel(p), 100),
                Err(FsError::Symlink { .. })
            ));
        }
        assert_eq!(std::fs::read(outside.join("shadow")).unwrap(), b"secret");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }

    #[test]
    fn directories_and_special_files_are_not_replaced() {
        let (_d, root) = root();
        std::fs::create_dir_all(root.path().join("etc/x")).unwrap();
        std::fs::write(root.path().join("file"), "").unwrap();
        let mut tx = Transaction::new(&root);
        assert!(matches!(
            tx.stage(&rel("/etc/x"), b"", FileMode::Exact(0o644)),
            Err(FsError::NotRegularFile { .. })
        ));
        assert!(matches!(
            tx.stage(&rel("/file/y"), b"", FileMode::Exact(0o644)),
            Err(FsError::NotDirectory { .. })
        ));
    }
}
