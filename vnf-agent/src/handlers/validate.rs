//! Field-by-field validation shared by the handlers.
//!
//! Controller data is parsed into typed payloads (`serde`, unknown fields rejected), then every
//! string that will end up in a rendered file is checked here against a length bound and a
//! character set chosen so that it cannot start a new line, a new directive or a new quoted
//! string in the target format. Every rejection names the field (`rules[3].source`) in the
//! controller's terms.

use std::fmt;
use std::net::IpAddr;

use serde::de::DeserializeOwned;

use crate::handler::Rejection;

/// Parses a JSON payload of at most `max` bytes; serde errors carry the field path.
pub(crate) fn parse_payload<T: DeserializeOwned>(
    service: &str,
    payload: &[u8],
    max: usize,
) -> Result<T, Rejection> {
    if payload.len() > max {
        return Err(Rejection::new(format!(
            "{service} payload is {} bytes, the limit is {max}",
            payload.len()
        )));
    }
    // serde also fills structs from JSON arrays (`[]` would be an empty configuration):
    // insist on the documented object form.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Rejection::new(format!(
            "{service} payload: expected a JSON object"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            Rejection::new(format!("{service} payload: {inner}"))
        } else {
            Rejection::new(format!("{service} payload: {path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| Rejection::new(format!("{service} payload: {e}")))?;
    Ok(value)
}

/// Rejects a list longer than `max`.
pub(crate) fn check_count(field: &str, len: usize, max: usize) -> Result<(), Rejection> {
    if len > max {
        return Err(Rejection::new(format!(
            "{field}: {len} entries, the limit is {max}"
        )));
    }
    Ok(())
}

/// Rejects an empty string, one longer than `max` bytes, or one containing a control character
/// (line breaks, NUL, escape sequences): the minimum for any string that is rendered anywhere.
pub(crate) fn check_text(field: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::new(format!("{field}: must not be empty")));
    }
    if value.len() > max {
        return Err(Rejection::new(format!(
            "{field}: {} bytes, the limit is {max}",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Rejection::new(format!(
            "{field}: contains the control character U+{:04X}",
            u32::from(c)
        )));
    }
    Ok(())
}

/// [`check_text`], then every character must satisfy `allowed`, described as `charset` in the
/// rejection (e.g. "[A-Za-z0-9_-]").
pub(crate) fn check_charset(
    field: &str,
    value: &str,
    max: usize,
    charset: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), Rejection> {
    check_text(field, value, max)?;
    if let Some(c) = value.chars().find(|c| !allowed(*c)) {
        return Err(Rejection::new(format!(
            "{field}: {value:?} contains {c:?}; only {charset} is allowed"
        )));
    }
    Ok(())
}

/// A name as used in generated configuration: 1..=64 bytes of `[A-Za-z0-9_.-]` (or without
/// the dot), starting with a letter or digit.
pub(crate) fn check_name(field: &str, value: &str, allow_dot: bool) -> Result<(), Rejection> {
    let charset = if allow_dot {
        "[A-Za-z0-9_.-]"
    } else {
        "[A-Za-z0-9_-]"
    };
    check_charset(field, value, 64, charset, |c| {
        c.is_ascii_alphanumeric() || c == '_' || c == '-' || (allow_dot && c == '.')
    })?;
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(Rejection::new(format!(
            "{field}: {value:?} must start with a letter or digit"
        )));
    }
    Ok(())
}

/// An IPv4 or IPv6 network in CIDR notation; a bare address is a host route (/32, /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    pub(crate) addr: IpAddr,
    pub(crate) prefix: u8,
}

impl Cidr {
    /// Parses with `std::net`, rejecting host bits set below the prefix: the controller must
    /// say which network it means.
    pub(crate) fn parse(field: &str, value: &str) -> Result<Cidr, Rejection> {
        check_text(field, value, 64)?;
        let (addr_text, prefix_text) = match value.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (value, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            Rejection::new(format!(
                "{field}: {value:?} is not an IPv4 or IPv6 address or CIDR"
            ))
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => {
                let ok = !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
                match p.parse::<u8>() {
                    Ok(n) if ok && n <= max => n,
                    _ => {
                        return Err(Rejection::new(format!(
                            "{field}: {value:?} has prefix length {p:?}; expected 0 to {max}"
                        )))
                    }
                }
            }
        };
        let cidr = Cidr { addr, prefix };
        let network = cidr.network();
        if network != addr {
            return Err(Rejection::new(format!(
                "{field}: {value:?} has host bits set; the network is {network}/{prefix}"
            )));
        }
        Ok(cidr)
    }

