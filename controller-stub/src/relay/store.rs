//! What the relay endpoint and the VNF configuration API share through the database: instance
//! keys, desired configurations with their delivery status, and relay hosts with their guests.
//!
//! The status of a configuration is a small state machine, [`Delivery::after`], kept free of
//! I/O so that its rules are tested on their own: a set makes the newest version `pending`; a
//! push over a live session makes it `delivered`; the agent's Ack (or the applied list of its
//! ConfigRequest) makes it `applied` or `failed`. Reports about older versions only move
//! `applied_version` up, and reports about a version that is not the stored one (same number,
//! other config id: a database that was reset) change nothing.

use base64::Engine;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::api::timestamp;
use crate::db::{flag, get_flag, Db};

/// Where a configuration is on its way to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Stored; no live session has been sent this version yet.
    Pending,
    /// Sent over a live session; the agent's answer has not arrived.
    Delivered,
    /// The agent applied this version.
    Applied,
    /// The agent refused this version (`message` says why).
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Applied => "applied",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Status, sqlx::Error> {
        Ok(match s {
            "pending" => Status::Pending,
            "delivered" => Status::Delivered,
            "applied" => Status::Applied,
            "failed" => Status::Failed,
            other => {
                return Err(sqlx::Error::Decode(
                    format!("unknown configuration status {other:?}").into(),
                ))
            }
        })
    }
}

/// The delivery state of one (instance, service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The desired version.
    pub version: i64,
    /// The config id of the desired version.
    pub config_id: String,
    pub status: Status,
    /// The highest version the agent said it applied.
    pub applied_version: Option<i64>,
    /// The agent's reason when it refused the desired version.
    pub message: Option<String>,
}

/// What the endpoint learned about one (instance, service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// `version` was pushed over a live session.
    Delivered { version: i64 },
    /// The agent applied `version` (an Ack, or listed in a ConfigRequest).
    Applied { version: i64, config_id: String },
    /// The agent refused `version`.
    Rejected {
        version: i64,
        config_id: String,
        reason: String,
    },
}

impl Delivery {
    /// The state after `report`, or `None` if the report changes nothing.
    pub fn after(&self, report: &Report) -> Option<Delivery> {
        let current = |v: i64, id: &str| v == self.version && id == self.config_id;
        let mut next = self.clone();
        match report {
            Report::Delivered { version } if *version == self.version => {
                next.status = Status::Delivered;
                next.message = None;
            }
            Report::Delivered { .. } => return None,
            Report::Applied { version, config_id } => {
                if *version > self.applied_version.unwrap_or(0) && *version <= self.version {
                    next.applied_version = Some(*version);
                }
                if current(*version, config_id) {
                    next.status = Status::Applied;
                    next.message = None;
                } else if *version >= self.version {
                    // The agent holds a version this database never issued under that id: it
                    // was reset or restored. The next push tells the agent what is desired.
                    return None;
                }
            }
            Report::Rejected {
                version,
                config_id,
                reason,
            } if current(*version, config_id) => {
                next.status = Status::Failed;
                next.message = Some(reason.clone());
            }
            Report::Rejected { .. } => return None,
        }
        (next != *self).then_some(next)
    }
}

/// How a payload is stored and what bytes the agent gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Compact JSON text; the agent gets these bytes.
    Json(String),
    /// Base64 (standard alphabet, padded) of the bytes the agent gets.
    Base64(String),
}

impl Payload {
    fn kind(&self) -> &'static str {
        match self {
            Payload::Json(_) => "json",
            Payload::Base64(_) => "base64",
        }
    }

    fn text(&self) -> &str {
        match self {
            Payload::Json(s) | Payload::Base64(s) => s,
        }
    }

    fn from_columns(kind: &str, text: String) -> Result<Payload, sqlx::Error> {
        match kind {
            "json" => Ok(Payload::Json(text)),
            "base64" => Ok(Payload::Base64(text)),
            other => Err(sqlx::Error::Decode(
                format!("unknown payload kind {other:?}").into(),
            )),
        }
    }

    /// The bytes a ConfigPush carries.
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match self {
            Payload::Json(s) => Ok(s.as_bytes().to_vec()),
            Payload::Base64(s) => base64::engine::general_purpose::STANDARD.decode(s),
        }
    }
}

/// One stored configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRow {
    pub instance_id: String,
    pub service: String,
    pub project_id: String,
    pub payload: Payload,
    pub delivery: Delivery,
    /// Deleted through the API; kept so that versions keep increasing.
    pub deleted: bool,
    pub created_at: String,
    pub updated_at: String,
}

