//! Attempts whose side effect runs in this process (HTTP calls, waiting on a crew run):
//! one task per idempotency key, its outcome kept until a reconcile records it, and a wake-up
//! of the run when it ends. After a restart the map is empty, so a recorded attempt is
//! resumed with the same key, never started under a new one.

use crate::workflow::plan::Outcome;
use bizosaas_crds::WorkflowRun;
use futures::channel::mpsc::UnboundedSender;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::ObjectRef;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::task::AbortHandle;

pub type RunRef = ObjectRef<DeserializeGuard<WorkflowRun>>;

enum Slot {
    Running { abort: AbortHandle, reference: Option<String> },
    Done { outcome: Outcome, reference: Option<String> },
}

/// The attempts running here, by idempotency key.
#[derive(Clone)]
pub struct Inflight {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    wake: UnboundedSender<RunRef>,
}

/// Lets a running attempt publish what it runs as (the crew runtime's run id).
#[derive(Clone)]
pub struct Reporter {
    key: String,
    run: RunRef,
    inflight: Inflight,
}

impl Reporter {
    pub fn reference(&self, reference: String) {
        if let Some(Slot::Running { reference: slot, .. }) =
            self.inflight.slots.lock().expect("inflight lock").get_mut(&self.key)
        {
            *slot = Some(reference);
        }
        let _ = self.inflight.wake.unbounded_send(self.run.clone());
    }
}

impl Inflight {
    pub fn new(wake: UnboundedSender<RunRef>) -> Self {
        Self { slots: Arc::default(), wake }
    }

    /// Starts `work` for `key` unless it is already running or finished here.
    pub fn ensure<F, Fut>(&self, key: &str, run: RunRef, work: F)
    where
        F: FnOnce(Reporter) -> Fut,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let mut slots = self.slots.lock().expect("inflight lock");
        if slots.contains_key(key) {
            return;
        }
        let reporter = Reporter { key: key.to_string(), run: run.clone(), inflight: self.clone() };
        let fut = work(reporter);
        let (me, owned_key) = (self.clone(), key.to_string());
        let handle = tokio::spawn(async move {
            let outcome = fut.await;
            let mut slots = me.slots.lock().expect("inflight lock");
            if let Some(Slot::Running { reference, .. }) = slots.remove(&owned_key) {
                slots.insert(owned_key, Slot::Done { outcome, reference });
            }
            drop(slots);
            let _ = me.wake.unbounded_send(run);
        });
        slots.insert(key.to_string(), Slot::Running { abort: handle.abort_handle(), reference: None });
    }

    /// Whether `key` runs or has an unrecorded outcome here.
    pub fn knows(&self, key: &str) -> bool {
        self.slots.lock().expect("inflight lock").contains_key(key)
    }

    /// What the attempt runs as, once known.
    pub fn reference(&self, key: &str) -> Option<String> {
        match self.slots.lock().expect("inflight lock").get(key)? {
            Slot::Running { reference, .. } | Slot::Done { reference, .. } => reference.clone(),
        }
    }

    /// The outcome of a finished attempt, without removing it: it is forgotten only once the
    /// status that records it has been written.
    pub fn outcome(&self, key: &str) -> Option<Outcome> {
        match self.slots.lock().expect("inflight lock").get(key)? {
            Slot::Done { outcome, .. } => Some(outcome.clone()),
            Slot::Running { .. } => None,
        }
    }

    /// Forgets `key`, stopping its task if it still runs.
    pub fn forget(&self, key: &str) {
        if let Some(Slot::Running { abort, .. }) = self.slots.lock().expect("inflight lock").remove(key) {
            abort.abort();
        }
    }

    /// Attempts running here (for the operator's gauge).
    pub fn len(&self) -> usize {
        self.slots.lock().expect("inflight lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
