//! Fuzzes the whole receive path: arbitrary bytes, fed in arbitrary read sizes, through the
//! frame decoder and into guest and controller sessions, both fresh and established, so frames
//! reach the MAC check, replay checks, reassembly and body decoding. Inputs that start with a
//! valid handshake get past the MAC; the seed corpus holds such inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_protocol::{Limits, Role, Session};
use relay_protocol_fuzz::{established, feed, key, MAX_MESSAGE};

fuzz_target!(|data: &[u8]| {
    let Some((&read, bytes)) = data.split_first() else {
        return;
    };
    let read = usize::from(read) * 7 + 1;
    let key = key();
    for role in [Role::Guest, Role::Controller] {
        let mut fresh = Session::new(
            role,
            &key,
            Limits {
                max_message_len: MAX_MESSAGE,
            },
        );
        feed(&mut fresh, bytes, read);
    }
    let mut session = established();
    feed(&mut session.guest, bytes, read);
    feed(&mut session.controller, bytes, read);
});
