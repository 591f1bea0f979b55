//! Output for people, as the neutron CLI prints it: a Field|Value table for one resource
//! (fields sorted, lists one element per line, objects as JSON) and a table of a few useful
//! columns per resource for lists.
//!
//! The tables are hand-rolled (`+---+` borders, one space of padding) rather than taken from a
//! crate: they need nothing but multi-line cells, and this keeps the binary's dependencies to
//! the HTTP client. Widths count characters, which is right for the ASCII that IDs, addresses
//! and most names are; control characters from the server are escaped so that a resource name
//! cannot move the terminal's cursor.

use serde_json::{Map, Value};

/// What a list column shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// The attribute of that name.
    Field(&'static str),
    /// A port's IP addresses, one per line.
    IpAddresses,
    /// A flow classifier's match, in the networking-sfc client's summary form.
    ClassifierSummary,
    /// A service graph's branching points, `src -> dst, dst` per line.
    BranchingPoints,
    /// A relay host's guests, `instance_id (name)` per line.
    Guests,
}

/// One column of a list table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub header: &'static str,
    pub cell: Cell,
}

const fn field(name: &'static str) -> Column {
    Column {
        header: name,
        cell: Cell::Field(name),
    }
}

pub const NETWORK_COLUMNS: &[Column] = &[field("id"), field("name"), field("subnets")];
pub const SUBNET_COLUMNS: &[Column] = &[
    field("id"),
    field("name"),
    field("network_id"),
    field("cidr"),
    field("gateway_ip"),
];
pub const PORT_COLUMNS: &[Column] = &[
    field("id"),
    field("name"),
    field("mac_address"),
    Column {
        header: "fixed_ips",
        cell: Cell::IpAddresses,
    },
    field("device_id"),
    field("binding:host_id"),
];
pub const PORT_PAIR_COLUMNS: &[Column] = &[
    field("id"),
    field("name"),
    field("ingress"),
    field("egress"),
];
pub const PORT_PAIR_GROUP_COLUMNS: &[Column] = &[
    field("id"),
    field("name"),
    field("port_pairs"),
    field("tap_enabled"),
];
pub const FLOW_CLASSIFIER_COLUMNS: &[Column] = &[
    field("id"),
    field("name"),
    Column {
        header: "summary",
        cell: Cell::ClassifierSummary,
    },
];
pub const PORT_CHAIN_COLUMNS: &[Column] = &[
    field("id"),
    field("name"),
    field("port_pair_groups"),
    field("flow_classifiers"),
    field("chain_id"),
];
pub const SERVICE_GRAPH_COLUMNS: &[Column] = &[
    field("id"),
    field("name"),
    Column {
        header: "port_chains",
        cell: Cell::BranchingPoints,
    },
];
pub const VNF_CONFIG_COLUMNS: &[Column] = &[
    field("service"),
    field("version"),
    field("status"),
    field("applied_version"),
    field("message"),
    field("updated_at"),
];
pub const VNF_HOST_COLUMNS: &[Column] = &[
    field("host"),
    field("connected"),
    field("peer_address"),
    field("last_seen"),
    Column {
        header: "guests",
        cell: Cell::Guests,
    },
];

/// The object with only `fields` (all of it without).
pub fn select_fields(object: &Value, fields: &[String]) -> Value {
    match object {
        Value::Object(map) if !fields.is_empty() => Value::Object(
            map.iter()
                .filter(|(k, _)| fields.iter().any(|f| f == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Map<String, Value>>(),
        ),
        other => other.clone(),
    }
}

/// The Field|Value table of one resource, fields sorted.
pub fn object_table(object: &Value) -> String {
    let mut rows: Vec<Vec<String>> = match object {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| vec![clean(k), format_value(v)])
            .collect(),
        other => vec![vec![String::new(), format_value(other)]],
    };
    rows.sort();
    render(&["Field".into(), "Value".into()], &rows)
}

/// The table of a list: `columns`, or with `fields` given, those attributes.
pub fn list_table(items: &[Value], columns: &[Column], fields: &[String]) -> String {
    if !fields.is_empty() {
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|item| fields.iter().map(|f| format_value(&item[f])).collect())
            .collect();
        let headers: Vec<String> = fields.iter().map(|f| clean(f)).collect();
        return render(&headers, &rows);
    }
    let headers: Vec<String> = columns.iter().map(|c| c.header.to_string()).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|c| cell(item, c.cell)).collect())
        .collect();
    render(&headers, &rows)
}

