//! Business services from the service catalog: a Deployment, a Service and an Ingress each,
//! branded with the tenant's settings.

use super::workload::{restricted_container, restricted_pod, tmp_mount, tmp_volume};
use super::{DATABASE_SECRET, LABEL_COMPONENT, Owner, WORKLOAD_SERVICE_ACCOUNT, http_service};
use crate::context::Config;
use crate::tenant::service_catalog::{Resources, ServiceEntry};
use bizosaas_crds::tenant::{BusinessService, SecretsBackend, TenantSpec};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretKeySelector, Service,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

const COMPONENT: &str = "service";

/// The objects of one business service.
#[derive(Clone, Debug)]
pub struct ServiceWorkload {
    pub service_name: BusinessService,
    pub deployment: Deployment,
    pub service: Service,
    /// `None` when the tenant may not serve its host (a custom domain claimed by another).
    pub ingress: Option<Ingress>,
}

/// What a tenant's `spec.services` becomes under the operator's service catalog.
#[derive(Clone, Debug, Default)]
pub struct ServiceWorkloads {
    /// The objects of every named service the catalog offers, in `spec.services` order.
    pub workloads: Vec<ServiceWorkload>,
    /// Named services the catalog lacks. They are reported rather than skipped silently, and
    /// their existing objects are left alone: a catalog edit must not delete running services.
    pub not_in_catalog: Vec<BusinessService>,
}

/// Annotation that has cert-manager issue an Ingress's certificates.
pub const CLUSTER_ISSUER: &str = "cert-manager.io/cluster-issuer";

/// The Secret holding a service's certificate: `<service>-tls`, in the tenant namespace.
pub fn tls_secret_name(service: BusinessService) -> String {
    format!("{}-tls", service.as_str())
}

/// The public host of a service: `<service>.<customDomain>` or `<service>.<tenant>.<baseDomain>`.
pub fn host(service: BusinessService, tenant_name: &str, spec: &TenantSpec, config: &Config) -> String {
    match spec.branding.as_ref().and_then(|b| b.custom_domain.as_deref()) {
        Some(domain) => format!("{}.{domain}", service.as_str()),
        None => format!("{}.{tenant_name}.{}", service.as_str(), config.base_domain),
    }
}

pub fn service_workloads(owner: &Owner, spec: &TenantSpec, config: &Config) -> ServiceWorkloads {
    let mut built = ServiceWorkloads::default();
    for &service in &spec.services {
        match config.services.get(service) {
            Some(entry) => built.workloads.push(workload(owner, service, entry, spec, config)),
            None => built.not_in_catalog.push(service),
        }
    }
    built
}

