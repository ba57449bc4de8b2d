//! Egress to named endpoints: where a workload connects (an Integration's URL, the tenant
//! database's `host:port`), what that resolves to, and the NetworkPolicy rules that allow it.
//!
//! NetworkPolicies match addresses after kube-proxy's DNAT, so a host is allowed by what the
//! packets finally carry: an IP literal as is, a Service by its endpoints' addresses and target
//! ports (never its ClusterIP), any other name by its DNS answers. The resolving talks to the
//! API server and DNS ([`resolve`]); everything here is pure.

pub mod dial;
pub mod resolve;

use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Cluster domain suffix of Service names, after `.svc`.
const CLUSTER_DOMAIN: &str = "cluster.local";
/// The AWS instance metadata service on IPv6; every other metadata service listens on a
/// link-local address.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// A host and TCP port a workload connects to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

/// An address that is not a usable `scheme://host[:port]` or `host:port`.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("{0:?} is not a URL with a host")]
    NoHost(String),
    #[error("{0:?} names no port and its scheme has no default one")]
    NoPort(String),
    #[error("{0:?} has an invalid port")]
    InvalidPort(String),
}

/// How a host is turned into addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKind<'a> {
    /// An IP literal: used as is.
    Ip(IpAddr),
    /// `<name>.<namespace>.svc[.cluster.local]`: the Service's endpoints in the API.
    Service { namespace: &'a str, name: &'a str },
    /// Any other name: its DNS answers.
    Dns(&'a str),
}

impl Target {
    /// The host and port of a URL; without a port, the scheme's (http 80, https 443,
    /// smtp 25, smtps 465).
    pub fn from_url(url: &str) -> Result<Self, TargetError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| TargetError::NoHost(url.to_string()))?;
        let host = match parsed.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']')) {
            Some(host) if !host.is_empty() => host.to_string(),
            _ => return Err(TargetError::NoHost(url.to_string())),
        };
        let port = parsed
            .port_or_known_default()
            .or(match parsed.scheme() {
                "smtp" => Some(25),
                "smtps" => Some(465),
                _ => None,
            })
            .ok_or_else(|| TargetError::NoPort(url.to_string()))?;
        Ok(Self { host, port })
    }

    /// `host:port` (a bracketed IPv6 literal is accepted), or `host` with `default_port`.
    pub fn from_host_port(address: &str, default_port: u16) -> Result<Self, TargetError> {
        let (host, port) = match address.rsplit_once(':') {
            _ if address.parse::<IpAddr>().is_ok() => (address, default_port),
            Some((host, port)) if !host.ends_with(':') && !port.ends_with(']') => {
                (host, port.parse().map_err(|_| TargetError::InvalidPort(address.to_string()))?)
            }
            _ => (address, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(TargetError::NoHost(address.to_string()));
        }
        Ok(Self { host: host.to_string(), port })
    }

    /// How this host is resolved.
    pub fn kind(&self) -> HostKind<'_> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return HostKind::Ip(ip);
        }
        let host = self.host.trim_end_matches('.');
        let in_cluster = host.strip_suffix(CLUSTER_DOMAIN).and_then(|h| h.strip_suffix('.')).unwrap_or(host);
        if let Some(service) = in_cluster.strip_suffix(".svc") {
            // `<pod>.<service>.<namespace>.svc` names one endpoint of the Service; the whole
            // Service is allowed.
            let mut labels = service.rsplit('.');
            if let (Some(namespace), Some(name)) = (labels.next(), labels.next())
                && !namespace.is_empty()
                && !name.is_empty()
            {
                return HostKind::Service { namespace, name };
            }
        }
        HostKind::Dns(host)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// One endpoint after the dereference step: the input of the policy builders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedEndpoint {
    /// Who uses it, for conditions: `Integration llm`, `the tenant database`.
    pub name: String,
    /// Addresses with the TCP port the traffic arrives on (a Service's target port).
    pub sockets: BTreeSet<SocketAddr>,
}

