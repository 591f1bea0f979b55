//! The set of guests this relay serves, shared by the router (which changes it) and the uplink
//! (which announces it).
//!
//! Announcements are state, not events: the router records "guest X is now up/down" here and
//! the uplink sends whatever changed since it last looked, coalesced per guest. The pending
//! set is therefore bounded by the number of guests, the router never waits for the uplink, and
//! a `Register` (sent on every uplink connect with the full set) supersedes everything pending.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use relay_protocol::uplink::{GuestInfo, RelayMsg};
use relay_protocol::Uuid;
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Inner {
    guests: BTreeMap<Uuid, String>,
    /// Per guest, the state not yet announced: `Some(name)` up, `None` down.
    pending: BTreeMap<Uuid, Option<String>>,
}

#[derive(Debug, Default)]
pub(crate) struct GuestSet {
    inner: Mutex<Inner>,
    changed: Notify,
}

impl GuestSet {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves two maps in a consistent state (every
        // operation is a single insert or remove per map), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn up(&self, instance: Uuid, name: &str) {
        let mut inner = self.lock();
        inner.guests.insert(instance, name.to_owned());
        inner.pending.insert(instance, Some(name.to_owned()));
        drop(inner);
        self.changed.notify_one();
    }

    pub(crate) fn down(&self, instance: Uuid) {
        let mut inner = self.lock();
        inner.guests.remove(&instance);
        inner.pending.insert(instance, None);
        drop(inner);
        self.changed.notify_one();
    }

    /// The full set for a `Register`; clears what was pending, which it supersedes.
    pub(crate) fn register_snapshot(&self) -> Vec<GuestInfo> {
        let mut inner = self.lock();
        inner.pending.clear();
        inner
            .guests
            .iter()
            .map(|(instance, name)| GuestInfo {
                instance: *instance,
                name: name.clone(),
            })
            .collect()
    }

    /// The announcements due since the last call.
    pub(crate) fn take_pending(&self) -> Vec<RelayMsg> {
        let pending = std::mem::take(&mut self.lock().pending);
        pending
            .into_iter()
            .map(|(instance, state)| match state {
                Some(name) => RelayMsg::GuestUp(GuestInfo { instance, name }),
                None => RelayMsg::GuestDown { instance },
            })
            .collect()
    }

    /// Resolves when something may be pending (a permit is kept if nobody was waiting).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_changes_coalesce_and_register_supersedes_them() {
        let set = GuestSet::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        set.up(a, "a");
        set.up(b, "b");
        set.down(b);
        assert_eq!(
            set.take_pending(),
            vec![
                RelayMsg::GuestUp(GuestInfo {
                    instance: a,
                    name: "a".into()
                }),
                RelayMsg::GuestDown { instance: b },
            ]
        );
        assert!(set.take_pending().is_empty());
        set.up(b, "b");
        let all = set.register_snapshot();
        assert_eq!(all.len(), 2);
        assert!(set.take_pending().is_empty());
    }
}
