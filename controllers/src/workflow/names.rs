//! Deterministic names: what an attempt creates, its idempotency key and the name of a
//! scheduled run all follow from data already in status, so a repeated create after a
//! crash answers AlreadyExists (or returns the same crew run) instead of doing work twice.

use sha2::{Digest, Sha256};

/// Longest name of an object whose name also becomes a label value (Job, Pod labels).
const MAX_LABEL_NAME: usize = 63;
/// Longest object name.
const MAX_NAME: usize = 253;

/// The Job (or other object) of attempt `number` of `step` in `run`: `<run>-<step>-<number>`.
pub fn attempt_object(run: &str, step: &str, number: i32) -> String {
    fit(&format!("{run}-{step}"), &format!("-{number}"), MAX_LABEL_NAME)
}

/// The `Idempotency-Key` of an attempt: `<run uid>/<step>/<number>`.
pub fn idempotency_key(run_uid: &str, step: &str, number: i32) -> String {
    format!("{run_uid}/{step}/{number}")
}

/// The run a schedule creates for `scheduled_unix_minute`: `<workflow>-<minute>`.
pub fn scheduled_run(workflow: &str, scheduled_unix_minute: i64) -> String {
    fit(workflow, &format!("-{scheduled_unix_minute}"), MAX_NAME)
}

/// The ConfigMap holding a run's outputs.
pub fn outputs(run: &str) -> String {
    fit(run, "-outputs", MAX_NAME)
}

/// `stem` + `suffix`, with the stem cut and marked by a short hash when the whole would be
/// longer than `max`, so two long names never collide.
fn fit(stem: &str, suffix: &str, max: usize) -> String {
    if stem.len() + suffix.len() <= max {
        return format!("{stem}{suffix}");
    }
    let hash: String = Sha256::digest(stem.as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect();
    let keep = max - suffix.len() - hash.len() - 1;
    let cut = stem[..keep].trim_end_matches('-');
    format!("{cut}-{hash}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_and_bounded() {
        assert_eq!(attempt_object("weekly-blog-29400000", "publish", 2), "weekly-blog-29400000-publish-2");
        assert_eq!(idempotency_key("3f2a", "publish", 2), "3f2a/publish/2");
        assert_eq!(scheduled_run("weekly-blog", 29_400_000), "weekly-blog-29400000");
        let long = "r".repeat(80);
        let a = attempt_object(&long, "step", 12);
        assert_eq!(a.len(), 63);
        assert!(a.ends_with("-12"));
        assert_eq!(a, attempt_object(&long, "step", 12));
        assert_ne!(attempt_object(&format!("{long}x"), "step", 12), a, "different stems, different names");
        assert_eq!(outputs(&"o".repeat(253)).len(), 253);
    }
}
