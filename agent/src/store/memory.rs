//! The runs this replica executes, in memory: a bounded map (the oldest finished runs make
//! room) with an index of `Idempotency-Key`s. Without a tenant database it is the only store
//! and nothing survives a restart; with one it is the live view of the local runs.

use super::handle::{RunHandle, new_run_id};
use crate::engine::task::RunRequest;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("the Idempotency-Key was already used for a different request")]
    KeyReused,
    #[error("{0} runs are queued or running; try again later")]
    Full(usize),
}

impl StoreError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::KeyReused => "idempotency_key_reused",
            Self::Full(_) => "too_many_runs",
        }
    }
}

/// What `create` did.
pub enum Created {
    New(Arc<RunHandle>),
    /// The same Idempotency-Key and request were seen before: the earlier run.
    Existing(Arc<RunHandle>),
}

#[derive(Default)]
struct Inner {
    runs: HashMap<String, Arc<RunHandle>>,
    /// Run ids, oldest first.
    order: VecDeque<String>,
    keys: HashMap<String, String>,
}

impl Inner {
    /// Evicts the oldest finished runs until there is room for one more; false when every
    /// run kept is still active.
    fn make_room(&mut self, capacity: usize) -> bool {
        while self.runs.len() >= capacity {
            let Some(pos) = self.order.iter().position(|id| self.runs[id].status().is_finished()) else {
                return false;
            };
            let id = self.order.remove(pos).expect("position is in range");
            if let Some(old) = self.runs.remove(&id)
                && let Some(k) = &old.idempotency_key
            {
                self.keys.remove(k);
            }
        }
        true
    }

    fn insert(&mut self, run: Arc<RunHandle>) {
        if let Some(k) = &run.idempotency_key {
            self.keys.insert(k.clone(), run.id.clone());
        }
        self.order.push_back(run.id.clone());
        self.runs.insert(run.id.clone(), run);
    }
}

/// The runs of this process.
pub struct RunStore {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl RunStore {
    pub fn new(capacity: usize) -> Self {
        Self { inner: Mutex::default(), capacity: capacity.max(1) }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("run store lock")
    }

    /// Creates a run, or returns the run created earlier with the same key and request.
    pub fn create(&self, request: RunRequest, key: Option<String>) -> Result<Created, StoreError> {
        let mut inner = self.inner();
        if let Some(k) = &key
            && let Some(existing) = inner.keys.get(k).and_then(|id| inner.runs.get(id))
        {
            return if existing.request == request {
                Ok(Created::Existing(existing.clone()))
            } else {
                Err(StoreError::KeyReused)
            };
        }
        if !inner.make_room(self.capacity) {
            return Err(StoreError::Full(inner.runs.len()));
        }
        let run = Arc::new(RunHandle::new(new_run_id(), key, request));
        inner.insert(run.clone());
        Ok(Created::New(run))
    }

    /// Fails when every kept run is active (checked before a run is stored elsewhere).
    pub fn check_room(&self) -> Result<(), StoreError> {
        let mut inner = self.inner();
        if inner.make_room(self.capacity) { Ok(()) } else { Err(StoreError::Full(inner.runs.len())) }
    }

    /// Keeps a run created elsewhere (its row is in the database), making room if it can:
    /// the room was checked before the row was written, so a race only overfills briefly.
    pub fn admit(&self, run: Arc<RunHandle>) {
        let mut inner = self.inner();
        inner.make_room(self.capacity);
        inner.insert(run);
    }

    pub fn get(&self, id: &str) -> Option<Arc<RunHandle>> {
        self.inner().runs.get(id).cloned()
    }

    /// Runs, newest first.
    pub fn list(&self) -> Vec<Arc<RunHandle>> {
        let inner = self.inner();
        inner.order.iter().rev().filter_map(|id| inner.runs.get(id).cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(d: &str) -> RunRequest {
        RunRequest { description: Some(d.into()), ..Default::default() }
    }

    #[test]
    fn idempotency_key_returns_the_same_run() {
        let store = RunStore::new(10);
        let Created::New(a) = store.create(request("x"), Some("k".into())).unwrap() else { panic!("new") };
        let Created::Existing(b) = store.create(request("x"), Some("k".into())).unwrap() else { panic!("existing") };
        assert_eq!(a.id, b.id);
        assert_eq!(store.create(request("y"), Some("k".into())).err(), Some(StoreError::KeyReused));
        assert!(matches!(store.create(request("x"), None).unwrap(), Created::New(_)));
    }

    #[test]
    fn evicts_the_oldest_finished_run_and_refuses_when_all_are_active() {
        let store = RunStore::new(2);
        let Created::New(a) = store.create(request("a"), Some("ka".into())).unwrap() else { panic!() };
        let Created::New(_b) = store.create(request("b"), None).unwrap() else { panic!() };
        assert_eq!(store.create(request("c"), None).err(), Some(StoreError::Full(2)));
        assert_eq!(store.check_room(), Err(StoreError::Full(2)));
        a.finish(None);
        let Created::New(c) = store.create(request("c"), None).unwrap() else { panic!() };
        assert!(store.get(&a.id).is_none());
        assert!(store.get(&c.id).is_some());
        // The evicted run's key is free again.
        assert!(matches!(store.create(request("other"), Some("ka".into())), Err(StoreError::Full(2))));
    }

    #[test]
    fn admitted_runs_are_kept_even_when_full() {
        let store = RunStore::new(1);
        let Created::New(_a) = store.create(request("a"), None).unwrap() else { panic!() };
        let b = Arc::new(RunHandle::new(new_run_id(), Some("kb".into()), request("b")));
        store.admit(b.clone());
        assert_eq!(store.list().iter().map(|r| r.id.clone()).collect::<Vec<_>>()[0], b.id);
        let Created::Existing(again) = store.create(request("b"), Some("kb".into())).unwrap() else { panic!() };
        assert_eq!(again.id, b.id);
    }
}
