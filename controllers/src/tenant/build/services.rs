//! Business services from the service catalog: a Deployment, a Service and an Ingress each,
//! branded with the tenant's settings.

use super::{DATABASE_SECRET, LABEL_COMPONENT, Owner, WORKLOAD_SERVICE_ACCOUNT};
use crate::context::Config;
use bizosaas_crds::tenant::{BusinessService, SecretsBackend, TenantSpec};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

const COMPONENT: &str = "service";
const PORT: i32 = 8080;

/// The objects of one business service.
#[derive(Clone, Debug)]
pub struct ServiceWorkload {
    pub service_name: BusinessService,
    pub deployment: Deployment,
    pub service: Service,
    pub ingress: Ingress,
}

/// The public host of a service: `<service>.<customDomain>` or `<service>.<tenant>.<baseDomain>`.
pub fn host(service: BusinessService, tenant_name: &str, spec: &TenantSpec, config: &Config) -> String {
    match spec.branding.as_ref().and_then(|b| b.custom_domain.as_deref()) {
        Some(domain) => format!("{}.{domain}", service.as_str()),
        None => format!("{}.{tenant_name}.{}", service.as_str(), config.base_domain),
    }
}

pub fn service_workloads(owner: &Owner, spec: &TenantSpec, config: &Config) -> Vec<ServiceWorkload> {
    spec.services.iter().map(|s| workload(owner, *s, spec, config)).collect()
}

fn workload(owner: &Owner, service: BusinessService, spec: &TenantSpec, config: &Config) -> ServiceWorkload {
    let name = service.as_str();
    let mut labels = owner.labels(COMPONENT);
    labels.insert("app.kubernetes.io/name".into(), name.into());
    let selector = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), name.to_string()),
        (LABEL_COMPONENT.to_string(), COMPONENT.to_string()),
    ]);
    let meta = || ObjectMeta { labels: Some(labels.clone()), ..owner.meta(name, COMPONENT, true) };
    let host = host(service, &owner.name, spec, config);
    let branding = spec.branding.clone().unwrap_or_default();
    let env = [
        ("BIZOSAAS_TENANT", Some(owner.name.clone())),
        ("BIZOSAAS_SERVICE", Some(name.to_string())),
        ("BIZOSAAS_PUBLIC_URL", Some(format!("https://{host}"))),
        ("BRANDING_DISPLAY_NAME", Some(branding.display_name.unwrap_or_else(|| owner.display_name.clone()))),
        ("BRANDING_LOGO_URL", branding.logo_url),
        ("BRANDING_PRIMARY_COLOR", branding.primary_color),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|value| EnvVar { name: k.into(), value: Some(value), value_from: None }))
    .chain(database_env(owner, spec.secrets.backend, config))
    .collect();
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction { path: Some(path.into()), port: IntOrString::Int(PORT), ..Default::default() }),
        period_seconds: Some(10),
        ..Default::default()
    };
    let container = Container {
        name: name.into(),
        image: Some(format!("{}/{name}:{}", config.service_image_prefix, config.service_image_tag)),
        ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: PORT, ..Default::default() }]),
        env: Some(env),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(probe("/healthz")),
        security_context: Some(restricted_container()),
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
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let service_obj = http_service(meta(), selector);
    let ingress = Ingress {
        metadata: meta(),
        spec: Some(IngressSpec {
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
    ServiceWorkload { service_name: service, deployment, service: service_obj, ingress }
}

/// How a service finds its database credentials: the `tenant-database` Secret, or (Vault
/// backend) the Vault role and KV path it logs in with.
fn database_env(owner: &Owner, backend: SecretsBackend, config: &Config) -> Vec<EnvVar> {
    let plain = |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), value_from: None };
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

/// A ClusterIP Service on port 80 in front of the pods' `http` port.
pub fn http_service(metadata: ObjectMeta, selector: BTreeMap<String, String>) -> Service {
    Service {
        metadata,
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod security context the restricted Pod Security Standard asks for.
pub fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

/// The container security context the restricted Pod Security Standard asks for.
pub fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Owner, fixtures};
    use super::*;

    fn env(d: &Deployment) -> BTreeMap<String, Option<String>> {
        let c = &d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
        c.env.as_ref().unwrap().iter().map(|e| (e.name.clone(), e.value.clone())).collect()
    }

    #[test]
    fn custom_domain_and_branding_reach_the_services() {
        let tenant = fixtures::tenant(fixtures::ACME);
        let w = service_workloads(&Owner::of(&tenant).unwrap(), &tenant.spec, &Config::default());
        assert_eq!(w.iter().map(|w| w.service_name.as_str()).collect::<Vec<_>>(), ["crm", "cms"]);
        let rule = &w[0].ingress.spec.as_ref().unwrap().rules.as_ref().unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("crm.app.acme.example"));
        let env = env(&w[0].deployment);
        assert_eq!(env["BRANDING_PRIMARY_COLOR"].as_deref(), Some("#0a7cff"));
        assert_eq!(env["BRANDING_DISPLAY_NAME"].as_deref(), Some("Acme Corp"));
        assert_eq!(env["DATABASE_URL"], None, "the URL comes from the Secret, never inline");
    }

    #[test]
    fn vault_backed_services_get_a_vault_role_instead_of_a_secret() {
        let mut tenant = fixtures::tenant(fixtures::ACME);
        tenant.spec.secrets.backend = SecretsBackend::Vault;
        let w = service_workloads(&Owner::of(&tenant).unwrap(), &tenant.spec, &Config::default());
        let env = env(&w[0].deployment);
        assert!(!env.contains_key("DATABASE_URL"));
        assert_eq!(env["BIZOSAAS_VAULT_ROLE"].as_deref(), Some("tenant-acme"));
        assert_eq!(env["BIZOSAAS_VAULT_DATABASE_PATH"].as_deref(), Some("secret/data/tenants/acme/database"));
    }

    #[test]
    fn without_custom_domain_hosts_live_under_the_base_domain() {
        let mut tenant = fixtures::tenant(fixtures::MINIMAL);
        tenant.spec.services = vec![BusinessService::Billing];
        let w = service_workloads(&Owner::of(&tenant).unwrap(), &tenant.spec, &Config::default());
        let rule = &w[0].ingress.spec.as_ref().unwrap().rules.as_ref().unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("billing.corner-shop.bizosaas.local"));
    }

    #[test]
    fn suspended_tenants_scale_services_to_zero_with_restricted_pods() {
        let mut tenant = fixtures::tenant(fixtures::ACME);
        tenant.spec.suspended = true;
        let w = service_workloads(&Owner::of(&tenant).unwrap(), &tenant.spec, &Config::default());
        let spec = w[0].deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(0));
        let sc = spec.template.spec.as_ref().unwrap().containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref().unwrap(), ["ALL"]);
    }
}
