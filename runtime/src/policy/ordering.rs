//! Per-key ordering: events with the same partition key are handled one at
//! a time, in the order they arrived; different keys run in parallel.
//!
//! The first event of an idle key is handled at once by the task that
//! received it, which becomes the key's *worker*; later events of that key
//! wait in the key's queue until the worker gets to them. A failing event is
//! retried in place by its worker (not NAKed back to JetStream, which would
//! let its successors overtake it), so order holds during retries too.
//! Waiting messages are still JetStream's: they stay unacked, their ack
//! timers are kept running with progress acks, and a crash redelivers them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use cloudevents::Event;

/// The key events are ordered by: the CloudEvents `partitionkey` extension
/// (the Partitioning extension), else the NATS subject the event came on.
pub fn partition_key(event: &Event, nats_subject: &str) -> String {
    match event.extension("partitionkey") {
        Some(key) => key.to_string(),
        None => nats_subject.to_string(),
    }
}

/// Events waiting behind the one being handled, per key.
pub struct KeyedQueue<T> {
    keys: Mutex<HashMap<String, VecDeque<T>>>,
}

impl<T> Default for KeyedQueue<T> {
    fn default() -> Self {
        KeyedQueue {
            keys: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> KeyedQueue<T> {
    /// Admits an event. Returns it back if its key was idle: the caller is
    /// now the key's worker and must call [`KeyedQueue::next`] when done.
    /// Otherwise the event waits in the key's queue.
    pub fn admit(&self, key: &str, item: T) -> Option<T> {
        let mut keys = self.keys.lock().expect("never poisoned");
        match keys.get_mut(key) {
            Some(waiting) => {
                waiting.push_back(item);
                None
            }
            None => {
                keys.insert(key.to_string(), VecDeque::new());
                Some(item)
            }
        }
    }

    /// The worker of `key` finished its event: the key's next event, or
    /// `None` once the key is idle (and no longer tracked).
    pub fn next(&self, key: &str) -> Option<T> {
        let mut keys = self.keys.lock().expect("never poisoned");
        let waiting = keys.get_mut(key)?;
        let next = waiting.pop_front();
        if next.is_none() {
            keys.remove(key);
        }
        next
    }

    /// Runs `f` on every waiting event (not on the ones being handled).
    pub fn for_each_waiting(&self, mut f: impl FnMut(&T)) {
        let keys = self.keys.lock().expect("never poisoned");
        keys.values().flatten().for_each(&mut f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_partitionkey_extension_else_the_subject() {
        use cloudevents::{EventBuilder, EventBuilderV10};
        let event = |key: Option<&str>| {
            let builder = EventBuilderV10::new().id("1").source("/s").ty("t");
            match key {
                Some(key) => builder.extension("partitionkey", key),
                None => builder,
            }
            .build()
            .unwrap()
        };
        assert_eq!(partition_key(&event(Some("o-1")), "orders.created"), "o-1");
        assert_eq!(
            partition_key(&event(None), "orders.created"),
            "orders.created"
        );
    }

    #[test]
    fn one_worker_per_key_in_arrival_order() {
        let q = KeyedQueue::default();
        assert_eq!(q.admit("a", 1), Some(1));
        assert_eq!(q.admit("b", 10), Some(10));
        assert_eq!(q.admit("a", 2), None);
        assert_eq!(q.admit("a", 3), None);
        let mut waiting = vec![];
        q.for_each_waiting(|i| waiting.push(*i));
        assert_eq!(waiting, [2, 3]);
        assert_eq!(q.next("a"), Some(2));
        assert_eq!(q.next("b"), None);
        assert_eq!(q.next("a"), Some(3));
        assert_eq!(q.next("a"), None);
        // Idle again: the next event starts a new worker.
        assert_eq!(q.admit("a", 4), Some(4));
    }
}