fn workload(
    owner: &Owner,
    service: BusinessService,
    entry: &ServiceEntry,
    spec: &TenantSpec,
    config: &Config,
) -> ServiceWorkload {
    let name = service.as_str();
    let mut labels = owner.labels(COMPONENT);
    labels.insert("app.kubernetes.io/name".into(), name.into());
    let selector = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), name.to_string()),
        (LABEL_COMPONENT.to_string(), COMPONENT.to_string()),
    ]);
    let meta = || ObjectMeta { labels: Some(labels.clone()), ..owner.meta(name, COMPONENT, true) };
    let host = host(service, &owner.name, spec, config);
    let port = i32::from(entry.port);
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction { path: Some(path.into()), port: IntOrString::Int(port), ..Default::default() }),
        period_seconds: Some(10),
        ..Default::default()
    };
    let container = Container {
        name: name.into(),
        image: Some(entry.image.clone()),
        command: (!entry.command.is_empty()).then(|| entry.command.clone()),
        args: (!entry.args.is_empty()).then(|| entry.args.clone()),
        ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: port, ..Default::default() }]),
        env: Some(env(owner, service, &host, entry, spec, config)),
        resources: entry.resources.as_ref().map(resource_requirements),
        readiness_probe: Some(probe(&entry.readiness_path)),
        liveness_probe: Some(probe(&entry.liveness_path)),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![tmp_mount()]),
        ..Default::default()
    };
    let deployment = Deployment {
        metadata: meta(),
        spec: Some(DeploymentSpec {
            replicas: Some(if spec.suspended { 0 } else { 1 }),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(super::database_client(labels.clone())),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(WORKLOAD_SERVICE_ACCOUNT.into()),
                    automount_service_account_token: Some(false),
                    security_context: Some(restricted_pod()),
                    containers: vec![container],
                    volumes: Some(vec![tmp_volume()]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let service_obj = http_service(meta(), selector);
    let ingress = Ingress {
        metadata: ObjectMeta {
            annotations: config
                .ingress_cluster_issuer
                .as_ref()
                .map(|issuer| BTreeMap::from([(CLUSTER_ISSUER.to_string(), issuer.clone())])),
            ..meta()
        },
        spec: Some(IngressSpec {
            ingress_class_name: config.ingress_class.clone(),
            // Every host is served over TLS, with its own certificate.
            tls: Some(vec![IngressTLS {
                hosts: Some(vec![host.clone()]),
                secret_name: Some(tls_secret_name(service)),
            }]),
            rules: Some(vec![IngressRule {
                host: Some(host),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: name.into(),
                                port: Some(ServiceBackendPort { name: Some("http".into()), number: None }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    ServiceWorkload { service_name: service, deployment, service: service_obj, ingress: Some(ingress) }
}

/// The operator's variables (tenant identity, branding, database access) followed by the
/// catalog entry's extras. The catalog cannot name the operator's variables, so none is set twice.
fn env(
    owner: &Owner,
    service: BusinessService,
    host: &str,
    entry: &ServiceEntry,
    spec: &TenantSpec,
    config: &Config,
) -> Vec<EnvVar> {
    let branding = spec.branding.clone().unwrap_or_default();
    [
        ("BIZOSAAS_TENANT", Some(owner.name.clone())),
        ("BIZOSAAS_SERVICE", Some(service.as_str().to_string())),
        ("BIZOSAAS_PUBLIC_URL", Some(format!("https://{host}"))),
        ("BRANDING_DISPLAY_NAME", Some(branding.display_name.unwrap_or_else(|| owner.display_name.clone()))),
        ("BRANDING_LOGO_URL", branding.logo_url),
        ("BRANDING_PRIMARY_COLOR", branding.primary_color),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|value| plain(k, value)))
    .chain(database_env(owner, spec.secrets.backend, config))
    .chain(entry.env.iter().map(|(k, v)| plain(k, v.clone())))
    .collect()
}

fn plain(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value), value_from: None }
}

/// How a service finds its database credentials: the `tenant-database` Secret, or (Vault
/// backend) the Vault role and KV path it logs in with.
fn database_env(owner: &Owner, backend: SecretsBackend, config: &Config) -> Vec<EnvVar> {
    match backend {
        SecretsBackend::Kubernetes => vec![EnvVar {
            name: "DATABASE_URL".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: DATABASE_SECRET.into(),
                    key: "url".into(),
                    optional: None,
                }),
                ..Default::default()
            }),
        }],
        SecretsBackend::Vault => vec![
            plain("BIZOSAAS_VAULT_ROLE", format!("tenant-{}", owner.name)),
            plain(
                "BIZOSAAS_VAULT_DATABASE_PATH",
                format!("{}/data/tenants/{}/database", config.vault_kv_mount, owner.name),
            ),
        ],
    }
}

fn resource_requirements(resources: &Resources) -> ResourceRequirements {
    let quantities = |values: &BTreeMap<String, String>| {
        (!values.is_empty()).then(|| values.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect())
    };
    ResourceRequirements {
        requests: quantities(&resources.requests),
        limits: quantities(&resources.limits),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Owner, fixtures};
    use super::*;
    use crate::tenant::service_catalog::ServiceCatalog;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A catalog offering crm only, from an image pinned by digest on a port of its own.
    fn crm_only() -> Config {
        let yaml = format!(
            r#"
crm:
  image: registry.example/crm@{DIGEST}
  port: 3000
  readinessPath: /ready
  livenessPath: /live
  env: {{LOG_LEVEL: debug}}
  resources: {{requests: {{cpu: 100m}}, limits: {{memory: 256Mi}}}}
  command: [/app/crm]
  args: [serve]
"#
        );
        Config { services: ServiceCatalog::from_yaml(&yaml).unwrap(), ..Config::default() }
    }

    fn workloads(tenant: &bizosaas_crds::Tenant, config: &Config) -> ServiceWorkloads {
        service_workloads(&Owner::of(tenant).unwrap(), &tenant.spec, config)
    }

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn env(d: &Deployment) -> BTreeMap<String, Option<String>> {
        let c = &pod(d).containers[0];
        c.env.as_ref().unwrap().iter().map(|e| (e.name.clone(), e.value.clone())).collect()
    }

    #[test]
    fn custom_domain_and_branding_reach_the_services() {
        let tenant = fixtures::tenant(fixtures::ACME);
        let w = workloads(&tenant, &Config::default()).workloads;
        assert_eq!(w.iter().map(|w| w.service_name.as_str()).collect::<Vec<_>>(), ["crm", "cms"]);
        let rule = &w[0].ingress.as_ref().unwrap().spec.as_ref().unwrap().rules.as_ref().unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("crm.app.acme.example"));
        let env = env(&w[0].deployment);
        assert_eq!(env["BRANDING_PRIMARY_COLOR"].as_deref(), Some("#0a7cff"));
        assert_eq!(env["BRANDING_DISPLAY_NAME"].as_deref(), Some("Acme Corp"));
        assert_eq!(env["DATABASE_URL"], None, "the URL comes from the Secret, never inline");
    }

    #[test]
    fn every_host_is_served_over_tls_by_the_configured_class() {
        let tenant = fixtures::tenant(fixtures::ACME);
        let plain = workloads(&tenant, &Config::default()).workloads;
        let spec = plain[0].ingress.as_ref().unwrap().spec.as_ref().unwrap();
        assert_eq!(spec.ingress_class_name, None, "the cluster's default class");
        let tls = &spec.tls.as_ref().unwrap()[0];
        assert_eq!(tls.hosts.as_deref().unwrap(), ["crm.app.acme.example"]);
        assert_eq!(tls.secret_name.as_deref(), Some("crm-tls"));
        assert!(plain[0].ingress.as_ref().unwrap().metadata.annotations.is_none());
        let config = Config {
            ingress_class: Some("nginx".into()),
            ingress_cluster_issuer: Some("letsencrypt".into()),
            ..Config::default()
        };
        let w = workloads(&tenant, &config).workloads;
        assert_eq!(w[1].ingress.as_ref().unwrap().spec.as_ref().unwrap().ingress_class_name.as_deref(), Some("nginx"));
        assert_eq!(
            w[1].ingress.as_ref().unwrap().metadata.annotations.as_ref().unwrap()[CLUSTER_ISSUER],
            "letsencrypt"
        );
        assert_eq!(
            w[1].ingress.as_ref().unwrap().spec.as_ref().unwrap().tls.as_ref().unwrap()[0].secret_name.as_deref(),
            Some("cms-tls")
        );
    }

    #[test]
    fn the_builtin_catalog_runs_the_projects_images_on_8080() {
        let tenant = fixtures::tenant(fixtures::ACME);
        let w = workloads(&tenant, &Config::default());
        assert!(w.not_in_catalog.is_empty());
        let c = &pod(&w.workloads[1].deployment).containers[0];
        assert_eq!(c.image, Some(format!("bizosaas/cms:{}", env!("CARGO_PKG_VERSION"))));
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8080);
        let probe_path = |p: &Option<Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone().unwrap();
        assert_eq!(
            (probe_path(&c.readiness_probe), probe_path(&c.liveness_probe)),
            ("/readyz".into(), "/healthz".into())
        );
        assert_eq!((c.command.as_ref(), c.args.as_ref(), c.resources.as_ref()), (None, None, None));
    }

    #[test]
    fn a_catalog_entry_sets_image_port_probes_env_resources_and_command() {
        let mut tenant = fixtures::tenant(fixtures::ACME);
        tenant.spec.services = vec![BusinessService::Crm];
        let w = workloads(&tenant, &crm_only()).workloads;
        let c = &pod(&w[0].deployment).containers[0];
        assert_eq!(c.image.as_deref(), Some(format!("registry.example/crm@{DIGEST}").as_str()), "used verbatim");
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 3000);
        for (probe, path) in [(&c.readiness_probe, "/ready"), (&c.liveness_probe, "/live")] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!((get.path.as_deref(), &get.port), (Some(path), &IntOrString::Int(3000)));
        }
        assert_eq!(c.command.as_deref(), Some(["/app/crm".to_string()].as_slice()));
        assert_eq!(c.args.as_deref(), Some(["serve".to_string()].as_slice()));
        let resources = c.resources.as_ref().unwrap();
        assert_eq!(resources.requests.as_ref().unwrap()["cpu"], Quantity("100m".into()));
        assert_eq!(resources.limits.as_ref().unwrap()["memory"], Quantity("256Mi".into()));
        let env = env(&w[0].deployment);
        assert_eq!(env["LOG_LEVEL"].as_deref(), Some("debug"), "catalog extras");
        assert_eq!(env["BRANDING_PRIMARY_COLOR"].as_deref(), Some("#0a7cff"), "branding kept");
        assert_eq!(env["BIZOSAAS_PUBLIC_URL"].as_deref(), Some("https://crm.app.acme.example"));
        assert!(env.contains_key("DATABASE_URL"));
        let names: Vec<_> = c.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names.last(), Some(&"LOG_LEVEL"), "extras come after the operator's variables");
    }

    #[test]
    fn every_service_pod_gets_a_writable_tmp() {
        let tenant = fixtures::tenant(fixtures::ACME);
        for w in workloads(&tenant, &Config::default()).workloads {
            let pod = pod(&w.deployment);
            let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
            assert_eq!((mount.name.as_str(), mount.mount_path.as_str()), ("tmp", "/tmp"));
            let volume = &pod.volumes.as_ref().unwrap()[0];
            assert_eq!(volume.name, "tmp");
            assert!(volume.empty_dir.is_some());
        }
    }

    #[test]
    fn services_the_catalog_lacks_are_reported_not_built() {
        let tenant = fixtures::tenant(fixtures::ACME);
        let w = workloads(&tenant, &crm_only());
        assert_eq!(w.workloads.iter().map(|w| w.service_name).collect::<Vec<_>>(), [BusinessService::Crm]);
        assert_eq!(w.not_in_catalog, [BusinessService::Cms]);
    }

    #[test]
    fn vault_backed_services_get_a_vault_role_instead_of_a_secret() {
        let mut tenant = fixtures::tenant(fixtures::ACME);
        tenant.spec.secrets.backend = SecretsBackend::Vault;
        let w = workloads(&tenant, &Config::default()).workloads;
        let env = env(&w[0].deployment);
        assert!(!env.contains_key("DATABASE_URL"));
        assert_eq!(env["BIZOSAAS_VAULT_ROLE"].as_deref(), Some("tenant-acme"));
        assert_eq!(env["BIZOSAAS_VAULT_DATABASE_PATH"].as_deref(), Some("secret/data/tenants/acme/database"));
    }

    #[test]
    fn without_custom_domain_hosts_live_under_the_base_domain() {
        let mut tenant = fixtures::tenant(fixtures::MINIMAL);
        tenant.spec.services = vec![BusinessService::Billing];
        let w = workloads(&tenant, &Config::default()).workloads;
        let rule = &w[0].ingress.as_ref().unwrap().spec.as_ref().unwrap().rules.as_ref().unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("billing.corner-shop.bizosaas.local"));
    }

    #[test]
    fn suspended_tenants_scale_services_to_zero_with_restricted_pods() {
        let mut tenant = fixtures::tenant(fixtures::ACME);
        tenant.spec.suspended = true;
        let w = workloads(&tenant, &Config::default()).workloads;
        let spec = w[0].deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(0));
        let sc = spec.template.spec.as_ref().unwrap().containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref().unwrap(), ["ALL"]);
    }
}
