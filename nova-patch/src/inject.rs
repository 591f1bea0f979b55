//! Adds the relay channel (and the instance key) to a libvirt domain XML, changing nothing else.
//!
//! The document is parsed with `roxmltree`, which is read-only but knows the byte range of
//! every node in the source; the changes are planned on the parsed tree as a few byte-range
//! edits and applied to the original text. Everything not edited (comments, attribute order and
//! quoting, whitespace, other devices, the XML declaration) stays byte for byte. Inserted
//! elements follow the indentation of their new siblings, or the document's own indentation
//! step, and stay on one line in a document written on one line.
//!
//! What gets ensured, each only if missing:
//! - a `<controller type='virtio-serial'/>` in `<devices>` (an existing one is reused);
//! - `<channel type='unix'><source mode='bind'/><target type='virtio' name='…'/></channel>`:
//!   no source path, so libvirt places the socket and relay-host reads it from the live XML. A
//!   channel that already has the target name is left exactly as it is, whatever its type;
//! - with a key: the OEM string `org.opensfc.relay.key:<hex>` in `<sysinfo type='smbios'>`
//!   (`<oemStrings>`), replacing any earlier relay key entry (a second one is removed), and
//!   `<smbios mode='sysinfo'/>` in `<os>`, without which QEMU is not given the strings.
//!
//! Applying the result again changes nothing: [`inject`] is idempotent.

use std::ops::Range;

use roxmltree::{Document, Node, ParsingOptions};

use crate::key::{ChannelName, RelayKey, OEM_KEY_PREFIX};
use crate::Error;

/// Largest document accepted, in nodes; a domain has a few hundred.
const NODES_LIMIT: u32 = 100_000;
/// Indentation step used when the document shows none of its own.
const DEFAULT_STEP: &str = "  ";

/// The domain XML `xml` with the relay channel (target name `target`) and, when `key` is given,
/// the key in its SMBIOS OEM strings.
pub fn inject(xml: &str, target: &ChannelName, key: Option<&RelayKey>) -> Result<String, Error> {
    let doc = parse(xml)?;
    let domain = doc.root_element();
    let mut plan = Plan::new(xml, domain);
    plan.channel(domain, target);
    if let Some(key) = key {
        plan.key(domain, key)?;
    }
    Ok(plan.apply())
}

/// For domains that opted into the relay (they carry a relay key or already have the channel):
/// the XML with the channel and its controller ensured, or `None` when the domain did not opt in
/// or nothing was missing. The key and SMBIOS settings are never touched. This is what the
/// libvirt hook does on `migrate` and `restore`.
pub fn ensure_channel(xml: &str, target: &ChannelName) -> Result<Option<String>, Error> {
    let doc = parse(xml)?;
    let domain = doc.root_element();
    if !has_relay_key(domain) && find_channel(domain, target).is_none() {
        return Ok(None);
    }
    let mut plan = Plan::new(xml, domain);
    plan.channel(domain, target);
    if plan.edits.is_empty() {
        return Ok(None);
    }
    Ok(Some(plan.apply()))
}

/// The domain's `<name>` and `<uuid>`, as far as present.
pub fn domain_identity(xml: &str) -> Result<(Option<String>, Option<String>), Error> {
    let doc = parse(xml)?;
    let domain = doc.root_element();
    let text = |name| child(domain, name).map(|n| element_text(n).trim().to_owned());
    Ok((text("name"), text("uuid")))
}

fn parse(xml: &str) -> Result<Document<'_>, Error> {
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: NODES_LIMIT,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(xml, options).map_err(Error::Xml)?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" || root.tag_name().namespace().is_some() {
        return Err(Error::NotADomain(root.tag_name().name().to_owned()));
    }
    Ok(doc)
}

/// Element children of `node` called `name` (no namespace).
fn children<'a, 'i>(node: Node<'a, 'i>, name: &'static str) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children().filter(move |n| {
        n.is_element() && n.tag_name().name() == name && n.tag_name().namespace().is_none()
    })
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &'static str) -> Option<Node<'a, 'i>> {
    children(node, name).next()
}

/// All text inside an element, entities decoded.
fn element_text(node: Node<'_, '_>) -> String {
    node.descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect()
}

fn find_channel<'a, 'i>(domain: Node<'a, 'i>, target: &ChannelName) -> Option<Node<'a, 'i>> {
    let devices = child(domain, "devices")?;
    children(devices, "channel")
        .find(|c| children(*c, "target").any(|t| t.attribute("name") == Some(target.as_str())))
}

fn smbios_sysinfo<'a, 'i>(domain: Node<'a, 'i>) -> Option<Node<'a, 'i>> {
    children(domain, "sysinfo").find(|s| s.attribute("type") == Some("smbios"))
}

fn relay_key_entries<'a, 'i>(sysinfo: Node<'a, 'i>) -> Vec<Node<'a, 'i>> {
    children(sysinfo, "oemStrings")
        .flat_map(|o| children(o, "entry"))
        .filter(|e| element_text(*e).trim().starts_with(OEM_KEY_PREFIX))
        .collect()
}