    pub(crate) fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl fmt::Display for Cidr {
    /// `10.0.0.0/24`; a host route is written as the bare address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.is_ipv4() { 32 } else { 128 };
        if self.prefix == full {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// Parses an IP address (no prefix) with `std::net`.
pub(crate) fn parse_ip(field: &str, value: &str) -> Result<IpAddr, Rejection> {
    check_text(field, value, 64)?;
    value
        .parse()
        .map_err(|_| Rejection::new(format!("{field}: {value:?} is not an IPv4 or IPv6 address")))
}

/// A DNS host name (RFC 1123 labels) or an IP address.
pub(crate) fn check_host(field: &str, value: &str) -> Result<(), Rejection> {
    check_text(field, value, 253)?;
    if value.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if value.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(Rejection::new(format!(
            "{field}: {value:?} is neither an IP address nor a DNS host name"
        )))
    }
}

/// Longest excerpt of a tool's output quoted in a rejection: the Ack reason is bounded
/// (`relay_protocol::MAX_TEXT`), and the first lines say what is wrong.
const MAX_TOOL_OUTPUT: usize = 2048;

/// The output of a failed command, trimmed and bounded for a rejection reason.
pub(crate) fn tool_output(stdout: &str, stderr: &str) -> String {
    let text = match (stdout.trim(), stderr.trim()) {
        ("", "") => return "no output".to_owned(),
        (out, "") => out.to_owned(),
        ("", err) => err.to_owned(),
        (out, err) => format!("{err}\n{out}"),
    };
    if text.len() <= MAX_TOOL_OUTPUT {
        return text;
    }
    let mut end = MAX_TOOL_OUTPUT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_v4_v6_and_rejects_garbage() {
        let c = Cidr::parse("f", "10.0.0.0/24").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/24");
        assert_eq!(
            Cidr::parse("f", "10.1.2.3").unwrap().to_string(),
            "10.1.2.3"
        );
        assert_eq!(
            Cidr::parse("f", "10.1.2.3/32").unwrap().to_string(),
            "10.1.2.3"
        );
        assert_eq!(
            Cidr::parse("f", "0.0.0.0/0").unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert_eq!(
            Cidr::parse("f", "2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(Cidr::parse("f", "::/0").unwrap().to_string(), "::/0");
        for bad in [
            "10.0.0.1/24",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/024x",
            "2001:db8::/129",
            "10.0.0.0/8; rm -rf /",
            "$(reboot)",
            "",
        ] {
            let e = Cidr::parse("rules[0].source", bad).unwrap_err();
            assert!(e.0.starts_with("rules[0].source: "), "{bad:?}: {e}");
        }
        let e = Cidr::parse("f", "10.0.0.1/24").unwrap_err();
        assert!(e.0.contains("network is 10.0.0.0/24"), "{e}");
    }

    #[test]
    fn text_rejects_control_characters_and_length() {
        assert!(check_text("f", "ok text", 10).is_ok());
        let e = check_text("x.comment", "a\nb", 10).unwrap_err();
        assert_eq!(e.0, "x.comment: contains the control character U+000A");
        assert!(check_text("f", "01234567890", 10).is_err());
        assert!(check_text("f", "", 10).is_err());
        assert!(check_text("f", "a\u{0}b", 10).is_err());
        assert!(check_text("f", "a\u{1b}[2Jb", 10).is_err());
    }

    #[test]
    fn names_are_a_safe_charset() {
        assert!(check_name("n", "web-1_a", false).is_ok());
        assert!(check_name("n", "web.1", true).is_ok());
        for bad in [
            "web.1", "-x", "a b", "a;b", "$(x)", "`x`", "a\nb", "%default",
        ] {
            assert!(check_name("n", bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts_are_names_or_addresses() {
        for good in ["10.0.0.1", "2001:db8::1", "web1", "web-1.example.com"] {
            assert!(check_host("h", good).is_ok(), "{good}");
        }
        for bad in ["-web", "web_1", "a..b", "a b", "x;y", "host:80"] {
            assert!(check_host("h", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn payload_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct P {
            #[allow(dead_code)]
            items: Vec<I>,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct I {
            #[allow(dead_code)]
            n: u8,
        }
        let e = parse_payload::<P>("svc", br#"{"items":[{"n":1},{"n":300}]}"#, 100).unwrap_err();
        assert!(e.0.starts_with("svc payload: items[1].n: "), "{e}");
        let e = parse_payload::<P>("svc", br#"{"items":[],"x":1}"#, 100).unwrap_err();
        assert!(e.0.contains("unknown field `x`"), "{e}");
        let e = parse_payload::<P>("svc", b" [[]]", 100).unwrap_err();
        assert_eq!(e.0, "svc payload: expected a JSON object");
        let e = parse_payload::<P>("svc", &[b' '; 101], 100).unwrap_err();
        assert_eq!(e.0, "svc payload is 101 bytes, the limit is 100");
    }

    #[test]
    fn tool_output_is_bounded() {
        assert_eq!(tool_output("", " \n"), "no output");
        assert_eq!(tool_output("out\n", "err\n"), "err\nout");
        let long = "é".repeat(3000);
        let t = tool_output("", &long);
        assert!(t.len() <= MAX_TOOL_OUTPUT + 3);
        assert!(t.ends_with("..."));
    }
}
