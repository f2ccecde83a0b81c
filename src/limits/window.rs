//! An exact sliding window of one-second buckets: how many requests or tokens a scope used
//! in the last `window` seconds.
//!
//! Counts the current second plus the `window` seconds before it, so it never admits more
//! than the limit over any `window`-long span and is under by at most one bucket
//! (architecture.md: exact windows, not pingora-limits' count-min estimate).

/// One scope's counts for the last `len - 1` seconds and the current one.
#[derive(Debug, Clone)]
pub struct Window {
    /// `(second, count)` by `second % len`; a slot whose second is too old counts 0.
    slots: Vec<(u64, u64)>,
}

impl Window {
    /// A window over `seconds` (≥ 1) plus the current second.
    pub fn new(seconds: u64) -> Window {
        Window {
            slots: vec![(0, 0); seconds as usize + 1],
        }
    }

    fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    /// The window's length in seconds, not counting the current one.
    pub fn seconds(&self) -> u64 {
        self.len() - 1
    }

    fn live(&self, slot: (u64, u64), now: u64) -> bool {
        slot.0 + self.len() > now && slot.0 <= now
    }

    /// The total within the window at second `now`.
    pub fn sum(&self, now: u64) -> u64 {
        self.slots
            .iter()
            .filter(|&&s| self.live(s, now))
            .map(|s| s.1)
            .sum()
    }

    /// Adds `n` to second `now`'s bucket.
    pub fn add(&mut self, now: u64, n: u64) {
        let i = (now % self.len()) as usize;
        let slot = &mut self.slots[i];
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 = slot.1.saturating_add(n);
    }

    /// Corrects second `at`'s bucket by `delta` (a reservation settled to actual use), if
    /// that bucket is still in the window; a bucket already gone needs no correction.
    pub fn adjust(&mut self, at: u64, delta: i64) {
        let i = (at % self.len()) as usize;
        let slot = &mut self.slots[i];
        if slot.0 == at {
            slot.1 = slot.1.saturating_add_signed(delta);
        }
    }

    /// Seconds until `need` more fit under `limit`: the oldest buckets expire first. At
    /// least 1; the whole window when even an empty window would not fit `need`.
    pub fn wait_for(&self, now: u64, need: u64, limit: u64) -> u64 {
        let mut live: Vec<(u64, u64)> = self
            .slots
            .iter()
            .copied()
            .filter(|&s| self.live(s, now))
            .collect();
        live.sort_unstable();
        let mut total: u64 = live.iter().map(|s| s.1).sum();
        for (second, count) in live {
            total -= count;
            if total + need <= limit {
                return (second + self.len()).saturating_sub(now).max(1);
            }
        }
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_current_second_and_the_window_before_it() {
        let mut w = Window::new(60);
        w.add(1000, 5);
        w.add(1030, 2);
        assert_eq!(w.sum(1030), 7);
        assert_eq!(w.sum(1060), 7, "1000 is 60 s back: still in");
        assert_eq!(w.sum(1061), 2, "1000 has left the window");
        assert_eq!(w.sum(1091), 0);
    }

    #[test]
    fn a_reused_slot_starts_from_zero() {
        let mut w = Window::new(2);
        w.add(10, 4);
        w.add(13, 1);
        assert_eq!(w.sum(13), 1);
    }

    #[test]
    fn settling_corrects_the_reserved_bucket_only_while_it_counts() {
        let mut w = Window::new(60);
        w.add(100, 500);
        w.adjust(100, -420);
        assert_eq!(w.sum(100), 80);
        w.adjust(99, 1000);
        assert_eq!(w.sum(100), 80, "no bucket at 99");
    }

    #[test]
    fn wait_is_until_enough_old_buckets_expire() {
        let mut w = Window::new(60);
        w.add(100, 3);
        w.add(110, 3);
        // limit 6, full: one more fits once second 100 expires at 161.
        assert_eq!(w.wait_for(120, 1, 6), 41);
        assert_eq!(w.wait_for(120, 4, 6), 51, "needs both buckets gone");
        assert_eq!(w.wait_for(120, 7, 6), 61, "never fits: a whole window");
    }
}