fn has_relay_key(domain: Node<'_, '_>) -> bool {
    smbios_sysinfo(domain).is_some_and(|s| !relay_key_entries(s).is_empty())
}

/// An element to insert: name, attributes (values are already safe to put between single
/// quotes) and content.
struct Elem {
    name: &'static str,
    attrs: Vec<(&'static str, String)>,
    body: Body,
}

enum Body {
    Empty,
    Text(String),
    Children(Vec<Elem>),
}

impl Elem {
    fn new(name: &'static str, attrs: &[(&'static str, &str)], body: Body) -> Elem {
        Elem {
            name,
            attrs: attrs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            body,
        }
    }

    /// The element as text whose first line sits at `indent` (`None`: all on one line).
    fn render(&self, indent: Option<&str>, step: &str, out: &mut String) {
        out.push('<');
        out.push_str(self.name);
        for (k, v) in &self.attrs {
            out.push_str(&format!(" {k}='{v}'"));
        }
        match &self.body {
            Body::Empty => out.push_str("/>"),
            Body::Text(t) => {
                out.push('>');
                out.push_str(t);
                out.push_str(&format!("</{}>", self.name));
            }
            Body::Children(children) => {
                out.push('>');
                let inner = indent.map(|i| format!("{i}{step}"));
                for c in children {
                    if let Some(inner) = &inner {
                        out.push('\n');
                        out.push_str(inner);
                    }
                    c.render(inner.as_deref(), step, out);
                }
                if let Some(indent) = indent {
                    out.push('\n');
                    out.push_str(indent);
                }
                out.push_str(&format!("</{}>", self.name));
            }
        }
    }
}

/// Byte-range replacements on the source text, planned on its parsed tree.
struct Plan<'s> {
    src: &'s str,
    /// The document's indentation step; `None` when it is written on one line.
    step: Option<String>,
    edits: Vec<(Range<usize>, String)>,
}

