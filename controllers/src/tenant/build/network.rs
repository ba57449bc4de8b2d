//! The tenant's NetworkPolicies: deny by default, then allow the same namespace, DNS, the
//! platform (in: to the ports tenant pods serve on; out: to its tenant-facing pods' port), the
//! ingress controller (to the business services' ports) and HTTPS to public addresses. `Strict` and
//! `Open` differ only in egress: `Strict` gives public HTTPS to agent pods (they call LLM
//! gateways), `Open` to every pod. With a database, `allow-database` lets the pods labelled
//! database clients reach PostgreSQL wherever it runs.

use super::{LABEL_COMPONENT, LABEL_DATABASE_CLIENT, Owner};
use crate::context::Config;
use crate::egress::{self, Refused, ResolvedEndpoint};
use bizosaas_crds::tenant::NetworkIsolation;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Label of the platform's pods that tenant workloads may call (none of the operator's).
pub const LABEL_TENANT_FACING: &str = "bizosaas.io/tenant-facing";

/// Every IPv4 range that is not the public internet (IANA special-purpose registry): "public
/// HTTPS" must not reach them.
const NON_PUBLIC: [&str; 15] = [
    "0.0.0.0/8",       // "this network"
    "10.0.0.0/8",      // private
    "100.64.0.0/10",   // carrier-grade NAT
    "127.0.0.0/8",     // loopback
    "169.254.0.0/16",  // link-local, where clouds serve instance metadata
    "172.16.0.0/12",   // private
    "192.0.0.0/24",    // IETF protocol assignments
    "192.0.2.0/24",    // documentation
    "192.88.99.0/24",  // 6to4 relay anycast
    "192.168.0.0/16",  // private
    "198.18.0.0/15",   // benchmarking
    "198.51.100.0/24", // documentation
    "203.0.113.0/24",  // documentation
    "224.0.0.0/4",     // multicast
    "240.0.0.0/4",     // reserved, and the broadcast address
];

/// The port the platform's tenant-facing services (the API gateway) serve tenants on.
pub const TENANT_FACING_PORT: i32 = 8080;

/// `service_ports`: the container ports of the tenant's business services. The platform may
/// reach those and the agent runtimes' API; the ingress controller only those. Without
/// business services there is nothing for the ingress controller to reach, and no policy.
pub fn network_policies(
    owner: &Owner,
    isolation: NetworkIsolation,
    service_ports: &[i32],
    config: &Config,
) -> Vec<NetworkPolicy> {
    let tcp = |ports: &[i32]| {
        let mut ports = ports.to_vec();
        ports.sort_unstable();
        ports.dedup();
        ports.into_iter().map(|p| port("TCP", p)).collect::<Vec<_>>()
    };
    let platform_ports = tcp(&[service_ports, &[crate::agent_crew::build::PORT]].concat());
    let all_pods = LabelSelector::default();
    let agents = selector(&[(LABEL_COMPONENT, "agent")]);
    let mut policies = vec![
        policy(owner, "default-deny", all_pods.clone(), None, None),
        policy(
            owner,
            "allow-same-namespace",
            all_pods.clone(),
            Some(vec![NetworkPolicyIngressRule { from: Some(vec![pods_here()]), ports: None }]),
            Some(vec![NetworkPolicyEgressRule { to: Some(vec![pods_here()]), ports: None }]),
        ),
        policy(
            owner,
            "allow-dns",
            all_pods.clone(),
            None,
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(namespace("kube-system")),
                    pod_selector: Some(selector(&[("k8s-app", "kube-dns")])),
                    ..Default::default()
                }]),
                ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
            }]),
        ),
        policy(
            owner,
            "allow-platform",
            all_pods.clone(),
            Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![namespace_peer(&config.platform_namespace)]),
                ports: Some(platform_ports),
            }]),
            // Out of the platform namespace, only what is there for tenants (pods labelled
            // `bizosaas.io/tenant-facing: "true"`): never the operator or anything else.
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(namespace(&config.platform_namespace)),
                    pod_selector: Some(selector(&[(LABEL_TENANT_FACING, "true")])),
                    ..Default::default()
                }]),
                ports: Some(vec![port("TCP", TENANT_FACING_PORT)]),
            }]),
        ),
    ];
    if !service_ports.is_empty() {
        policies.push(policy(
            owner,
            "allow-ingress-controller",
            all_pods.clone(),
            Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![namespace_peer(&config.ingress_namespace)]),
                ports: Some(tcp(service_ports)),
            }]),
            None,
        ));
    }
    if let Some(scraper) = &config.scrape_namespace {
        policies.push(policy(
            owner,
            "allow-metrics-scrape",
            agents.clone(),
            Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![namespace_peer(scraper)]),
                ports: Some(tcp(&[crate::agent_crew::build::PORT])),
            }]),
            None,
        ));
    }
    policies.push(policy(owner, "allow-agent-https-egress", agents, None, Some(vec![public_https()])));
    if isolation == NetworkIsolation::Open {
        policies.push(policy(owner, "allow-https-egress", all_pods, None, Some(vec![public_https()])));
    }
    policies
}

