//! The objects that run a crew: the ConfigMap with the rendered crew, a Deployment of the
//! `bizosaas-agent` runtime, its Service, and a PodDisruptionBudget with more than one replica;
//! and, once per tenant namespace, the ClusterRoleBinding that lets the runtime review its
//! callers' tokens.

use crate::tenant::build::{
    DATABASE_SECRET, LABEL_COMPONENT, LABEL_DATABASE_CLIENT, WORKLOAD_SERVICE_ACCOUNT, http_service,
    restricted_container, restricted_pod, tmp_mount, tmp_volume,
};
use bizosaas_crds::crew_config::{API_PLATFORM_ENV, CREW_FILE, CrewConfig, credential_env};
use bizosaas_crds::{AgentCrew, LABEL_MANAGED_BY, MANAGED_BY};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SecretKeySelector, SecurityContext, Service, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Port of the runtime's run API, probes and metrics.
pub const PORT: i32 = 8080;
/// Pod annotation whose change rolls the Deployment.
pub const CONFIG_HASH: &str = "bizosaas.io/config-hash";
const CONFIG_DIR: &str = "/etc/bizosaas";
const LABEL_CREW: &str = "bizosaas.io/crew";

/// Name of every object of a crew: `crew-<name>`.
pub fn object_name(crew: &str) -> String {
    format!("crew-{crew}")
}

/// The objects of one crew.
#[derive(Clone, Debug)]
pub struct CrewObjects {
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    pub pdb: Option<PodDisruptionBudget>,
    pub config_hash: String,
}

/// Points the runtime's traces at an OTLP/HTTP endpoint (the operator's
/// `BIZOSAAS_CREW_OTLP_ENDPOINT`): `OTEL_EXPORTER_OTLP_ENDPOINT`, and resource attributes
/// naming the crew, so that traces tell the crews apart. Without an endpoint the runtime gets
/// neither and exports nothing.
pub fn with_traces(objects: &mut CrewObjects, crew: &AgentCrew, endpoint: Option<&str>) {
    let Some(endpoint) = endpoint.map(str::trim).filter(|e| !e.is_empty()) else { return };
    let attributes = format!(
        "k8s.namespace.name={},k8s.deployment.name={},bizosaas.crew.name={}",
        crew.namespace().unwrap_or_default(),
        object_name(&crew.name_any()),
        crew.name_any()
    );
    let pod = objects.deployment.spec.as_mut().and_then(|s| s.template.spec.as_mut());
    for container in pod.into_iter().flat_map(|p| p.containers.iter_mut()) {
        let env = container.env.get_or_insert_with(Vec::new);
        env.retain(|e| e.name != "OTEL_EXPORTER_OTLP_ENDPOINT" && e.name != "OTEL_RESOURCE_ATTRIBUTES");
        env.push(EnvVar { name: "OTEL_EXPORTER_OTLP_ENDPOINT".into(), value: Some(endpoint.into()), value_from: None });
        env.push(EnvVar { name: "OTEL_RESOURCE_ATTRIBUTES".into(), value: Some(attributes.clone()), value_from: None });
    }
}

/// Labels on every object of a crew.
pub fn labels(crew: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_COMPONENT.to_string(), "agent".to_string()),
        (LABEL_CREW.to_string(), crew.to_string()),
        ("app.kubernetes.io/name".to_string(), "bizosaas-agent".to_string()),
        ("app.kubernetes.io/instance".to_string(), object_name(crew)),
    ])
}

/// Labels that select a crew's pods: the Deployment's, Service's and egress policy's selector.
pub fn selector(crew: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_CREW.to_string(), crew.to_string()), (LABEL_COMPONENT.to_string(), "agent".to_string())])
}