impl<'s> Plan<'s> {
    fn new(src: &'s str, domain: Node<'_, '_>) -> Plan<'s> {
        // The step is how far the domain's first child is indented past the domain itself.
        let step = domain
            .children()
            .find(|n| n.is_element())
            .and_then(|first| line_indent(src, first.range().start))
            .map(|first| {
                let base = line_indent(src, domain.range().start).unwrap_or("");
                match first.strip_prefix(base) {
                    Some(step) if !step.is_empty() => step.to_owned(),
                    _ => DEFAULT_STEP.to_owned(),
                }
            });
        Plan {
            src,
            step,
            edits: Vec::new(),
        }
    }

    fn step(&self) -> &str {
        self.step.as_deref().unwrap_or(DEFAULT_STEP)
    }

    /// The controller and channel, each unless present.
    fn channel(&mut self, domain: Node<'_, '_>, target: &ChannelName) {
        let mut missing = Vec::new();
        let devices = child(domain, "devices");
        let has_controller = devices.is_some_and(|d| {
            children(d, "controller").any(|c| c.attribute("type") == Some("virtio-serial"))
        });
        if !has_controller {
            missing.push(Elem::new(
                "controller",
                &[("type", "virtio-serial")],
                Body::Empty,
            ));
        }
        if find_channel(domain, target).is_none() {
            missing.push(Elem::new(
                "channel",
                &[("type", "unix")],
                Body::Children(vec![
                    Elem::new("source", &[("mode", "bind")], Body::Empty),
                    Elem::new(
                        "target",
                        &[("type", "virtio"), ("name", target.as_str())],
                        Body::Empty,
                    ),
                ]),
            ));
        }
        if missing.is_empty() {
            return;
        }
        match devices {
            Some(devices) => self.append(devices, &missing),
            None => self.append(
                domain,
                &[Elem::new("devices", &[], Body::Children(missing))],
            ),
        }
    }

    /// The key entry and `<smbios mode='sysinfo'/>`.
    fn key(&mut self, domain: Node<'_, '_>, key: &RelayKey) -> Result<(), Error> {
        let os = child(domain, "os").ok_or(Error::NoOs)?;
        let entry_text = key.oem_string();
        let entry = || Elem::new("entry", &[], Body::Text(entry_text.clone()));
        match smbios_sysinfo(domain) {
            None => {
                let sysinfo = Elem::new(
                    "sysinfo",
                    &[("type", "smbios")],
                    Body::Children(vec![Elem::new(
                        "oemStrings",
                        &[],
                        Body::Children(vec![entry()]),
                    )]),
                );
                self.insert_before(os, &sysinfo);
            }
            Some(sysinfo) => {
                let existing = relay_key_entries(sysinfo);
                match existing.split_first() {
                    Some((first, rest)) => {
                        if element_text(*first) != entry_text {
                            let mut text = String::new();
                            entry().render(None, "", &mut text);
                            self.edits.push((first.range(), text));
                        }
                        for extra in rest {
                            self.remove(*extra);
                        }
                    }
                    None => match child(sysinfo, "oemStrings") {
                        Some(oem) => self.append(oem, &[entry()]),
                        None => self.append(
                            sysinfo,
                            &[Elem::new("oemStrings", &[], Body::Children(vec![entry()]))],
                        ),
                    },
                }
            }
        }
        let sysinfo_mode = Elem::new("smbios", &[("mode", "sysinfo")], Body::Empty);
        match child(os, "smbios") {
            Some(smbios) if smbios.attribute("mode") == Some("sysinfo") => {}
            Some(smbios) => {
                let mut text = String::new();
                sysinfo_mode.render(None, "", &mut text);
                self.edits.push((smbios.range(), text));
            }
            None => self.append(os, &[sysinfo_mode]),
        }
        Ok(())
    }

    /// Appends `elems` as the last children of `parent`.
    fn append(&mut self, parent: Node<'_, '_>, elems: &[Elem]) {
        let src = self.src;
        let range = parent.range();
        let own = &src[range.clone()];
        let pretty = self.step.is_some();
        let parent_indent = line_indent(src, range.start).unwrap_or("");
        // Indented like the existing children, else one step deeper than the parent.
        let indent = parent
            .children()
            .rfind(|n| n.is_element())
            .and_then(|c| line_indent(src, c.range().start))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{parent_indent}{}", self.step()));
        let mut text = String::new();
        for e in elems {
            if pretty {
                text.push('\n');
                text.push_str(&indent);
            }
            e.render(pretty.then_some(indent.as_str()), self.step(), &mut text);
        }
        match own.rfind("</") {
            Some(close) => {
                // After the last content, before the whitespace that leads to the end tag.
                let close = range.start + close;
                let content_end = src[..close].trim_end_matches([' ', '\t', '\n', '\r']).len();
                let at = content_end.max(start_tag_end(src, &range));
                self.edits.push((at..at, text));
            }
            None => {
                // `<parent …/>`: becomes `<parent …>…</parent>`.
                let start_tag = own.trim_end_matches("/>").trim_end();
                let mut replacement = format!("{start_tag}>{text}");
                if pretty {
                    replacement.push('\n');
                    replacement.push_str(parent_indent);
                }
                replacement.push_str(&format!("</{}>", tag_qname(own)));
                self.edits.push((range, replacement));
            }
        }
    }

    /// Inserts `elem` as the sibling just before `node`.
    fn insert_before(&mut self, node: Node<'_, '_>, elem: &Elem) {
        let at = node.range().start;
        let indent = line_indent(self.src, at);
        let pretty = self.step.is_some() && indent.is_some();
        let mut text = String::new();
        elem.render(indent.filter(|_| pretty), self.step(), &mut text);
        if let Some(indent) = indent.filter(|_| pretty) {
            text.push('\n');
            text.push_str(indent);
        }
        self.edits.push((at..at, text));
    }

    /// Removes `node`, with the indentation of its line when it stands on a line of its own.
    fn remove(&mut self, node: Node<'_, '_>) {
        let range = node.range();
        let start = match line_indent(self.src, range.start) {
            // The newline before the indentation goes too.
            Some(indent) => range.start - indent.len() - 1,
            None => range.start,
        };
        self.edits.push((start..range.end, String::new()));
    }

    fn apply(self) -> String {
        // Back to front, so earlier ranges stay valid (the plan never overlaps edits). Where
        // an insertion and a replacement start at the same place (an element inserted before
        // a self-closing one that gets children), the replacement goes first; insertions at
        // the same place end up in the order they were planned.
        let mut edits: Vec<_> = self.edits.into_iter().enumerate().collect();
        edits.sort_by_key(|(i, (r, _))| std::cmp::Reverse((r.start, r.end, *i)));
        let mut out = self.src.to_owned();
        for (_, (range, text)) in edits {
            out.replace_range(range, &text);
        }
        out
    }
}

/// The whitespace between the start of the line and `pos`, if only spaces and tabs are there
/// and a line break precedes them (`None` for a node that does not start its line).
fn line_indent(src: &str, pos: usize) -> Option<&str> {
    let before = &src[..pos];
    let line_start = before.rfind('\n')? + 1;
    let indent = &before[line_start..];
    indent
        .bytes()
        .all(|b| b == b' ' || b == b'\t')
        .then_some(indent)
}

/// Where the start tag of the element spanning `range` ends (after its `>`). Attribute values
/// cannot contain `<`, but may contain `>`; quotes are tracked.
fn start_tag_end(src: &str, range: &Range<usize>) -> usize {
    let mut quote = None;
    for (i, b) in src[range.clone()].bytes().enumerate() {
        match (quote, b) {
            (None, b'\'' | b'"') => quote = Some(b),
            (Some(q), _) if q == b => quote = None,
            (None, b'>') => return range.start + i + 1,
            _ => {}
        }
    }
    range.end
}

/// The qualified name in a start tag `<name …`.
fn tag_qname(tag: &str) -> &str {
    let name = tag.trim_start_matches('<');
    let end = name
        .find(|c: char| c.is_whitespace() || c == '/' || c == '>')
        .unwrap_or(name.len());
    &name[..end]
}

#[cfg(test)]
mod tests;
