//! What every workload in a tenant namespace shares, business services and agent crews alike:
//! the restricted security contexts, the `/tmp` scratch volume and the HTTP Service in front.

use k8s_openapi::api::core::v1::{
    Capabilities, EmptyDirVolumeSource, PodSecurityContext, SeccompProfile, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Name of the scratch volume mounted at `/tmp`.
const TMP_VOLUME: &str = "tmp";

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

/// A small emptyDir for `/tmp`. Containers run with a read-only root filesystem, yet most
/// runtimes and libraries expect a writable temporary directory; the size limit keeps a
/// runaway writer from filling the node.
pub fn tmp_volume() -> Volume {
    Volume {
        name: TMP_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(Quantity("64Mi".into())), ..Default::default() }),
        ..Default::default()
    }
}

/// The mount of [`tmp_volume`] at `/tmp`.
pub fn tmp_mount() -> VolumeMount {
    VolumeMount { name: TMP_VOLUME.into(), mount_path: "/tmp".into(), ..Default::default() }
}
