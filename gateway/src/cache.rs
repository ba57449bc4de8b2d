//! A bounded map whose entries expire: remembered answers of the API server (token reviews,
//! access reviews) that may be reused for a short while.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

pub struct TtlCache<K, V> {
    entries: HashMap<K, (V, Instant)>,
    ttl: Duration,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self { entries: HashMap::new(), ttl, capacity: capacity.max(1) }
    }

    pub fn get(&mut self, key: &K) -> Option<V> {
        self.get_at(key, Instant::now())
    }

    pub fn put(&mut self, key: K, value: V) {
        self.put_at(key, value, Instant::now())
    }

    fn get_at(&mut self, key: &K, now: Instant) -> Option<V> {
        match self.entries.get(key) {
            Some((value, at)) if now.duration_since(*at) < self.ttl => Some(value.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// When full, expired entries go first, then the oldest.
    fn put_at(&mut self, key: K, value: V, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let ttl = self.ttl;
            self.entries.retain(|_, (_, at)| now.duration_since(*at) < ttl);
            if self.entries.len() >= self.capacity
                && let Some(oldest) = self.entries.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (value, now));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_oldest_makes_room() {
        let t0 = Instant::now();
        let mut cache = TtlCache::new(Duration::from_secs(10), 2);
        cache.put_at("a", 1, t0);
        cache.put_at("b", 2, t0 + Duration::from_secs(1));
        assert_eq!(cache.get_at(&"a", t0 + Duration::from_secs(9)), Some(1));
        assert_eq!(cache.get_at(&"a", t0 + Duration::from_secs(10)), None, "expired");
        cache.put_at("a", 1, t0 + Duration::from_secs(2));
        cache.put_at("c", 3, t0 + Duration::from_secs(3));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get_at(&"b", t0 + Duration::from_secs(3)), None, "the oldest went");
        assert_eq!(cache.get_at(&"c", t0 + Duration::from_secs(3)), Some(3));
    }
}