/// Hash of the rendered crew and the credentials it uses: a change of either rolls the pods.
pub fn config_hash(crew_json: &str, credential_hashes: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(crew_json.as_bytes());
    for (name, hash) in credential_hashes {
        hasher.update([0]);
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(hash.as_bytes());
    }
    hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// ClusterRole (shipped with the chart) holding only `create` on `tokenreviews`.
pub const TOKEN_REVIEWER_ROLE: &str = "bizosaas-agent-token-reviewer";

/// Name of the binding of a namespace's `tenant-workload` to [`TOKEN_REVIEWER_ROLE`].
pub fn token_review_binding_name(namespace: &str) -> String {
    format!("{TOKEN_REVIEWER_ROLE}-{namespace}")
}

/// Lets the crews of `namespace` (ServiceAccount `tenant-workload`) create TokenReviews, and
/// nothing else: reviewing a token tells only who its holder is, which the holder can already
/// ask the API server. TokenReviews are cluster-scoped, so this is a ClusterRoleBinding; it is
/// owned by the Namespace and goes with it.
pub fn token_review_binding(namespace: &Namespace) -> ClusterRoleBinding {
    let name = namespace.name_any();
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(token_review_binding_name(&name)),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                (LABEL_COMPONENT.to_string(), "agent".to_string()),
            ])),
            // Not blocking the Namespace's deletion: that would need `update` on
            // `namespaces/finalizers`, which the operator does not hold.
            owner_references: namespace.controller_owner_ref(&()).map(|mut r| {
                r.controller = Some(false);
                r.block_owner_deletion = None;
                vec![r]
            }),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: TOKEN_REVIEWER_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            api_group: None,
            kind: "ServiceAccount".into(),
            name: WORKLOAD_SERVICE_ACCOUNT.into(),
            namespace: Some(name),
        }]),
    }
}

