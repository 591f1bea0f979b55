//! Exponential reconnect backoff with jitter, shared by the guest sessions and the uplink.
//!
//! Each delay doubles up to a ceiling; the delay actually used is drawn from the upper half of
//! the current step ("equal jitter"), so that a thousand guest sessions or a rack of relays
//! that lost their peer at the same instant do not come back in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff {
            min,
            max,
            step: min,
        }
    }

    /// The delay before the next attempt; every call doubles the following one.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        // Without randomness (an exotic failure of the OS generator) fall back to no jitter:
        // correct, only less spread out.
        let frac = getrandom::u32().unwrap_or(u32::MAX);
        half + half.mul_f64(f64::from(frac) / f64::from(u32::MAX))
    }

    /// Starts over from the shortest delay (after a connection that stayed up).
    pub(crate) fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_within_jitter_bounds() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let steps = [100, 200, 400, 800, 1000, 1000];
        for ms in steps {
            let d = b.next_delay();
            let step = Duration::from_millis(ms);
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