const CONFIG_COLUMNS: &str = "instance_id, service, project_id, version, config_id, payload_kind, \
    payload, status, applied_version, message, deleted, created_at, updated_at";

impl ConfigRow {
    fn from_row(row: &AnyRow) -> Result<ConfigRow, sqlx::Error> {
        let kind: String = row.try_get("payload_kind")?;
        Ok(ConfigRow {
            instance_id: row.try_get("instance_id")?,
            service: row.try_get("service")?,
            project_id: row.try_get("project_id")?,
            payload: Payload::from_columns(&kind, row.try_get("payload")?)?,
            delivery: Delivery {
                version: row.try_get("version")?,
                config_id: row.try_get("config_id")?,
                status: Status::parse(&row.try_get::<String, _>("status")?)?,
                applied_version: row.try_get("applied_version")?,
                message: row.try_get("message")?,
            },
            deleted: get_flag(row, "deleted")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// One configuration, deleted or not.
pub async fn get_config(
    conn: &mut AnyConnection,
    instance: &str,
    service: &str,
) -> Result<Option<ConfigRow>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {CONFIG_COLUMNS} FROM vnf_configs WHERE instance_id = $1 AND service = $2"
    ))
    .bind(instance)
    .bind(service)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(ConfigRow::from_row).transpose()
}

/// The configurations of an instance that are not deleted, by service.
pub async fn list_configs(
    conn: &mut AnyConnection,
    instance: &str,
) -> Result<Vec<ConfigRow>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {CONFIG_COLUMNS} FROM vnf_configs WHERE instance_id = $1 AND deleted = 0 \
         ORDER BY service"
    ))
    .bind(instance)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(ConfigRow::from_row)
    .collect()
}

/// What the outcome of [`set_config`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// A new version was stored.
    NewVersion,
    /// The payload is the current one; nothing changed.
    Unchanged,
}

/// Stores `payload` as the desired configuration: version + 1 (from 1) unless it is the
/// current payload already. Runs inside the caller's write transaction.
pub async fn set_config(
    conn: &mut AnyConnection,
    instance: &str,
    service: &str,
    project_id: &str,
    payload: &Payload,
) -> Result<SetOutcome, sqlx::Error> {
    let now = timestamp();
    let config_id = uuid::Uuid::new_v4().to_string();
    match get_config(conn, instance, service).await? {
        Some(row) if !row.deleted && row.payload == *payload => Ok(SetOutcome::Unchanged),
        Some(row) => {
            // A deleted row comes back with the next version and its old project.
            sqlx::query(
                "UPDATE vnf_configs SET version = $1, config_id = $2, payload_kind = $3, \
                 payload = $4, status = $5, message = NULL, deleted = 0, updated_at = $6 \
                 WHERE instance_id = $7 AND service = $8",
            )
            .bind(row.delivery.version + 1)
            .bind(&config_id)
            .bind(payload.kind())
            .bind(payload.text())
            .bind(Status::Pending.as_str())
            .bind(&now)
            .bind(instance)
            .bind(service)
            .execute(&mut *conn)
            .await?;
            Ok(SetOutcome::NewVersion)
        }
        None => {
            sqlx::query(&format!(
                "INSERT INTO vnf_configs ({CONFIG_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL, $9, $10, $11)"
            ))
            .bind(instance)
            .bind(service)
            .bind(project_id)
            .bind(1_i64)
            .bind(&config_id)
            .bind(payload.kind())
            .bind(payload.text())
            .bind(Status::Pending.as_str())
            .bind(flag(false))
            .bind(&now)
            .bind(&now)
            .execute(&mut *conn)
            .await?;
            Ok(SetOutcome::NewVersion)
        }
    }
}

/// Marks a configuration deleted (its payload is dropped; its version is kept). Returns
/// whether there was one to delete.
pub async fn delete_config(
    conn: &mut AnyConnection,
    instance: &str,
    service: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE vnf_configs SET deleted = 1, payload_kind = 'json', payload = 'null', \
         updated_at = $1 WHERE instance_id = $2 AND service = $3 AND deleted = 0",
    )
    .bind(timestamp())
    .bind(instance)
    .bind(service)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The desired (not deleted) versions of an instance's services, without payloads.
pub async fn desired_versions(
    conn: &mut AnyConnection,
    instance: &str,
) -> Result<Vec<(String, i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT service, version, config_id FROM vnf_configs \
         WHERE instance_id = $1 AND deleted = 0 ORDER BY service",
    )
    .bind(instance)
    .fetch_all(&mut *conn)
    .await
}

