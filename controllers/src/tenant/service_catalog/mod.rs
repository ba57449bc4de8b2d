//! The service catalog: how each business service runs (image, port, probes, extra
//! environment, resources, command). It is operator configuration like the plan catalog, so a
//! platform can point the services at its own registry or pin them by digest without
//! rebuilding the operator.

mod validate;

use bizosaas_crds::tenant::BusinessService;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How one business service runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    /// Full image reference, `repository:tag` or `repository@sha256:<digest>`, used verbatim.
    pub image: String,
    /// Container port of the service's HTTP server; its Service and probes target it.
    pub port: u16,
    /// HTTP path of the readiness probe.
    pub readiness_path: String,
    /// HTTP path of the liveness probe.
    pub liveness_path: String,
    /// Extra plain environment variables. Names the operator sets itself (`BIZOSAAS_*`,
    /// `BRANDING_*`, `DATABASE_URL`) are refused, so tenant identity and credentials cannot be
    /// overridden by accident.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Requests and limits of the container; without them the tenant's LimitRange defaults apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Replaces the image's default arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// Container requests and limits in Kubernetes quantity notation, e.g. `cpu: 100m`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

impl ServiceEntry {
    /// The built-in entry of a service: the image the project builds for it, tagged with this
    /// operator's version, serving HTTP on 8080 with `/readyz` and `/healthz`.
    pub fn builtin(service: BusinessService) -> Self {
        Self {
            image: format!("bizosaas/{}:{}", service.as_str(), env!("CARGO_PKG_VERSION")),
            port: 8080,
            readiness_path: "/readyz".into(),
            liveness_path: "/healthz".into(),
            env: BTreeMap::new(),
            resources: None,
            command: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// The entry of each business service the operator can run. Only built through [`Default`]
/// or [`ServiceCatalog::from_yaml`], so every entry has been validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServiceCatalog(BTreeMap<BusinessService, ServiceEntry>);

/// The built-in catalog has an entry for every service, so a Tenant can name any of them.
impl Default for ServiceCatalog {
    fn default() -> Self {
        Self(BusinessService::ALL.into_iter().map(|s| (s, ServiceEntry::builtin(s))).collect())
    }
}

/// A service catalog file the operator refuses to start with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServiceCatalogError {
    /// Not YAML of the catalog's shape: an unknown service or field, a missing field, a wrong type.
    #[error("invalid service catalog: {0}")]
    Parse(String),
    /// Well-formed, but a value Kubernetes or the operator would refuse later.
    #[error("invalid service catalog: {service}.{field}: {problem}")]
    Invalid { service: &'static str, field: String, problem: String },
}

impl ServiceCatalog {
    /// Parses and validates a service catalog from YAML (the `services.yaml` of the Helm chart).
    /// A file is the whole catalog: services it leaves out are not offered.
    pub fn from_yaml(text: &str) -> Result<Self, ServiceCatalogError> {
        let entries: BTreeMap<BusinessService, ServiceEntry> =
            serde_saphyr::from_str(text).map_err(|e| ServiceCatalogError::Parse(e.to_string()))?;
        for (service, entry) in &entries {
            validate::entry(*service, entry)?;
        }
        Ok(Self(entries))
    }

    /// The entry of a service, `None` when the catalog does not offer it.
    pub fn get(&self, service: BusinessService) -> Option<&ServiceEntry> {
        self.0.get(&service)
    }

    /// The services the catalog does not offer.
    pub fn missing(&self) -> Vec<BusinessService> {
        BusinessService::ALL.into_iter().filter(|s| !self.0.contains_key(s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
crm:
  image: registry.example/bizosaas/crm@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  port: 3000
  readinessPath: /ready
  livenessPath: /live
  env: {LOG_LEVEL: debug, FEATURE_X: "on"}
  resources:
    requests: {cpu: 100m, memory: 128Mi}
    limits: {memory: 512Mi, cpu: 1}
  command: [/app/crm]
  args: [serve, --port, "3000"]
cms:
  image: registry.example/bizosaas/cms:1.2.3
  port: 8080
  readinessPath: /readyz
  livenessPath: /healthz
"#;

    #[test]
    fn every_service_has_a_builtin_entry() {
        let catalog = ServiceCatalog::default();
        assert!(catalog.missing().is_empty());
        let crm = catalog.get(BusinessService::Crm).unwrap();
        assert_eq!(crm.image, format!("bizosaas/crm:{}", env!("CARGO_PKG_VERSION")));
        assert_eq!((crm.port, crm.readiness_path.as_str(), crm.liveness_path.as_str()), (8080, "/readyz", "/healthz"));
    }

    #[test]
    fn a_catalog_file_parses_with_optional_fields_and_digest_images() {
        let catalog = ServiceCatalog::from_yaml(GOOD).unwrap();
        let crm = catalog.get(BusinessService::Crm).unwrap();
        assert!(crm.image.ends_with("@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
        assert_eq!(crm.port, 3000);
        assert_eq!(crm.env["FEATURE_X"], "on");
        let resources = crm.resources.as_ref().unwrap();
        assert_eq!(
            (resources.requests["cpu"].as_str(), resources.limits["cpu"].as_str()),
            ("100m", "1"),
            "numbers too"
        );
        assert_eq!((crm.command.as_slice(), crm.args.len()), (["/app/crm".to_string()].as_slice(), 3));
        let cms = catalog.get(BusinessService::Cms).unwrap();
        assert!(cms.env.is_empty() && cms.resources.is_none() && cms.command.is_empty());
        assert_eq!(
            catalog.missing(),
            [BusinessService::Billing, BusinessService::Marketing, BusinessService::Directory, BusinessService::Gaming]
        );
    }

    #[test]
    fn the_builtin_catalog_round_trips() {
        let yaml = serde_saphyr::to_string(&ServiceCatalog::default()).unwrap();
        assert!(yaml.starts_with("crm:"), "{yaml}");
        assert_eq!(ServiceCatalog::from_yaml(&yaml).unwrap(), ServiceCatalog::default());
    }

    #[test]
    fn unknown_fields_and_services_are_rejected() {
        let err = ServiceCatalog::from_yaml(&GOOD.replace("readinessPath", "readinessPat")).unwrap_err();
        assert!(matches!(err, ServiceCatalogError::Parse(ref m) if m.contains("readinessPat")), "{err}");
        let err = ServiceCatalog::from_yaml(&GOOD.replace("cms:", "payroll:")).unwrap_err();
        assert!(matches!(err, ServiceCatalogError::Parse(ref m) if m.contains("payroll")), "{err}");
        let err = ServiceCatalog::from_yaml(&GOOD.replace("requests:", "request:")).unwrap_err();
        assert!(matches!(err, ServiceCatalogError::Parse(_)), "{err}");
        let err = ServiceCatalog::from_yaml(&GOOD.replace("  port: 8080\n", "")).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn values_kubernetes_would_refuse_are_rejected_with_the_field() {
        let err = ServiceCatalog::from_yaml(&GOOD.replace("sha256:0123", "sha256:XYZ3")).unwrap_err();
        assert!(matches!(err, ServiceCatalogError::Invalid { service: "crm", ref field, .. } if field == "image"));
        let err = ServiceCatalog::from_yaml(&GOOD.replace("LOG_LEVEL", "DATABASE_URL")).unwrap_err();
        assert_eq!(err.to_string().split(':').nth(1), Some(" crm.env.DATABASE_URL"), "{err}");
        let err = ServiceCatalog::from_yaml(&GOOD.replace("128Mi", "lots")).unwrap_err();
        assert!(err.to_string().contains("crm.resources.requests.memory"), "{err}");
        let err = ServiceCatalog::from_yaml(&GOOD.replace("port: 3000", "port: 0")).unwrap_err();
        assert!(err.to_string().contains("crm.port"), "{err}");
        let err = ServiceCatalog::from_yaml(&GOOD.replace("/live", "live")).unwrap_err();
        assert!(err.to_string().contains("crm.livenessPath"), "{err}");
    }

    /// The catalogs shipped with the plain manifests and the chart are the built-in one written
    /// out, so that installing either changes nothing until someone edits it.
    #[test]
    fn the_shipped_catalogs_are_the_builtin_one() {
        let manifests = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/install/services.yaml"));
        assert_eq!(
            ServiceCatalog::from_yaml(manifests).unwrap(),
            ServiceCatalog::default(),
            "manifests/install/services.yaml"
        );
        let values: serde_json::Value = serde_saphyr::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/bizosaas/values.yaml"
        )))
        .unwrap();
        let chart = serde_json::to_string(&values["serviceCatalog"]).unwrap();
        assert_eq!(ServiceCatalog::from_yaml(&chart).unwrap(), ServiceCatalog::default(), "chart serviceCatalog");
    }
}