/// An address a policy must not allow, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub name: String,
    pub address: IpAddr,
    pub reason: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves to {}, which is {}", self.name, self.address, self.reason)
    }
}

/// Why an address is never allowed, if it is not. Link-local covers 169.254.169.254, where
/// cloud providers serve instance metadata and credentials; unspecified, broadcast and
/// multicast addresses are no endpoint at all.
pub fn refusal(address: IpAddr) -> Option<&'static str> {
    let address = address.to_canonical();
    match address {
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local (instance metadata)"),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() => {
            Some("not a unicast address")
        }
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("link-local (instance metadata)"),
        IpAddr::V6(v6) if v6 == AWS_METADATA_V6 => Some("the instance metadata service"),
        IpAddr::V6(v6) if v6.is_unspecified() || v6.is_multicast() => Some("not a unicast address"),
        _ => None,
    }
}

/// The sockets a policy may allow, grouped by port, and those it refuses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    pub by_port: BTreeMap<u16, BTreeSet<IpAddr>>,
    pub refused: Vec<Refused>,
}

impl Admitted {
    pub fn is_empty(&self) -> bool {
        self.by_port.is_empty()
    }
}

/// Sorts the endpoints' sockets into allowed and [`refusal`]-refused ones. Sorted sets keep
/// the built policy identical across reconciles that resolve the same addresses.
pub fn admit(endpoints: &[ResolvedEndpoint]) -> Admitted {
    let mut admitted = Admitted::default();
    for endpoint in endpoints {
        for socket in &endpoint.sockets {
            // An IPv4-mapped IPv6 answer is the IPv4 address on the wire.
            let address = socket.ip().to_canonical();
            match refusal(address) {
                Some(reason) => admitted.refused.push(Refused { name: endpoint.name.clone(), address, reason }),
                None => {
                    admitted.by_port.entry(socket.port()).or_default().insert(address);
                }
            }
        }
    }
    admitted
}

