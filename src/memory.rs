//! Giving the system back the memory a burst of connections left in the allocator.
//!
//! glibc returns freed memory to the system only from the top of a heap (past
//! `trim_threshold`); what a thousand connections freed in small pieces below a live
//! allocation stays resident, so one burst of slow downloads set the process's memory for
//! hours (measured: +99 MiB over idle 10 s after 1,000 slow clients left, issue 17).
//! `malloc_trim(0)` walks every arena and hands back each whole free page. It locks an arena
//! while it walks it, so it runs only when a burst has ended ([`BurstWatch`]: the count of
//! open, or of busy, connections halved from a high of at least 64; another walk needs the
//! count to climb back and halve again), never on a timer under load, and on the blocking pool.
//! No minimum gap between walks: one of 2 s let a burst of 10,000 connections that parked
//! together keep its buffers for seconds (121 MiB 2 s after, against 61 MiB without the gap).
//!
//! Invariant: this module is the crate's only `unsafe` code: one call that takes no pointer.

use std::time::Duration;

/// How often the watcher looks at the number of open and busy connections (two atomic loads):
/// a burst's memory goes back within about this long of its end. At 2 s, 10,000 connections
/// that went idle together could still hold their buffers 2 s after the last request.
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(500);
/// A burst smaller than this many connections leaves too little behind to be worth a walk.
const BURST_MIN: usize = 64;

/// Decides when a burst of connections has ended: the count fell to half of (or below) the
/// highest it reached since the last trim, and that high was at least [`BURST_MIN`].
#[derive(Debug, Default)]
pub(crate) struct BurstWatch {
    high: usize,
}

impl BurstWatch {
    /// The connections open now; true when the memory of a burst that just ended should be
    /// given back (the high mark then starts over from `open`).
    pub(crate) fn ended(&mut self, open: usize) -> bool {
        self.high = self.high.max(open);
        if self.high >= BURST_MIN && open <= self.high / 2 {
            self.high = open;
            return true;
        }
        false
    }
}

/// Ask the allocator to return the free pages of every arena to the system. Returns whether
/// it gave anything back. A no-op (false) off glibc, whose allocators return memory
/// themselves or have no such call.
pub(crate) fn give_back() -> bool {
    trim()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and reads no memory of ours; glibc takes each
    // arena's lock while it walks it, so it is safe beside any other allocation.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_ends_when_the_count_halves() {
        let mut w = BurstWatch::default();
        assert!(!w.ended(10));
        assert!(!w.ended(1000));
        assert!(!w.ended(501), "still more than half of the high");
        assert!(w.ended(500));
        // The high starts over from 500: the next trim needs the count to halve again.
        assert!(!w.ended(300));
        assert!(w.ended(250));
    }

    #[test]
    fn small_bursts_are_not_worth_a_walk() {
        let mut w = BurstWatch::default();
        assert!(!w.ended(63));
        assert!(!w.ended(0));
        assert!(!w.ended(64));
        assert!(w.ended(0));
        assert!(!w.ended(0), "nothing new since the last trim");
    }
}