/// Builds the objects. `credential_hashes` are the content hashes of the Integrations used;
/// `platform` are the platform's ServiceAccounts (`namespace/name`: the operator's, the
/// gateway's), which the runtime admits on its run API.
pub fn objects(
    crew: &AgentCrew,
    config: &CrewConfig,
    credential_hashes: &BTreeMap<String, String>,
    image: &str,
    platform: &[String],
) -> CrewObjects {
    let name = crew.name_any();
    let object = object_name(&name);
    let meta = || ObjectMeta {
        name: Some(object.clone()),
        namespace: crew.namespace(),
        labels: Some(labels(&name)),
        owner_references: crew.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    };
    let crew_json = serde_json::to_string_pretty(config).expect("the crew config serializes");
    let hash = config_hash(&crew_json, credential_hashes);

    let config_map = ConfigMap {
        metadata: meta(),
        data: Some(BTreeMap::from([(CREW_FILE.to_string(), crew_json)])),
        ..Default::default()
    };

    let secret_env = |var: String, secret: String, key: &str, optional: bool| EnvVar {
        name: var,
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key: key.into(),
                optional: optional.then_some(true),
            }),
            ..Default::default()
        }),
    };
    let mut credentials: Vec<String> = std::iter::once(&config.model)
        .chain(config.manager.as_ref())
        .filter(|m| !m.api_key_env.is_empty())
        .map(|m| m.api_key_env.clone())
        .chain(config.integrations.iter().map(|i| i.credential_env.clone()))
        .collect();
    credentials.sort();
    credentials.dedup();
    let mut env: Vec<EnvVar> = credential_hashes
        .keys()
        .filter(|integration| credentials.contains(&credential_env(integration)))
        .map(|integration| {
            secret_env(credential_env(integration), format!("integration-{integration}"), "credential", false)
        })
        .collect();
    // The tenant database keeps the crew's runs (found on any replica, after a restart) and,
    // with memory on, its memories. Optional: a Vault-backed tenant has no such Secret.
    env.push(secret_env("DATABASE_URL".into(), DATABASE_SECRET.into(), "url", true));
    env.push(EnvVar { name: "RUST_LOG".into(), value: Some("info".into()), value_from: None });
    if !platform.is_empty() {
        env.push(EnvVar { name: API_PLATFORM_ENV.into(), value: Some(platform.join(",")), value_from: None });
    }

    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction { path: Some(path.into()), port: IntOrString::Int(PORT), ..Default::default() }),
        period_seconds: Some(10),
        ..Default::default()
    };
    let quantity = |cpu: &str, memory: &str| {
        BTreeMap::from([("cpu".to_string(), Quantity(cpu.into())), ("memory".to_string(), Quantity(memory.into()))])
    };
    let resources = crew.spec.resources.clone().unwrap_or_else(|| ResourceRequirements {
        requests: Some(quantity("100m", "64Mi")),
        limits: Some(quantity("500m", "256Mi")),
        ..Default::default()
    });
    let container = Container {
        name: "agent".into(),
        image: Some(image.into()),
        args: Some(vec![
            "serve".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CREW_FILE}"),
            "--listen".into(),
            format!("0.0.0.0:{PORT}"),
        ]),
        ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: PORT, ..Default::default() }]),
        env: Some(env),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(probe("/healthz")),
        resources: Some(resources),
        security_context: Some(SecurityContext { run_as_user: Some(65532), ..restricted_container() }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "crew".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            tmp_mount(),
        ]),
        ..Default::default()
    };
    let mut pod_labels = labels(&name);
    pod_labels.extend(selector(&name));
    // The runtime reaches the tenant database; the tenant's `allow-database` policy selects this.
    pod_labels.insert(LABEL_DATABASE_CLIENT.to_string(), "true".to_string());
    let deployment = Deployment {
        metadata: meta(),
        spec: Some(DeploymentSpec {
            replicas: Some(crew.spec.replicas),
            selector: LabelSelector { match_labels: Some(selector(&name)), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(CONFIG_HASH.to_string(), hash.clone())])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(WORKLOAD_SERVICE_ACCOUNT.into()),
                    // The runtime reviews its callers' tokens with the API server as this
                    // ServiceAccount (which may create TokenReviews and nothing cluster-wide).
                    automount_service_account_token: Some(true),
                    security_context: Some(restricted_pod()),
                    containers: vec![container],
                    volumes: Some(vec![
                        Volume {
                            name: "crew".into(),
                            config_map: Some(ConfigMapVolumeSource { name: object.clone(), ..Default::default() }),
                            ..Default::default()
                        },
                        tmp_volume(),
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let service = http_service(meta(), selector(&name));
    let pdb = (crew.spec.replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta(),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector(&name)), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    CrewObjects { config_map, deployment, service, pdb, config_hash: hash }
}

/// The objects of a crew whose tenant is suspended: no runtime pods (the tenant's pod quota is
/// zero anyway) and so no disruption budget; config and Service stay for the resume.
pub fn scale_to_zero(objects: &mut CrewObjects) {
    if let Some(spec) = objects.deployment.spec.as_mut() {
        spec.replicas = Some(0);
    }
    objects.pdb = None;
}

/// In-cluster address of a crew's run API.
pub fn endpoint(crew: &AgentCrew) -> String {
    format!("http://{}.{}.svc:80", object_name(&crew.name_any()), crew.namespace().unwrap_or_default())
}

/// Label selector of a crew's objects.
pub fn crew_selector(crew: &AgentCrew) -> String {
    format!("{LABEL_CREW}={}", crew.name_any())
}

#[cfg(test)]
mod tests {
    use super::super::render::crew_config;
    use super::super::render::tests::{crew, integrations};
    use super::*;

    #[test]
    fn a_suspended_tenant_s_crew_runs_no_pods() {
        let mut objects = build(3, "h1");
        assert!(objects.pdb.is_some());
        scale_to_zero(&mut objects);
        assert_eq!(objects.deployment.spec.as_ref().unwrap().replicas, Some(0));
        assert!(objects.pdb.is_none());
        assert_eq!(objects.config_hash, build(3, "h1").config_hash, "a resume does not roll the pods");
    }

    fn build(replicas: i32, hash: &str) -> CrewObjects {
        let mut crew = crew();
        crew.spec.replicas = replicas;
        let config = crew_config("growth-team", "tenant-acme", "acme", &crew.spec, &integrations()).unwrap();
        let hashes =
            BTreeMap::from([("openrouter".to_string(), hash.to_string()), ("wagtail".to_string(), "w1".to_string())]);
        objects(
            &crew,
            &config,
            &hashes,
            "bizosaas/bizosaas-agent:0.1.0",
            &["bizosaas-system/bizosaas-operator".into(), "bizosaas-system/bizosaas-gateway".into()],
        )
    }

    #[test]
    fn crews_export_traces_only_to_the_configured_endpoint() {
        let env_of = |o: &CrewObjects| -> BTreeMap<String, Option<String>> {
            let pod = o.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            pod.containers[0].env.as_ref().unwrap().iter().map(|e| (e.name.clone(), e.value.clone())).collect()
        };
        let mut o = build(1, "h1");
        let before = env_of(&o);
        for none in [None, Some(""), Some("  ")] {
            with_traces(&mut o, &crew(), none);
            assert_eq!(env_of(&o), before, "no endpoint, no OTEL_ variables");
        }
        assert!(!before.keys().any(|k| k.starts_with("OTEL_")));
        let mut c = crew();
        c.metadata.namespace = Some("tenant-acme".into());
        with_traces(&mut o, &c, Some("http://otel-collector.observability:4318"));
        with_traces(&mut o, &c, Some("http://otel-collector.observability:4318"));
        let env = env_of(&o);
        assert_eq!(env["OTEL_EXPORTER_OTLP_ENDPOINT"].as_deref(), Some("http://otel-collector.observability:4318"));
        let attributes = env["OTEL_RESOURCE_ATTRIBUTES"].as_deref().unwrap();
        assert!(attributes.contains("k8s.namespace.name=tenant-acme"), "{attributes}");
        assert!(attributes.contains(&format!("bizosaas.crew.name={}", c.name_any())), "{attributes}");
        assert_eq!(env.len(), before.len() + 2, "set once, whatever the number of reconciles");
    }

    #[test]
    fn the_runtime_runs_restricted_with_its_config_and_credentials() {
        let o = build(1, "h1");
        let pod = o.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(
            (sc.run_as_non_root, sc.read_only_root_filesystem, sc.allow_privilege_escalation),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref().unwrap(), ["ALL"]);
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
        let env: BTreeMap<_, _> = c.env.as_ref().unwrap().iter().map(|e| (e.name.clone(), e.clone())).collect();
        let key = env["BIZOSAAS_INTEGRATION_OPENROUTER"].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((key.name.as_str(), key.key.as_str()), ("integration-openrouter", "credential"));
        assert!(env.contains_key("BIZOSAAS_INTEGRATION_WAGTAIL"));
        assert!(env.contains_key("DATABASE_URL"), "runs and memory live in the tenant database");
        assert!(o.config_map.data.as_ref().unwrap()[CREW_FILE].contains("Senior SEO strategist"));
        assert_eq!(pod.service_account_name.as_deref(), Some("tenant-workload"));
        assert_eq!(pod.automount_service_account_token, Some(true), "the runtime reviews tokens");
        assert_eq!(
            env[API_PLATFORM_ENV].value.as_deref(),
            Some("bizosaas-system/bizosaas-operator,bizosaas-system/bizosaas-gateway")
        );
        let labels = o.deployment.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_COMPONENT], "agent", "the agent egress NetworkPolicy selects this label");
        assert_eq!(labels[LABEL_DATABASE_CLIENT], "true", "the database egress policy selects the runtime");
    }

    #[test]
    fn a_crew_without_memory_still_keeps_its_runs_in_the_tenant_database() {
        let mut crew = crew();
        crew.spec.memory = None;
        let config = crew_config("growth-team", "tenant-acme", "acme", &crew.spec, &integrations()).unwrap();
        assert!(!config.memory);
        let o = objects(&crew, &config, &BTreeMap::new(), "ghcr.io/bizosaas/bizosaas-agent:0.1.0", &[]);
        let template = &o.deployment.spec.as_ref().unwrap().template;
        assert_eq!(template.metadata.as_ref().unwrap().labels.as_ref().unwrap()[LABEL_DATABASE_CLIENT], "true");
        let env = template.spec.as_ref().unwrap().containers[0].env.as_ref().unwrap();
        let url = env.iter().find(|e| e.name == "DATABASE_URL").unwrap();
        assert_eq!(url.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().optional, Some(true));
    }

    #[test]
    fn the_token_review_binding_grants_only_the_reviewer_role_to_the_namespaces_workload() {
        let namespace = Namespace {
            metadata: ObjectMeta { name: Some("tenant-acme".into()), uid: Some("u-1".into()), ..Default::default() },
            ..Default::default()
        };
        let b = token_review_binding(&namespace);
        assert_eq!(b.metadata.name.as_deref(), Some("bizosaas-agent-token-reviewer-tenant-acme"));
        assert_eq!((b.role_ref.kind.as_str(), b.role_ref.name.as_str()), ("ClusterRole", TOKEN_REVIEWER_ROLE));
        let subjects = b.subjects.unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(
            (subjects[0].kind.as_str(), subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
            ("ServiceAccount", "tenant-workload", Some("tenant-acme"))
        );
        let owner = &b.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Namespace", "u-1"));
        assert_eq!(owner.block_owner_deletion, None);
    }

    #[test]
    fn a_pdb_only_with_more_than_one_replica() {
        assert!(build(1, "h1").pdb.is_none());
        assert!(build(2, "h1").pdb.is_some());
    }

    #[test]
    fn rotated_credentials_change_the_config_hash() {
        let a = build(1, "h1");
        let b = build(1, "h2");
        assert_ne!(a.config_hash, b.config_hash);
        let annotation = |o: &CrewObjects| {
            o.deployment.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()
                [CONFIG_HASH]
                .clone()
        };
        assert_eq!(annotation(&a), a.config_hash);
        assert_eq!(build(1, "h1").config_hash, a.config_hash);
    }
}
