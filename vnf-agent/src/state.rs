//! What the agent has applied, kept across restarts and reboots.
//!
//! After every handshake the agent tells the controller what it has applied, and it never
//! applies a version older than (or equal to) one it applied before. Both only hold across a
//! restart if the record survives it, so it is a small JSON file in the state directory,
//! replaced atomically after every successful apply: written to a temporary file, synced,
//! renamed over the old one, and the directory synced, so a crash leaves either the old or the
//! new record, never a torn one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use relay_protocol::{AppliedConfig, ServiceName, Uuid};
use serde::{Deserialize, Serialize};

/// Name of the record in the state directory.
pub const STATE_FILE: &str = "applied.json";
const FORMAT: u32 = 1;

/// The configuration applied for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedEntry {
    pub config_id: Uuid,
    pub version: u64,
}

/// Applied configuration per service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub services: BTreeMap<ServiceName, AppliedEntry>,
}

impl AppliedState {
    pub fn get(&self, service: &ServiceName) -> Option<AppliedEntry> {
        self.services.get(service).copied()
    }

    /// The entries of `services`, as a ConfigRequest lists them.
    pub fn report<'a>(
        &self,
        services: impl IntoIterator<Item = &'a ServiceName>,
    ) -> Vec<AppliedConfig> {
        services
            .into_iter()
            .filter_map(|s| {
                self.get(s).map(|e| AppliedConfig {
                    service: s.clone(),
                    config_id: e.config_id,
                    version: e.version,
                })
            })
            .collect()
    }
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    services: BTreeMap<ServiceName, AppliedEntry>,
}

/// Errors loading or creating the record.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot use state directory {}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is corrupt; move it away to start without a record of applied configs (the controller then re-sends its latest versions)", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} has format {found}, this agent reads format {FORMAT}", path.display())]
    Format { path: PathBuf, found: u32 },
}

/// Where the record lives; `None` keeps it in memory only (tests, firmware without storage).
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: Option<PathBuf>,
}

impl StateStore {
    pub fn in_memory() -> StateStore {
        StateStore { dir: None }
    }

    /// Opens (creating it if needed) the state directory and loads the record.
    pub fn open(dir: &Path) -> Result<(StateStore, AppliedState), StateError> {
        let dir_err = |source| StateError::Dir {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(dir_err)?;
        let path = dir.join(STATE_FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => {
                let disk: OnDisk =
                    serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                if disk.format != FORMAT {
                    return Err(StateError::Format {
                        path,
                        found: disk.format,
                    });
                }
                AppliedState {
                    services: disk.services,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => AppliedState::default(),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        Ok((
            StateStore {
                dir: Some(dir.to_owned()),
            },
            state,
        ))
    }

    /// Replaces the record atomically (see the module documentation).
    pub fn save(&self, state: &AppliedState) -> io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let disk = OnDisk {
            format: FORMAT,
            services: state.services.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&disk).map_err(io::Error::other)?;
        let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dir.join(STATE_FILE))?;
        File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(s: &str) -> ServiceName {
        ServiceName::new(s).unwrap()
    }

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state");
        let (store, state) = StateStore::open(&sub).unwrap();
        assert_eq!(state, AppliedState::default());
        let mut state = AppliedState::default();
        state.services.insert(
            svc("firewall"),
            AppliedEntry {
                config_id: Uuid::from_u128(7),
                version: 3,
            },
        );
        store.save(&state).unwrap();
        let (_, loaded) = StateStore::open(&sub).unwrap();
        assert_eq!(loaded, state);
        let names: Vec<_> = fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [STATE_FILE], "no temporary file is left behind");
        let text = fs::read_to_string(sub.join(STATE_FILE)).unwrap();
        assert!(
            text.contains("\"firewall\"") && text.contains("\"version\": 3"),
            "{text}"
        );
    }

    #[test]
    fn corrupt_or_foreign_records_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(STATE_FILE),
            b"{\"format\": 1, \"services\": {",
        )
        .unwrap();
        let err = StateStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(STATE_FILE));
        fs::write(
            dir.path().join(STATE_FILE),
            b"{\"format\": 9, \"services\": {}}",
        )
        .unwrap();
        assert!(matches!(
            StateStore::open(dir.path()).unwrap_err(),
            StateError::Format { found: 9, .. }
        ));
    }

    #[test]
    fn report_lists_only_the_given_services() {
        let mut state = AppliedState::default();
        for (s, v) in [("firewall", 2), ("vpn", 5)] {
            state.services.insert(
                svc(s),
                AppliedEntry {
                    config_id: Uuid::from_u128(1),
                    version: v,
                },
            );
        }
        let report = state.report([&svc("vpn"), &svc("files")]);
        assert_eq!(report.len(), 1);
        assert_eq!((report[0].service.as_str(), report[0].version), ("vpn", 5));
    }
}