/// One egress rule per port, to `/32` (IPv4) or `/128` (IPv6) blocks of its addresses.
pub fn egress_rules(admitted: &Admitted) -> Vec<NetworkPolicyEgressRule> {
    admitted
        .by_port
        .iter()
        .map(|(port, addresses)| NetworkPolicyEgressRule {
            to: Some(
                addresses
                    .iter()
                    .map(|ip| NetworkPolicyPeer {
                        ip_block: Some(IPBlock { cidr: host_cidr(*ip), except: None }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![NetworkPolicyPort {
                protocol: Some("TCP".into()),
                port: Some(IntOrString::Int((*port).into())),
                end_port: None,
            }]),
        })
        .collect()
}

/// The single-address CIDR of `ip`.
pub fn host_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn endpoint(name: &str, sockets: &[&str]) -> ResolvedEndpoint {
        ResolvedEndpoint { name: name.into(), sockets: sockets.iter().map(|s| s.parse().unwrap()).collect() }
    }

    #[test]
    fn ports_come_from_the_url_or_the_scheme() {
        let t = |url: &str| Target::from_url(url).unwrap();
        assert_eq!(t("https://openrouter.ai/api/v1"), Target { host: "openrouter.ai".into(), port: 443 });
        assert_eq!(t("http://10.1.2.3:8000/v1"), Target { host: "10.1.2.3".into(), port: 8000 });
        assert_eq!(
            t("http://wagtail.tenant-acme.svc/api"),
            Target { host: "wagtail.tenant-acme.svc".into(), port: 80 }
        );
        assert_eq!(t("https://gw.example:8443").port, 8443);
        assert_eq!(t("smtp://smtp.sendgrid.net:587").port, 587);
        assert_eq!(t("smtp://mail.example").port, 25);
        assert_eq!(t("smtps://mail.example").port, 465);
        assert_eq!(t("http://[fd00::5]:8080/"), Target { host: "fd00::5".into(), port: 8080 });
        assert!(matches!(Target::from_url("not a url"), Err(TargetError::NoHost(_))));
        assert!(matches!(Target::from_url("gopher://x.example"), Err(TargetError::NoPort(_))));
    }

    #[test]
    fn host_ports_take_a_default_port() {
        let t = |s: &str| Target::from_host_port(s, 5432).unwrap();
        assert_eq!(t("db.internal:6543"), Target { host: "db.internal".into(), port: 6543 });
        assert_eq!(t("10.0.0.7"), Target { host: "10.0.0.7".into(), port: 5432 });
        assert_eq!(t("[fd00::7]:5433"), Target { host: "fd00::7".into(), port: 5433 });
        assert_eq!(t("[fd00::7]"), Target { host: "fd00::7".into(), port: 5432 });
        assert_eq!(t("fd00::7"), Target { host: "fd00::7".into(), port: 5432 });
        assert!(Target::from_host_port("db:x", 5432).is_err());
    }

    #[test]
    fn hosts_are_ip_literals_services_or_dns_names() {
        let ip = Target { host: "10.1.2.3".into(), port: 80 };
        assert_eq!(ip.kind(), HostKind::Ip("10.1.2.3".parse().unwrap()));
        let v6 = Target { host: "fd00::1".into(), port: 80 };
        assert_eq!(v6.kind(), HostKind::Ip("fd00::1".parse().unwrap()));
        let wagtail = Target { host: "wagtail.tenant-acme.svc".into(), port: 80 };
        assert_eq!(wagtail.kind(), HostKind::Service { namespace: "tenant-acme", name: "wagtail" });
        let full = Target { host: "wagtail.bizosaas-system.svc.cluster.local.".into(), port: 80 };
        assert_eq!(full.kind(), HostKind::Service { namespace: "bizosaas-system", name: "wagtail" });
        let pod = Target { host: "pg-0.pg.db.svc.cluster.local".into(), port: 5432 };
        assert_eq!(pod.kind(), HostKind::Service { namespace: "db", name: "pg" });
        let bare = Target { host: "ns.svc".into(), port: 80 };
        assert_eq!(bare.kind(), HostKind::Dns("ns.svc"));
        let other = Target { host: "api.openai.com".into(), port: 443 };
        assert_eq!(other.kind(), HostKind::Dns("api.openai.com"));
    }

    #[test]
    fn link_local_and_metadata_addresses_are_refused() {
        for refused in
            ["169.254.169.254", "169.254.1.1", "fe80::1", "::ffff:169.254.169.254", "fd00:ec2::254", "0.0.0.0"]
        {
            assert!(refusal(refused.parse().unwrap()).is_some(), "{refused} allowed");
        }
        for allowed in ["10.1.2.3", "127.0.0.1", "104.18.2.3", "fd00::5", "2606:4700::1"] {
            assert_eq!(refusal(allowed.parse().unwrap()), None, "{allowed} refused");
        }
    }

    #[test]
    fn admitted_sockets_group_by_port_in_a_stable_order() {
        let admitted = admit(&[
            endpoint("Integration llm", &["10.0.0.9:8000", "[::ffff:10.0.0.2]:8000"]),
            endpoint("Integration cms", &["10.0.0.2:8000", "[fd00::5]:443", "169.254.169.254:80"]),
        ]);
        assert_eq!(admitted.refused.len(), 1);
        assert_eq!(
            admitted.refused[0].to_string(),
            "Integration cms resolves to 169.254.169.254, which is link-local (instance metadata)"
        );
        let rules = egress_rules(&admitted);
        assert_eq!(rules.len(), 2);
        let cidrs = |i: usize| -> Vec<String> {
            rules[i].to.as_ref().unwrap().iter().map(|p| p.ip_block.as_ref().unwrap().cidr.clone()).collect()
        };
        assert_eq!(rules[0].ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(443)));
        assert_eq!(cidrs(0), ["fd00::5/128"]);
        assert_eq!(rules[1].ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(8000)));
        assert_eq!(cidrs(1), ["10.0.0.2/32", "10.0.0.9/32"]);
    }
}