/// Name of the policy that lets database clients reach PostgreSQL.
pub const DATABASE_POLICY: &str = "allow-database";

/// `labels` with the [`LABEL_DATABASE_CLIENT`] label: for the pod templates of workloads that
/// get a database URL.
pub fn database_client(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.insert(LABEL_DATABASE_CLIENT.to_string(), "true".to_string());
    labels
}

/// `allow-database` from the resolved database endpoint, and the addresses it refused. `None`
/// when nothing can be allowed: there is no policy to write.
pub fn database_policy(owner: &Owner, database: &ResolvedEndpoint) -> (Option<NetworkPolicy>, Vec<Refused>) {
    let admitted = egress::admit(std::slice::from_ref(database));
    let policy = (!admitted.is_empty()).then(|| {
        let clients = selector(&[(LABEL_DATABASE_CLIENT, "true")]);
        policy(owner, DATABASE_POLICY, clients, None, Some(egress::egress_rules(&admitted)))
    });
    (policy, admitted.refused)
}

fn policy(
    owner: &Owner,
    name: &str,
    pod_selector: LabelSelector,
    ingress: Option<Vec<NetworkPolicyIngressRule>>,
    egress: Option<Vec<NetworkPolicyEgressRule>>,
) -> NetworkPolicy {
    let mut types = Vec::new();
    if ingress.is_some() || name == "default-deny" {
        types.push("Ingress".to_string());
    }
    if egress.is_some() || name == "default-deny" {
        types.push("Egress".to_string());
    }
    NetworkPolicy {
        metadata: owner.meta(name, "network", true),
        spec: Some(NetworkPolicySpec { pod_selector: Some(pod_selector), policy_types: Some(types), ingress, egress }),
    }
}

fn selector(labels: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()),
        ..Default::default()
    }
}

fn namespace(name: &str) -> LabelSelector {
    selector(&[("kubernetes.io/metadata.name", name)])
}

fn namespace_peer(name: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer { namespace_selector: Some(namespace(name)), ..Default::default() }
}

fn pods_here() -> NetworkPolicyPeer {
    NetworkPolicyPeer { pod_selector: Some(LabelSelector::default()), ..Default::default() }
}

fn port(protocol: &str, number: i32) -> NetworkPolicyPort {
    NetworkPolicyPort { protocol: Some(protocol.into()), port: Some(IntOrString::Int(number)), end_port: None }
}

