//! The crew's egress NetworkPolicy `crew-<name>-egress`: the crew's pods may connect to the
//! endpoints of the Integrations the crew uses and, when the operator has one configured, to
//! the trace collector their runtime exports to. NetworkPolicies add up, so this one widens the
//! tenant's default deny for these pods by exactly those sockets; DNS, the platform and public
//! HTTPS stay with the tenant's own policies.

use super::build::{labels, object_name, selector};
use crate::egress::{self, Refused, ResolvedEndpoint};
use bizosaas_crds::AgentCrew;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};

/// Name of a crew's egress policy.
pub fn policy_name(crew: &str) -> String {
    format!("{}-egress", object_name(crew))
}

/// The policy, and the addresses it refused to allow.
#[derive(Clone, Debug)]
pub struct CrewEgress {
    pub policy: NetworkPolicy,
    /// Refused addresses of the Integrations' endpoints (and the API server's).
    pub refused: Vec<Refused>,
    /// Refused addresses of the trace collector: reported apart, since the crew runs without
    /// its traces.
    pub traces_refused: Vec<Refused>,
}

/// Builds the egress policy from the crew's resolved Integration endpoints and, when the
/// operator passes the runtimes an OTLP endpoint, the collector's resolved sockets (`traces`).
/// Link-local addresses (instance metadata) are refused whatever resolved to them, the
/// collector's exactly as an Integration's. With nothing to allow the policy still exists,
/// allowing nothing more than the tenant's policies do.
pub fn egress_policy(
    crew: &AgentCrew,
    endpoints: &[ResolvedEndpoint],
    traces: Option<&ResolvedEndpoint>,
) -> CrewEgress {
    let name = crew.name_any();
    let mut admitted = egress::admit(endpoints);
    let collector = egress::admit(&traces.into_iter().cloned().collect::<Vec<_>>());
    for (port, addresses) in collector.by_port {
        admitted.by_port.entry(port).or_default().extend(addresses);
    }
    let policy = NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(policy_name(&name)),
            namespace: crew.namespace(),
            labels: Some(labels(&name)),
            owner_references: crew.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector(&name)), ..Default::default() }),
            policy_types: Some(vec!["Egress".into()]),
            egress: Some(egress::egress_rules(&admitted)),
            ingress: None,
        }),
    };
    CrewEgress { policy, refused: admitted.refused, traces_refused: collector.refused }
}

#[cfg(test)]
mod tests {
    use super::super::build::objects;
    use super::super::render::crew_config;
    use super::super::render::tests::{crew, integrations};
    use super::*;
    use crate::egress::resolve::{ServiceKey, service_port_name, slice_sockets, tests::wagtail};
    use crate::egress::{Target, tests::endpoint};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use std::collections::BTreeMap;

