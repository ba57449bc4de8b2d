//! Building status conditions so that `lastTransitionTime` only moves when a status flips.

use bizosaas_crds::common::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A condition as computed by a reconcile, before transition times are merged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Observed {
    pub fn ok(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { type_, status: true, reason: reason.into(), message: message.into() }
    }

    pub fn failed(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { type_, status: false, reason: reason.into(), message: message.into() }
    }
}

/// kstatus' abnormal-true conditions: present (True) only while they apply, so a converged
/// object carries neither and Flux, Argo CD and `kubectl wait` see it as current.
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Appends the `Ready` summary to `observed` (the reason of the failure that decides, or
/// `ready` when nothing fails) and the kstatus condition of that failure: `Stalled` when
/// `permanent` says retrying cannot fix it (the spec, a reference or the platform's
/// configuration must change), `Reconciling` otherwise. A permanent failure decides even
/// when a transient one comes first, since waiting on the transient one cannot make the
/// object ready. A failure that is a chosen steady state (`at_rest`, e.g. a suspended
/// tenant's crew) gets neither.
pub fn summarize(
    observed: &mut Vec<Observed>,
    ready: Observed,
    permanent: impl Fn(&str) -> bool,
    at_rest: impl Fn(&str) -> bool,
) {
    let permanent_failure = observed.iter().find(|o| !o.status && permanent(&o.reason));
    let Some(failing) = permanent_failure.or_else(|| observed.iter().find(|o| !o.status)).cloned() else {
        observed.push(ready);
        return;
    };
    observed.push(Observed::failed(bizosaas_crds::common::READY, failing.reason.clone(), failing.message.clone()));
    if at_rest(&failing.reason) {
        return;
    }
    let kind = if permanent(&failing.reason) { STALLED } else { RECONCILING };
    observed.push(Observed::ok(kind, failing.reason, failing.message));
}

/// Merges freshly observed conditions with the previous ones: a condition whose status did
/// not change keeps its `lastTransitionTime`, so an idle resync produces an identical status.
pub fn merge(previous: &[Condition], observed: &[Observed], generation: Option<i64>) -> Vec<Condition> {
    let now = Time(Timestamp::now());
    observed
        .iter()
        .map(|o| {
            let status = if o.status { "True" } else { "False" }.to_string();
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == o.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: o.type_.to_string(),
                status,
                reason: o.reason.clone(),
                message: o.message.clone(),
                last_transition_time,
                observed_generation: generation,
            }
        })
        .collect()
}

/// Conditions that changed status between two sets, for events.
pub fn transitions<'a>(previous: &[Condition], next: &'a [Condition]) -> Vec<&'a Condition> {
    next.iter()
        .filter(|n| {
            previous.iter().find(|p| p.type_ == n.type_).is_none_or(|p| p.status != n.status || p.reason != n.reason)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(observed: &[Observed]) -> Vec<(&str, bool, &str)> {
        observed.iter().map(|o| (o.type_, o.status, o.reason.as_str())).collect()
    }

    #[test]
    fn the_summary_is_kstatus_compatible() {
        let permanent = |r: &str| r == "InvalidSpec";
        let at_rest = |r: &str| r == "Suspended";
        let ready = || Observed::ok("Ready", "Ready", "all good");

        let mut ok = vec![Observed::ok("A", "Fine", "")];
        summarize(&mut ok, ready(), permanent, at_rest);
        assert_eq!(types(&ok), [("A", true, "Fine"), ("Ready", true, "Ready")]);

        let mut stalled = vec![Observed::ok("A", "Fine", ""), Observed::failed("B", "InvalidSpec", "bad")];
        summarize(&mut stalled, ready(), permanent, at_rest);
        assert_eq!(&types(&stalled)[2..], [("Ready", false, "InvalidSpec"), ("Stalled", true, "InvalidSpec")]);

        let mut waiting = vec![Observed::failed("A", "Progressing", "0/1"), Observed::failed("B", "InvalidSpec", "")];
        summarize(&mut waiting, ready(), permanent, at_rest);
        assert_eq!(&types(&waiting)[2..], [("Ready", false, "InvalidSpec"), ("Stalled", true, "InvalidSpec")]);

        let mut progressing = vec![Observed::ok("A", "Fine", ""), Observed::failed("B", "Progressing", "0/1")];
        summarize(&mut progressing, ready(), permanent, at_rest);
        assert_eq!(&types(&progressing)[2..], [("Ready", false, "Progressing"), ("Reconciling", true, "Progressing")]);

        let mut resting = vec![Observed::failed("A", "Suspended", "")];
        summarize(&mut resting, ready(), permanent, at_rest);
        assert_eq!(types(&resting), [("A", false, "Suspended"), ("Ready", false, "Suspended")]);
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time() {
        let first = merge(&[], &[Observed::ok("Ready", "Provisioned", "all good")], Some(1));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let second = merge(&first, &[Observed::ok("Ready", "Provisioned", "all good")], Some(1));
        assert_eq!(first, second);
        assert!(transitions(&first, &second).is_empty());
    }

    #[test]
    fn flipped_status_gets_a_new_transition_time() {
        let first = merge(&[], &[Observed::ok("Ready", "Provisioned", "")], Some(1));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let second = merge(&first, &[Observed::failed("Ready", "DatabaseUnavailable", "")], Some(2));
        assert_ne!(first[0].last_transition_time, second[0].last_transition_time);
        assert_eq!(transitions(&first, &second).len(), 1);
        assert_eq!(second[0].status, "False");
        assert_eq!(second[0].observed_generation, Some(2));
    }
}