fn public_https() -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: "0.0.0.0/0".into(),
                except: Some(NON_PUBLIC.iter().map(|s| s.to_string()).collect()),
            }),
            ..Default::default()
        }]),
        ports: Some(vec![port("TCP", 443)]),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Owner, fixtures};
    use super::*;

    fn names(policies: &[NetworkPolicy]) -> Vec<String> {
        policies.iter().filter_map(|p| p.metadata.name.clone()).collect()
    }

    #[test]
    fn strict_denies_by_default_and_allows_the_listed_peers() {
        let owner = Owner::of(&fixtures::tenant(fixtures::ACME)).unwrap();
        let policies = network_policies(&owner, NetworkIsolation::Strict, &[3000, 8080], &Config::default());
        assert_eq!(
            names(&policies),
            [
                "default-deny",
                "allow-same-namespace",
                "allow-dns",
                "allow-platform",
                "allow-ingress-controller",
                "allow-agent-https-egress"
            ]
        );
        let deny = policies[0].spec.as_ref().unwrap();
        assert_eq!(deny.policy_types.as_deref().unwrap(), ["Ingress", "Egress"]);
        // Egress into the platform namespace reaches its tenant-facing pods only.
        let platform = policies[3].spec.as_ref().unwrap();
        let peer = &platform.egress.as_ref().unwrap()[0].to.as_ref().unwrap()[0];
        let pods = peer.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
        assert_eq!(pods.get(LABEL_TENANT_FACING).map(String::as_str), Some("true"));
        assert!(peer.namespace_selector.is_some());
        assert!(deny.ingress.is_none() && deny.egress.is_none());
        let platform = policies[3].spec.as_ref().unwrap();
        let peer = &platform.ingress.as_ref().unwrap()[0].from.as_ref().unwrap()[0];
        let ns = peer.namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
        assert_eq!(ns["kubernetes.io/metadata.name"], "bizosaas-system");
        // In from the platform: the ports tenant pods serve on (services, agent API), nothing else.
        let ports = |rule: &NetworkPolicyIngressRule| rule.ports.clone().unwrap_or_default();
        assert_eq!(ports(&platform.ingress.as_ref().unwrap()[0]), [port("TCP", 3000), port("TCP", 8080)]);
        assert_eq!(platform.egress.as_ref().unwrap()[0].ports.as_deref().unwrap(), [port("TCP", TENANT_FACING_PORT)]);
        let controller = policies[4].spec.as_ref().unwrap();
        assert_eq!(ports(&controller.ingress.as_ref().unwrap()[0]), [port("TCP", 3000), port("TCP", 8080)]);
        let agent = policies[5].spec.as_ref().unwrap();
        assert_eq!(agent.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()[LABEL_COMPONENT], "agent");
        let block = agent.egress.as_ref().unwrap()[0].to.as_ref().unwrap()[0].ip_block.as_ref().unwrap();
        let except = block.except.as_ref().unwrap();
        for special in [
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "169.254.0.0/16",
            "192.0.0.0/24",
            "198.18.0.0/15",
            "224.0.0.0/4",
        ] {
            assert!(except.contains(&special.to_string()), "{special} counts as public");
        }
    }

    #[test]
    fn without_business_services_the_ingress_controller_reaches_nothing() {
        let owner = Owner::of(&fixtures::tenant(fixtures::ACME)).unwrap();
        let policies = network_policies(&owner, NetworkIsolation::Strict, &[], &Config::default());
        assert!(!names(&policies).contains(&"allow-ingress-controller".to_string()));
        let platform = policies.iter().find(|p| p.metadata.name.as_deref() == Some("allow-platform")).unwrap();
        let rule = &platform.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0];
        assert_eq!(rule.ports.as_deref().unwrap(), [port("TCP", crate::agent_crew::build::PORT)], "the agent API only");
    }

    #[test]
    fn the_scraping_namespace_reaches_the_runtimes_port_and_nothing_else() {
        let owner = Owner::of(&fixtures::tenant(fixtures::ACME)).unwrap();
        let plain = network_policies(&owner, NetworkIsolation::Strict, &[3000], &Config::default());
        assert!(!names(&plain).contains(&"allow-metrics-scrape".to_string()), "no scraper configured, no rule");
        let config = Config { scrape_namespace: Some("monitoring".into()), ..Config::default() };
        let policies = network_policies(&owner, NetworkIsolation::Strict, &[3000], &config);
        let scrape = policies.iter().find(|p| p.metadata.name.as_deref() == Some("allow-metrics-scrape")).unwrap();
        let spec = scrape.spec.as_ref().unwrap();
        // The runtimes' pods only, not the business services.
        assert_eq!(spec.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()[LABEL_COMPONENT], "agent");
        assert!(spec.egress.is_none());
        let [rule] = spec.ingress.as_deref().unwrap() else { panic!("one ingress rule") };
        assert_eq!(rule.ports.as_deref().unwrap(), [port("TCP", crate::agent_crew::build::PORT)]);
        let peer = &rule.from.as_ref().unwrap()[0];
        assert!(peer.pod_selector.is_none());
        let ns = peer.namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
        assert_eq!(ns["kubernetes.io/metadata.name"], "monitoring");
    }

    #[test]
    fn open_differs_only_by_https_egress_for_every_pod() {
        let owner = Owner::of(&fixtures::tenant(fixtures::ACME)).unwrap();
        let strict = network_policies(&owner, NetworkIsolation::Strict, &[3000, 8080], &Config::default());
        let open = network_policies(&owner, NetworkIsolation::Open, &[3000, 8080], &Config::default());
        assert_eq!(&open[..strict.len()], &strict[..]);
        assert_eq!(open.len(), strict.len() + 1);
        let extra = open.last().unwrap().spec.as_ref().unwrap();
        assert_eq!(extra.pod_selector, Some(LabelSelector::default()));
        assert!(extra.ingress.is_none());
        assert_eq!(extra.policy_types.as_deref().unwrap(), ["Egress"]);
    }

    fn database(sockets: &[&str]) -> ResolvedEndpoint {
        crate::egress::tests::endpoint("the tenant database", sockets)
    }

    #[test]
    fn database_clients_reach_the_database_host_and_port() {
        let owner = Owner::of(&fixtures::tenant(fixtures::ACME)).unwrap();
        let (policy, refused) = database_policy(&owner, &database(&["10.96.40.2:5432", "10.0.3.7:5432"]));
        assert!(refused.is_empty());
        let policy = policy.unwrap();
        assert_eq!(policy.metadata.name.as_deref(), Some("allow-database"));
        assert_eq!(policy.metadata.labels.as_ref().unwrap()[LABEL_COMPONENT], "network", "pruned with the others");
        let spec = policy.spec.as_ref().unwrap();
        assert_eq!(spec.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()[LABEL_DATABASE_CLIENT], "true");
        assert_eq!(spec.policy_types.as_deref().unwrap(), ["Egress"]);
        let rule = &spec.egress.as_ref().unwrap()[..];
        assert_eq!(rule.len(), 1);
        let cidrs: Vec<&str> =
            rule[0].to.as_ref().unwrap().iter().map(|p| p.ip_block.as_ref().unwrap().cidr.as_str()).collect();
        assert_eq!(cidrs, ["10.0.3.7/32", "10.96.40.2/32"]);
        assert_eq!(rule[0].ports.as_ref().unwrap(), &[port("TCP", 5432)]);
    }

    #[test]
    fn a_database_on_a_link_local_address_gets_no_policy() {
        let owner = Owner::of(&fixtures::tenant(fixtures::ACME)).unwrap();
        let (policy, refused) = database_policy(&owner, &database(&["169.254.169.254:5432"]));
        assert!(policy.is_none());
        assert_eq!(refused.len(), 1);
    }

    #[test]
    fn the_database_policy_leaves_the_other_policies_unchanged() {
        let owner = Owner::of(&fixtures::tenant(fixtures::ACME)).unwrap();
        let (policy, _) = database_policy(&owner, &database(&["10.0.3.7:5432"]));
        let others = network_policies(&owner, NetworkIsolation::Strict, &[3000, 8080], &Config::default());
        let names = names(&others);
        assert!(!names.contains(&DATABASE_POLICY.to_string()), "only added where a database is configured");
        assert_eq!(names.len(), 6);
        assert!(names.contains(&"allow-ingress-controller".to_string()));
        let policy = policy.unwrap();
        let db_selector = policy.spec.as_ref().unwrap().pod_selector.as_ref().unwrap();
        for other in &others {
            assert_ne!(other.spec.as_ref().unwrap().pod_selector.as_ref(), Some(db_selector));
        }
    }
}