fn cell(item: &Value, cell: Cell) -> String {
    match cell {
        Cell::Field(name) => format_value(&item[name]),
        Cell::IpAddresses => item["fixed_ips"]
            .as_array()
            .map(|ips| {
                ips.iter()
                    .map(|ip| format_value(&ip["ip_address"]))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default(),
        Cell::ClassifierSummary => classifier_summary(item),
        Cell::BranchingPoints => item["port_chains"]
            .as_object()
            .map(|chains| {
                chains
                    .iter()
                    .map(|(src, dsts)| {
                        let dsts: Vec<String> = dsts
                            .as_array()
                            .map(|d| d.iter().map(format_value).collect())
                            .unwrap_or_default();
                        format!("{} -> {}", clean(src), dsts.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default(),
        Cell::Guests => item["guests"]
            .as_array()
            .map(|guests| {
                guests
                    .iter()
                    .map(|g| match &g["name"] {
                        Value::String(name) if !name.is_empty() => {
                            format!("{} ({})", format_value(&g["instance_id"]), clean(name))
                        }
                        _ => format_value(&g["instance_id"]),
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default(),
    }
}

/// `protocol: tcp,` / `source[port]: 22.1.20.1/32[23:23],` / `destination[port]: ...`, plus
/// the logical ports that are set.
fn classifier_summary(fc: &Value) -> String {
    let or_any = |v: &Value| match v {
        Value::Null => "any".to_string(),
        other => format_value(other),
    };
    let range = |prefix: &str| {
        let (min, max) = (
            &fc[format!("{prefix}_port_range_min")],
            &fc[format!("{prefix}_port_range_max")],
        );
        if min.is_null() && max.is_null() {
            "any".to_string()
        } else {
            format!("{}:{}", or_any(min), or_any(max))
        }
    };
    let mut lines = vec![
        format!("protocol: {}", or_any(&fc["protocol"])),
        format!(
            "source[port]: {}[{}]",
            or_any(&fc["source_ip_prefix"]),
            range("source")
        ),
        format!(
            "destination[port]: {}[{}]",
            or_any(&fc["destination_ip_prefix"]),
            range("destination")
        ),
    ];
    for (label, key) in [
        ("neutron_source_port", "logical_source_port"),
        ("neutron_destination_port", "logical_destination_port"),
    ] {
        if !fc[key].is_null() {
            lines.push(format!("{label}: {}", format_value(&fc[key])));
        }
    }
    lines.join(",\n")
}

/// One value as a (possibly multi-line) cell.
pub fn format_value(v: &Value) -> String {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Object(_) | Value::Array(_) => clean(&item.to_string()),
                other => format_value(other),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Object(_) => {
            let compact = v.to_string();
            // Short objects (service-function parameters) stay on one line; a config payload
            // is easier to read indented.
            if compact.chars().count() <= 60 {
                clean(&compact)
            } else {
                clean(&serde_json::to_string_pretty(v).unwrap_or(compact))
            }
        }
        scalar => scalar_text(scalar),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        // As the neutron CLI (Python) prints booleans.
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => clean(s),
        other => other.to_string(),
    }
}

/// Escapes control characters other than newlines, which split a cell into lines.
fn clean(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\n') {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Draws a bordered table; cells may span several lines. No trailing newline.
fn render(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            let w = cell
                .split('\n')
                .map(|l| l.chars().count())
                .max()
                .unwrap_or(0);
            *width = (*width).max(w);
        }
    }
    let border: String = std::iter::once("+".to_string())
        .chain(widths.iter().map(|w| format!("{}+", "-".repeat(w + 2))))
        .collect();
    let mut out = vec![border.clone()];
    out.extend(row_lines(headers, &widths));
    out.push(border.clone());
    for row in rows {
        out.extend(row_lines(row, &widths));
    }
    // An empty list is the header alone, closed by the border under it.
    if !rows.is_empty() {
        out.push(border);
    }
    out.join("\n")
}

/// The text lines of one row: as many as its tallest cell has.
fn row_lines(cells: &[String], widths: &[usize]) -> Vec<String> {
    let lines: Vec<Vec<&str>> = cells.iter().map(|c| c.split('\n').collect()).collect();
    let height = lines.iter().map(Vec::len).max().unwrap_or(1);
    (0..height)
        .map(|n| {
            let mut line = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let text = lines.get(i).and_then(|l| l.get(n)).copied().unwrap_or("");
                line.push(' ');
                line.push_str(text);
                line.push_str(&" ".repeat(w.saturating_sub(text.chars().count()) + 1));
                line.push('|');
            }
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn a_resource_is_a_sorted_field_value_table() {
        let pp = json!({
            "name": "PP1",
            "id": "1",
            "service_function_parameters": {"correlation": null, "weight": 1},
            "description": "",
        });
        assert_eq!(
            object_table(&pp),
            "\
+-----------------------------+---------------------------------+
| Field                       | Value                           |
+-----------------------------+---------------------------------+
| description                 |                                 |
| id                          | 1                               |
| name                        | PP1                             |
| service_function_parameters | {\"correlation\":null,\"weight\":1} |
+-----------------------------+---------------------------------+"
        );
    }

    #[test]
    fn lists_put_one_element_per_line() {
        let chains = [
            json!({"id": "c1", "name": "PC1", "port_pair_groups": ["g1", "g2"],
            "flow_classifiers": [], "chain_id": 1, "other": "hidden"}),
        ];
        assert_eq!(
            list_table(&chains, PORT_CHAIN_COLUMNS, &[]),
            "\
+----+------+------------------+------------------+----------+
| id | name | port_pair_groups | flow_classifiers | chain_id |
+----+------+------------------+------------------+----------+
| c1 | PC1  | g1               |                  | 1        |
|    |      | g2               |                  |          |
+----+------+------------------+------------------+----------+"
        );
        assert_eq!(
            list_table(
                &chains,
                PORT_CHAIN_COLUMNS,
                &["name".into(), "other".into()]
            ),
            "\
+------+--------+
| name | other  |
+------+--------+
| PC1  | hidden |
+------+--------+"
        );
        assert_eq!(
            list_table(&[], PORT_PAIR_COLUMNS, &[]),
            "\
+----+------+---------+--------+
| id | name | ingress | egress |
+----+------+---------+--------+"
        );
    }

    #[test]
    fn special_columns() {
        let fc = json!({"protocol": "tcp", "source_ip_prefix": "22.1.20.1/32",
            "destination_ip_prefix": null, "source_port_range_min": 23,
            "source_port_range_max": 23, "destination_port_range_min": null,
            "destination_port_range_max": null, "logical_source_port": "p1",
            "logical_destination_port": null});
        assert_eq!(
            cell(&fc, Cell::ClassifierSummary),
            "protocol: tcp,\nsource[port]: 22.1.20.1/32[23:23],\ndestination[port]: any[any],\nneutron_source_port: p1"
        );
        let port = json!({"fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.2"},
            {"subnet_id": "s", "ip_address": "10.0.0.3"}]});
        assert_eq!(cell(&port, Cell::IpAddresses), "10.0.0.2\n10.0.0.3");
        let graph = json!({"port_chains": {"a": ["b", "c"], "b": ["d"]}});
        assert_eq!(cell(&graph, Cell::BranchingPoints), "a -> b, c\nb -> d");
        let host = json!({"guests": [{"instance_id": "i1", "name": "vm1"},
            {"instance_id": "i2", "name": null}]});
        assert_eq!(cell(&host, Cell::Guests), "i1 (vm1)\ni2");
    }

    #[test]
    fn values() {
        assert_eq!(format_value(&json!(null)), "");
        assert_eq!(format_value(&json!(true)), "True");
        assert_eq!(format_value(&json!(7)), "7");
        assert_eq!(format_value(&json!(["a", {"b": 1}])), "a\n{\"b\":1}");
        let long = json!({"rules": ["allow tcp 22 from 10.0.0.0/8", "allow udp 53", "deny all"]});
        assert!(format_value(&long).contains("\n  \"rules\": ["));
        assert_eq!(format_value(&json!("a\u{1b}[2Jb")), "a\\u{1b}[2Jb");
    }

    #[test]
    fn field_selection() {
        let v = json!({"id": "1", "name": "n", "x": 2});
        assert_eq!(select_fields(&v, &[]), v);
        assert_eq!(
            select_fields(&v, &["name".into(), "missing".into()]),
            json!({"name": "n"})
        );
    }
}