/// Applies `report` to the stored status of (instance, service); returns whether it changed.
pub async fn report(
    db: &Db,
    instance: &str,
    service: &str,
    report: &Report,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    let Some(row) = get_config(tx.conn(), instance, service).await? else {
        return Ok(false);
    };
    let Some(next) = row.delivery.after(report) else {
        return Ok(false);
    };
    sqlx::query(
        "UPDATE vnf_configs SET status = $1, applied_version = $2, message = $3, updated_at = $4 \
         WHERE instance_id = $5 AND service = $6 AND version = $7",
    )
    .bind(next.status.as_str())
    .bind(next.applied_version)
    .bind(next.message.as_deref())
    .bind(timestamp())
    .bind(instance)
    .bind(service)
    .bind(row.delivery.version)
    .execute(tx.conn())
    .await?;
    tx.commit().await?;
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// Instance keys

/// An instance's key (64 hex digits), if it has one.
pub async fn instance_key(
    conn: &mut AnyConnection,
    instance: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT key_hex, created_at FROM vnf_instance_keys WHERE instance_id = $1")
        .bind(instance)
        .fetch_optional(&mut *conn)
        .await
}

/// Stores a key; the caller checked that the instance has none.
pub async fn insert_instance_key(
    conn: &mut AnyConnection,
    instance: &str,
    key_hex: &str,
    created_at: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO vnf_instance_keys (instance_id, key_hex, created_at) VALUES ($1, $2, $3)",
    )
    .bind(instance)
    .bind(key_hex)
    .bind(created_at)
    .execute(&mut *conn)
    .await
    .map(drop)
}

// ---------------------------------------------------------------------------------------------
// Relay hosts

/// A guest as a relay reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRow {
    pub instance_id: String,
    pub name: String,
    pub since: String,
}

/// A relay host and its guests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    pub host: String,
    pub connected: bool,
    pub relay_version: String,
    pub peer_address: String,
    pub connected_at: String,
    pub last_seen: String,
    pub guests: Vec<GuestRow>,
}

