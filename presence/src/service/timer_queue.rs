//! A queue of deadlines, at most one per key: the next one a person's
//! timers come due, ordered by time.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use time::OffsetDateTime;

pub(super) struct TimerQueue<K> {
    by_time: BTreeSet<(OffsetDateTime, K)>,
    by_key: HashMap<K, OffsetDateTime>,
}

impl<K: Ord + Hash + Clone> TimerQueue<K> {
    pub(super) fn new() -> Self {
        TimerQueue {
            by_time: BTreeSet::new(),
            by_key: HashMap::new(),
        }
    }

    /// Sets `key`'s deadline, replacing the one it had.
    pub(super) fn schedule(&mut self, key: K, at: OffsetDateTime) {
        self.cancel(&key);
        self.by_time.insert((at, key.clone()));
        self.by_key.insert(key, at);
    }

    pub(super) fn cancel(&mut self, key: &K) {
        if let Some(at) = self.by_key.remove(key) {
            self.by_time.remove(&(at, key.clone()));
        }
    }

    /// The earliest deadline.
    pub(super) fn next_due(&self) -> Option<OffsetDateTime> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Removes and returns a key whose deadline is at or before `now`, the
    /// earliest first.
    pub(super) fn pop_due(&mut self, now: OffsetDateTime) -> Option<K> {
        if self.next_due()? > now {
            return None;
        }
        let (_, key) = self.by_time.pop_first()?;
        self.by_key.remove(&key);
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const T0: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);

    fn t(secs: i64) -> OffsetDateTime {
        T0 + time::Duration::seconds(secs)
    }

    #[test]
    fn pops_what_is_due_earliest_first() {
        let mut q = TimerQueue::new();
        q.schedule("ron", t(20));
        q.schedule("harry", t(10));
        q.schedule("ginny", t(30));
        assert_eq!(q.next_due(), Some(t(10)));
        assert_eq!(q.pop_due(t(5)), None);
        assert_eq!(q.pop_due(t(25)), Some("harry"));
        assert_eq!(q.pop_due(t(25)), Some("ron"));
        assert_eq!(q.pop_due(t(25)), None);
        assert_eq!(q.next_due(), Some(t(30)));
        assert_eq!(q.pop_due(t(30)), Some("ginny"));
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn a_key_has_one_deadline_the_last_scheduled() {
        let mut q = TimerQueue::new();
        q.schedule("harry", t(10));
        q.schedule("harry", t(40));
        assert_eq!(q.next_due(), Some(t(40)));
        assert_eq!(q.pop_due(t(39)), None);
        assert_eq!(q.pop_due(t(40)), Some("harry"));
        assert_eq!(q.pop_due(t(40)), None);
    }

    #[test]
    fn a_cancelled_key_never_comes_due() {
        let mut q = TimerQueue::new();
        q.schedule("harry", t(10));
        q.schedule("ron", t(10));
        q.cancel(&"harry");
        q.cancel(&"hermione");
        assert_eq!(q.pop_due(t(60)), Some("ron"));
        assert_eq!(q.pop_due(t(60)), None);
    }
}
