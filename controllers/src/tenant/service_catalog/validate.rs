//! Checks of one catalog entry at startup, for values the API server would otherwise refuse
//! on every reconcile of every tenant that runs the service.

use super::{ServiceCatalogError, ServiceEntry};
use bizosaas_crds::tenant::BusinessService;
use std::collections::BTreeMap;

/// Environment the operator sets on every service itself: tenant identity, branding and
/// database credentials.
const RESERVED_ENV_PREFIXES: [&str; 2] = ["BIZOSAAS_", "BRANDING_"];
const RESERVED_ENV: [&str; 1] = ["DATABASE_URL"];

pub(super) fn entry(service: BusinessService, entry: &ServiceEntry) -> Result<(), ServiceCatalogError> {
    let invalid =
        |field: String, problem: String| ServiceCatalogError::Invalid { service: service.as_str(), field, problem };
    image(&entry.image).map_err(|p| invalid("image".into(), p))?;
    if entry.port == 0 {
        return Err(invalid("port".into(), "must be between 1 and 65535".into()));
    }
    for (field, path) in [("readinessPath", &entry.readiness_path), ("livenessPath", &entry.liveness_path)] {
        if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
            return Err(invalid(field.into(), format!("{path:?} must be an absolute HTTP path such as /healthz")));
        }
    }
    for name in entry.env.keys() {
        env_name(name).map_err(|p| invalid(format!("env.{name}"), p))?;
    }
    if let Some(resources) = &entry.resources {
        for (kind, quantities) in [("requests", &resources.requests), ("limits", &resources.limits)] {
            quantities_of(quantities).map_err(|(name, p)| invalid(format!("resources.{kind}.{name}"), p))?;
        }
    }
    Ok(())
}

/// A reference `repository[:tag]` or `repository@<algorithm>:<hex>`. Only the digest is
/// checked closely: a mistyped digest would otherwise surface as pods stuck pulling.
fn image(reference: &str) -> Result<(), String> {
    if reference.is_empty() || reference.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{reference:?} is not an image reference"));
    }
    let Some((repository, digest)) = reference.split_once('@') else {
        return Ok(());
    };
    let (algorithm, hex) = digest.split_once(':').unwrap_or((digest, ""));
    let len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(format!("digest {digest:?} must be sha256:<64 hex digits> or sha512:<128 hex digits>")),
    };
    let lower_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if repository.is_empty() || hex.len() != len || !hex.chars().all(lower_hex) {
        return Err(format!("{reference:?} must be <repository>@{algorithm}:<{len} lower-case hex digits>"));
    }
    Ok(())
}

/// Kubernetes accepts any printable ASCII but `=` in a variable name.
fn env_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('=') || !name.chars().all(|c| (' '..='~').contains(&c)) {
        return Err("an environment variable name is printable ASCII without '='".into());
    }
    if RESERVED_ENV.contains(&name) || RESERVED_ENV_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err("the operator sets BIZOSAAS_*, BRANDING_* and DATABASE_URL itself".into());
    }
    Ok(())
}

fn quantities_of(quantities: &BTreeMap<String, String>) -> Result<(), (String, String)> {
    for (name, value) in quantities {
        if name.is_empty() {
            return Err((name.clone(), "a resource needs a name such as cpu or memory".into()));
        }
        if !is_quantity(value) {
            return Err((name.clone(), format!("{value:?} is not a quantity such as 250m, 1 or 512Mi")));
        }
    }
    Ok(())
}

/// A non-negative Kubernetes quantity: a decimal number with an optional SI or binary suffix
/// or a decimal exponent (`100m`, `1.5`, `512Mi`, `1e3`).
fn is_quantity(value: &str) -> bool {
    let split = value.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    let number_ok = number.chars().any(|c| c.is_ascii_digit()) && number.matches('.').count() <= 1;
    let suffix_ok = match suffix {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        _ => suffix.strip_prefix(['e', 'E']).is_some_and(|exponent| {
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
        }),
    };
    number_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_digests_are_image_references() {
        image("bizosaas/crm:0.1.0").unwrap();
        image("localhost:5000/crm").unwrap();
        image(&format!("registry.example/crm@sha256:{}", "a".repeat(64))).unwrap();
        image(&format!("registry.example/crm:1.0@sha512:{}", "0".repeat(128))).unwrap();
        for bad in ["", "crm 1.0", "crm@sha256:abc", "crm@md5:0123", &format!("@sha256:{}", "a".repeat(64))] {
            assert!(image(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn quantities_follow_kubernetes_notation() {
        for good in ["1", "250m", "0.5", "1.5Gi", "512Mi", "1e3", "2E-2", "1k", ".5"] {
            assert!(is_quantity(good), "{good:?} refused");
        }
        for bad in ["", "lots", "1.2.3", "Mi", "-1", "1MiB", "1e", "."] {
            assert!(!is_quantity(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn operator_owned_variables_are_reserved() {
        env_name("LOG_LEVEL").unwrap();
        for bad in ["BIZOSAAS_TENANT", "BRANDING_LOGO_URL", "DATABASE_URL", "", "A=B"] {
            assert!(env_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
