//! Writer for the `newc` cpio format that the kernel unpacks as an initramfs.
//!
//! Written here rather than with the `cpio` tool so that device nodes and root ownership can be
//! recorded without being root and without touching the host filesystem, and so that the output
//! is byte-for-byte reproducible (fixed inode numbers and timestamps), which keeps the cache key
//! stable.

use std::collections::BTreeMap;

use crate::{Error, Result};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// A filesystem tree keyed by path relative to `/`, without a leading slash.
///
/// A `BTreeMap` orders every directory before its contents (a parent path is a prefix of, hence
/// sorts before, its children), which the kernel's unpacker needs: it does not create missing
/// parent directories.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// Inserts `node` at `path`, creating missing parent directories with mode 0755. A later
    /// insert at the same path replaces the earlier one, so callers can override defaults.
    pub(crate) fn insert(&mut self, path: &str, node: Node) {
        let path = path.trim_matches('/');
        let mut parent = String::new();
        let mut parts = path.split('/').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                break;
            }
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.nodes
                .entry(parent.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
        self.nodes.insert(path.to_owned(), node);
    }

    pub(crate) fn to_newc(&self) -> Result<Vec<u8>> {
        let total: usize = self
            .nodes
            .values()
            .map(|n| match n {
                Node::File { data, .. } => data.len() + 256,
                _ => 256,
            })
            .sum();
        let mut out = Vec::with_capacity(total + 512);
        for (ino, (path, node)) in (1u32..).zip(&self.nodes) {
            let (mode, nlink, data, major, minor): (u32, u32, &[u8], u32, u32) = match node {
                Node::Dir { mode } => (S_IFDIR | mode, 2, &[], 0, 0),
                Node::File { mode, data } => (S_IFREG | mode, 1, data, 0, 0),
                Node::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes(), 0, 0),
                Node::CharDev { mode, major, minor } => (S_IFCHR | mode, 1, &[], *major, *minor),
            };
            write_entry(&mut out, ino, path, mode, nlink, data, major, minor)?;
        }
        write_entry(&mut out, 0, "TRAILER!!!", 0, 1, &[], 0, 0)?;
        Ok(out)
    }
}

#[allow(clippy::too_many_arguments)]
fn write_entry(
    out: &mut Vec<u8>,
    ino: u32,
    name: &str,
    mode: u32,
    nlink: u32,
    data: &[u8],
    rdev_major: u32,
    rdev_minor: u32,
) -> Result<()> {
    // The header stores sizes as 8 hex digits.
    let too_big = || Error::InvalidConfig(format!("{name} is too large for a cpio archive"));
    let filesize = u32::try_from(data.len()).map_err(|_| too_big())?;
    let namesize = u32::try_from(name.len() + 1).map_err(|_| too_big())?;
    // Field order of the newc header after its magic: ino mode uid gid nlink mtime filesize
    // devmajor devminor rdevmajor rdevminor namesize check. Owner root, mtime 0.
    let fields = [
        ino, mode, 0, 0, nlink, 0, filesize, 0, 0, rdev_major, rdev_minor, namesize, 0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
    Ok(())
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_and_emitted_first() {
        let mut t = Tree::default();
        t.insert(
            "/a/b/c",
            Node::File {
                mode: 0o644,
                data: b"hi".to_vec(),
            },
        );
        t.insert("/a-b", Node::Symlink { target: "x".into() });
        let order: Vec<_> = t.nodes.keys().cloned().collect();
        assert_eq!(order, ["a", "a-b", "a/b", "a/b/c"]);
    }

    #[test]
    fn newc_layout_is_aligned_and_terminated() {
        let mut t = Tree::default();
        t.insert(
            "init",
            Node::File {
                mode: 0o755,
                data: b"abc".to_vec(),
            },
        );
        let out = t.to_newc().unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        // header 110 bytes + "init\0" (5) padded to 116, then 3 data bytes padded to 120.
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..119], b"abc");
        assert_eq!(&out[120..126], b"070701");
        let trailer = b"TRAILER!!!\0";
        assert_eq!(&out[120 + 110..120 + 110 + trailer.len()], trailer);
        // mode field of the first entry: regular file, 0755
        assert_eq!(&out[14..22], b"000081ED");
    }
}