    /// `(port, [cidr])` of each rule.
    fn rules(policy: &NetworkPolicy) -> Vec<(i32, Vec<String>)> {
        let spec = policy.spec.as_ref().unwrap();
        spec.egress
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| {
                let port = match r.ports.as_ref().unwrap()[..] {
                    [ref p] if p.protocol.as_deref() == Some("TCP") => p.port.clone(),
                    _ => panic!("one TCP port per rule"),
                };
                let Some(IntOrString::Int(port)) = port else { panic!("numeric port") };
                let cidrs = r.to.as_ref().unwrap().iter().map(|p| p.ip_block.as_ref().unwrap().cidr.clone()).collect();
                (port, cidrs)
            })
            .collect()
    }

    #[test]
    fn the_policy_selects_exactly_the_crews_pods_and_is_owned_like_its_other_children() {
        let crew = crew();
        let config = crew_config("growth-team", "tenant-acme", "acme", &crew.spec, &integrations()).unwrap();
        let objects = objects(&crew, &config, &BTreeMap::new(), "image", &[]);
        let policy = egress_policy(&crew, &[], None).policy;
        assert_eq!(policy.metadata.name.as_deref(), Some("crew-growth-team-egress"));
        assert_eq!(policy.metadata.namespace.as_deref(), Some("tenant-acme"));
        assert_eq!(policy.metadata.labels, objects.deployment.metadata.labels);
        assert_eq!(policy.metadata.owner_references, objects.deployment.metadata.owner_references);
        let spec = policy.spec.as_ref().unwrap();
        assert_eq!(spec.pod_selector.as_ref(), Some(&objects.deployment.spec.as_ref().unwrap().selector));
        assert_eq!(spec.policy_types.as_deref().unwrap(), ["Egress"]);
        assert!(spec.ingress.is_none());
        assert_eq!(spec.egress.as_deref(), Some(&[][..]), "nothing resolved: nothing more allowed");
    }

    #[test]
    fn each_integration_endpoint_becomes_its_addresses_and_port() {
        // An IP literal on a port of its own, a type's https default (DNS answers), and a
        // Service whose EndpointSlices carry the target ports.
        let gateway = Target::from_url("http://10.20.0.5:8000/v1").unwrap();
        let openrouter = Target::from_url("https://openrouter.ai/api/v1").unwrap();
        let cms = Target::from_url("http://wagtail.tenant-acme.svc:80/api/v2").unwrap();
        assert_eq!((gateway.port, openrouter.port, cms.port), (8000, 443, 80));
        let (service, slices) = wagtail();
        let key = ServiceKey::of(&cms).unwrap();
        let cms_sockets = slice_sockets(&slices, &service_port_name(&service, &key, cms.port).unwrap());
        let endpoints = [
            endpoint("Integration gateway", &["10.20.0.5:8000"]),
            endpoint("Integration openrouter", &["104.18.3.115:443", "104.18.2.115:443", "[2606:4700::6812:273]:443"]),
            ResolvedEndpoint { name: "Integration wagtail".into(), sockets: cms_sockets },
        ];
        let built = egress_policy(&crew(), &endpoints, None);
        assert!(built.refused.is_empty());
        assert_eq!(
            rules(&built.policy),
            [
                (443, vec!["104.18.2.115/32".into(), "104.18.3.115/32".into(), "2606:4700::6812:273/128".into()]),
                (8000, vec!["10.20.0.5/32".into(), "10.244.1.7/32".into(), "10.244.2.9/32".into()]),
                (8001, vec!["10.244.3.4/32".into()]),
            ]
        );
    }

    #[test]
    fn link_local_targets_are_refused_and_the_rest_still_allowed() {
        let endpoints = [
            endpoint("Integration metadata", &["169.254.169.254:80"]),
            endpoint("Integration sneaky", &["10.20.0.5:8000", "[fe80::1]:8000"]),
        ];
        let built = egress_policy(&crew(), &endpoints, None);
        assert_eq!(rules(&built.policy), [(8000, vec!["10.20.0.5/32".to_string()])]);
        let refused: Vec<String> = built.refused.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            refused,
            [
                "Integration metadata resolves to 169.254.169.254, which is link-local (instance metadata)",
                "Integration sneaky resolves to fe80::1, which is link-local (instance metadata)",
            ]
        );
    }

    #[test]
    fn the_same_answers_build_the_same_policy() {
        let a = egress_policy(&crew(), &[endpoint("Integration x", &["10.0.0.2:80", "10.0.0.1:80"])], None);
        let b = egress_policy(&crew(), &[endpoint("Integration x", &["10.0.0.1:80", "10.0.0.2:80"])], None);
        assert_eq!(a.policy, b.policy);
    }

    #[test]
    fn the_trace_collector_is_allowed_exactly_when_configured() {
        let integrations = [endpoint("Integration llm", &["10.20.0.5:8000"])];
        let without = egress_policy(&crew(), &integrations, None);
        assert_eq!(rules(&without.policy), [(8000, vec!["10.20.0.5/32".to_string()])]);
        assert!(without.traces_refused.is_empty());

        // Configured: one more rule, the collector's address on its port, and nothing else.
        let collector = endpoint("the trace collector 10.96.7.8:4318", &["10.96.7.8:4318"]);
        let with = egress_policy(&crew(), &integrations, Some(&collector));
        assert_eq!(
            rules(&with.policy),
            [(4318, vec!["10.96.7.8/32".to_string()]), (8000, vec!["10.20.0.5/32".to_string()])]
        );
        assert!(with.refused.is_empty() && with.traces_refused.is_empty());
        let mut only_integrations = with.policy.clone();
        only_integrations.spec.as_mut().unwrap().egress.as_mut().unwrap().remove(0);
        assert_eq!(only_integrations, without.policy, "the collector's rule is the only difference");

        // On a port an Integration uses too, the collector's address joins that port's rule.
        let shared = endpoint("the trace collector 10.20.0.9:8000", &["10.20.0.9:8000"]);
        let built = egress_policy(&crew(), &integrations, Some(&shared));
        assert_eq!(rules(&built.policy), [(8000, vec!["10.20.0.5/32".to_string(), "10.20.0.9/32".to_string()])]);
    }

    #[test]
    fn a_refused_trace_collector_is_reported_apart_and_not_allowed() {
        let integrations = [endpoint("Integration llm", &["10.20.0.5:8000"])];
        let metadata = endpoint("the trace collector 169.254.169.254:4318", &["169.254.169.254:4318"]);
        let built = egress_policy(&crew(), &integrations, Some(&metadata));
        assert_eq!(rules(&built.policy), [(8000, vec!["10.20.0.5/32".to_string()])]);
        assert_eq!(built.policy, egress_policy(&crew(), &integrations, None).policy);
        assert!(built.refused.is_empty(), "the Integrations' endpoints are all allowed");
        let refused: Vec<String> = built.traces_refused.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            refused,
            [
                "the trace collector 169.254.169.254:4318 resolves to 169.254.169.254, which is link-local (instance metadata)"
            ]
        );
    }
}
