//! Credentials. A [`Secret`] never appears in `Debug` output, and a [`Redactor`] removes
//! known secrets from text that leaves the runtime (tool output fed to the model, events,
//! error messages).

use std::fmt;
use std::sync::Arc;

/// A credential read from the environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Arc::from(value.into()))
    }

    /// The value, for the one place that sends it (a request header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What replaces a secret in redacted text.
pub const REDACTED: &str = "[REDACTED]";

/// Secrets shorter than this are not redacted: replacing a two-letter value would mangle
/// ordinary text, and such a value is no real credential.
const MIN_REDACTED_LEN: usize = 6;

/// Removes a set of secrets from text.
#[derive(Clone, Default, Debug)]
pub struct Redactor {
    secrets: Vec<Secret>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = Secret>) -> Self {
        let mut secrets: Vec<Secret> = secrets.into_iter().filter(|s| s.expose().len() >= MIN_REDACTED_LEN).collect();
        // Longest first, so that a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
        secrets.dedup();
        Self { secrets }
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret.expose()) {
                out = out.replace(secret.expose(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        assert_eq!(format!("{:?}", Secret::new("sk-or-v1-abcdef")), "Secret(***)");
    }

    #[test]
    fn redacts_longest_first_and_ignores_short_values() {
        let r = Redactor::new([Secret::new("abcdef"), Secret::new("abcdefgh"), Secret::new("ab")]);
        assert_eq!(r.redact("x abcdefgh y abcdef z ab"), "x [REDACTED] y [REDACTED] z ab");
    }
}