/// A relay registered: the host is connected and serves exactly `guests` (instance, name).
pub async fn register_host(
    conn: &mut AnyConnection,
    host: &str,
    relay_version: &str,
    peer_address: &str,
    guests: &[(String, String)],
) -> Result<(), sqlx::Error> {
    let now = timestamp();
    sqlx::query(
        "INSERT INTO relay_hosts (host, connected, relay_version, peer_address, connected_at, \
         last_seen) VALUES ($1, 1, $2, $3, $4, $4) ON CONFLICT (host) DO UPDATE SET \
         connected = 1, relay_version = $2, peer_address = $3, connected_at = $4, last_seen = $4",
    )
    .bind(host)
    .bind(relay_version)
    .bind(peer_address)
    .bind(&now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM relay_guests WHERE host = $1")
        .bind(host)
        .execute(&mut *conn)
        .await?;
    for (instance, name) in guests {
        guest_up(conn, host, instance, name, &now).await?;
    }
    Ok(())
}

/// Adds a guest to a host's set (or renames it).
pub async fn guest_up(
    conn: &mut AnyConnection,
    host: &str,
    instance: &str,
    name: &str,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO relay_guests (host, instance_id, name, since) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (host, instance_id) DO UPDATE SET name = $3",
    )
    .bind(host)
    .bind(instance)
    .bind(name)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// Removes a guest from a host's set.
pub async fn guest_down(
    conn: &mut AnyConnection,
    host: &str,
    instance: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM relay_guests WHERE host = $1 AND instance_id = $2")
        .bind(host)
        .bind(instance)
        .execute(&mut *conn)
        .await
        .map(drop)
}

/// The host's relay is alive (a heartbeat); also repairs `connected` after another replica
/// marked every host disconnected at its start.
pub async fn host_seen(conn: &mut AnyConnection, host: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE relay_hosts SET connected = 1, last_seen = $1 WHERE host = $2")
        .bind(timestamp())
        .bind(host)
        .execute(&mut *conn)
        .await
        .map(drop)
}

/// The host's relay connection ended.
pub async fn host_disconnected(conn: &mut AnyConnection, host: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE relay_hosts SET connected = 0, last_seen = $1 WHERE host = $2")
        .bind(timestamp())
        .bind(host)
        .execute(&mut *conn)
        .await
        .map(drop)
}

/// At the endpoint's start no relay is connected to it.
pub async fn all_hosts_disconnected(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE relay_hosts SET connected = 0 WHERE connected <> 0")
        .execute(&mut *conn)
        .await
        .map(drop)
}

/// Every host with its guests, by name.
pub async fn list_hosts(conn: &mut AnyConnection) -> Result<Vec<HostRow>, sqlx::Error> {
    let hosts = sqlx::query(
        "SELECT host, connected, relay_version, peer_address, connected_at, last_seen \
         FROM relay_hosts ORDER BY host",
    )
    .fetch_all(&mut *conn)
    .await?;
    let guests: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT host, instance_id, name, since FROM relay_guests ORDER BY host, instance_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    hosts
        .iter()
        .map(|row| {
            let host: String = row.try_get("host")?;
            Ok(HostRow {
                guests: guests
                    .iter()
                    .filter(|(h, ..)| *h == host)
                    .map(|(_, instance_id, name, since)| GuestRow {
                        instance_id: instance_id.clone(),
                        name: name.clone(),
                        since: since.clone(),
                    })
                    .collect(),
                connected: get_flag(row, "connected")?,
                relay_version: row.try_get("relay_version")?,
                peer_address: row.try_get("peer_address")?,
                connected_at: row.try_get("connected_at")?,
                last_seen: row.try_get("last_seen")?,
                host,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(version: i64, status: Status, applied: Option<i64>) -> Delivery {
        Delivery {
            version,
            config_id: format!("id-{version}"),
            status,
            applied_version: applied,
            message: None,
        }
    }

    fn applied(version: i64) -> Report {
        Report::Applied {
            version,
            config_id: format!("id-{version}"),
        }
    }

    #[test]
    fn a_push_of_the_desired_version_makes_it_delivered() {
        let s = state(2, Status::Pending, Some(1));
        let next = s.after(&Report::Delivered { version: 2 });
        assert_eq!(next, Some(state(2, Status::Delivered, Some(1))));
        // A push of another version (the desired one moved on meanwhile) changes nothing.
        assert_eq!(s.after(&Report::Delivered { version: 1 }), None);
    }

    #[test]
    fn an_ack_of_the_desired_version_makes_it_applied() {
        let mut s = state(3, Status::Failed, Some(2));
        s.message = Some("bad rule".into());
        let next = s.after(&applied(3));
        assert_eq!(next, Some(state(3, Status::Applied, Some(3))));
        // Reported again (a ConfigRequest after a guest reboot): nothing changes.
        assert_eq!(next.unwrap().after(&applied(3)), None);
    }

    #[test]
    fn a_rejection_fails_the_desired_version_with_the_reason() {
        let s = state(2, Status::Delivered, Some(1));
        let next = s
            .after(&Report::Rejected {
                version: 2,
                config_id: "id-2".into(),
                reason: "port 70000 out of range".into(),
            })
            .unwrap();
        assert_eq!(next.status, Status::Failed);
        assert_eq!(next.message.as_deref(), Some("port 70000 out of range"));
        assert_eq!(next.applied_version, Some(1));
    }

    #[test]
    fn reports_about_older_versions_only_raise_applied_version() {
        let s = state(5, Status::Delivered, Some(2));
        assert_eq!(
            s.after(&applied(4)),
            Some(state(5, Status::Delivered, Some(4)))
        );
        // Lower than what is known: nothing.
        assert_eq!(s.after(&applied(1)), None);
        // A rejection of an old version says nothing about the desired one.
        let old_reject = Report::Rejected {
            version: 4,
            config_id: "id-4".into(),
            reason: "x".into(),
        };
        assert_eq!(s.after(&old_reject), None);
    }

    #[test]
    fn reports_about_versions_this_database_did_not_issue_change_nothing() {
        let s = state(2, Status::Delivered, Some(1));
        // Same number, other config id: the agent's state predates a database reset.
        let other = Report::Applied {
            version: 2,
            config_id: "elsewhere".into(),
        };
        assert_eq!(s.after(&other), None);
        assert_eq!(s.after(&applied(7)), None);
        let reject = Report::Rejected {
            version: 2,
            config_id: "elsewhere".into(),
            reason: "x".into(),
        };
        assert_eq!(s.after(&reject), None);
    }

    #[test]
    fn payload_bytes_are_the_json_text_or_the_decoded_base64() {
        assert_eq!(
            Payload::Json(r#"{"a":1}"#.into()).bytes().unwrap(),
            br#"{"a":1}"#
        );
        assert_eq!(
            Payload::Base64("AAEC/w==".into()).bytes().unwrap(),
            [0, 1, 2, 255]
        );
    }
}
