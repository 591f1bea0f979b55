//! The set of guests discovery last reported, and the changes that turn it into a new one.
//! Pure bookkeeping, so the rules live in one place and are unit-tested without libvirt.

use std::collections::{BTreeMap, HashMap, HashSet};

use relay_protocol::Uuid;

use crate::discovery::{GuestChange, GuestChannel};

/// What the consumer was last told: every guest reported `Up` and not since `Down`.
#[derive(Debug, Default)]
pub(super) struct KnownGuests {
    // Ordered so a reconcile emits its changes in a deterministic order.
    guests: BTreeMap<Uuid, GuestChannel>,
}

impl KnownGuests {
    pub(super) fn len(&self) -> usize {
        self.guests.len()
    }

    /// A full reconcile: `found` is every running guest with the channel. A guest in
    /// `unreadable` (its XML could not be read this time) keeps its previous state rather than
    /// flapping Down and Up again.
    pub(super) fn reconcile(
        &mut self,
        mut found: HashMap<Uuid, GuestChannel>,
        unreadable: &HashSet<Uuid>,
    ) -> Vec<GuestChange> {
        for uuid in unreadable {
            if let Some(old) = self.guests.get(uuid) {
                found.entry(*uuid).or_insert_with(|| old.clone());
            }
        }
        let mut changes = Vec::new();
        let gone: Vec<Uuid> = self
            .guests
            .keys()
            .filter(|uuid| !found.contains_key(uuid))
            .copied()
            .collect();
        for uuid in gone {
            self.guests.remove(&uuid);
            changes.push(GuestChange::Down(uuid));
        }
        let mut found: Vec<GuestChannel> = found.into_values().collect();
        found.sort_by_key(|g| g.uuid);
        for guest in found {
            changes.extend(self.update(guest.uuid, Some(guest)));
        }
        changes
    }

    /// One guest's current state: `None` when it is not running or has no usable channel.
    pub(super) fn update(&mut self, uuid: Uuid, now: Option<GuestChannel>) -> Option<GuestChange> {
        match now {
            Some(guest) => {
                if self.guests.get(&uuid) == Some(&guest) {
                    return None;
                }
                self.guests.insert(uuid, guest.clone());
                Some(GuestChange::Up(guest))
            }
            None => self.guests.remove(&uuid).map(|_| GuestChange::Down(uuid)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(n: u8, socket: &str) -> GuestChannel {
        GuestChannel {
            uuid: Uuid::from_bytes([n; 16]),
            name: format!("g{n}"),
            socket: socket.into(),
        }
    }

    fn map(guests: &[GuestChannel]) -> HashMap<Uuid, GuestChannel> {
        guests.iter().map(|g| (g.uuid, g.clone())).collect()
    }

    #[test]
    fn reconcile_reports_only_differences() {
        let mut known = KnownGuests::default();
        let (a, b, c) = (guest(1, "/a"), guest(2, "/b"), guest(3, "/c"));
        assert_eq!(
            known.reconcile(map(&[b.clone(), a.clone()]), &HashSet::new()),
            vec![GuestChange::Up(a.clone()), GuestChange::Up(b.clone())]
        );
        assert_eq!(
            known.reconcile(map(&[a.clone(), b.clone()]), &HashSet::new()),
            vec![]
        );
        assert_eq!(
            known.reconcile(map(&[b.clone(), c.clone()]), &HashSet::new()),
            vec![GuestChange::Down(a.uuid), GuestChange::Up(c.clone())]
        );
        assert_eq!(known.len(), 2);
    }

    #[test]
    fn a_moved_socket_is_reported_up_again() {
        let mut known = KnownGuests::default();
        let a = guest(1, "/a");
        known.update(a.uuid, Some(a.clone()));
        let moved = guest(1, "/a2");
        assert_eq!(
            known.reconcile(map(std::slice::from_ref(&moved)), &HashSet::new()),
            vec![GuestChange::Up(moved)]
        );
    }

    #[test]
    fn unreadable_guests_keep_their_state() {
        let mut known = KnownGuests::default();
        let (a, b) = (guest(1, "/a"), guest(2, "/b"));
        known.reconcile(map(&[a.clone(), b.clone()]), &HashSet::new());
        let unreadable = HashSet::from([a.uuid, Uuid::from_bytes([9; 16])]);
        assert_eq!(
            known.reconcile(map(std::slice::from_ref(&b)), &unreadable),
            vec![]
        );
        assert_eq!(
            known.len(),
            2,
            "an unknown unreadable guest is not invented"
        );
        assert_eq!(
            known.reconcile(map(&[b]), &HashSet::new()),
            vec![GuestChange::Down(a.uuid)]
        );
    }

    #[test]
    fn update_is_idempotent() {
        let mut known = KnownGuests::default();
        let a = guest(1, "/a");
        assert_eq!(
            known.update(a.uuid, Some(a.clone())),
            Some(GuestChange::Up(a.clone()))
        );
        assert_eq!(known.update(a.uuid, Some(a.clone())), None);
        assert_eq!(known.update(a.uuid, None), Some(GuestChange::Down(a.uuid)));
        assert_eq!(known.update(a.uuid, None), None);
    }
}
