//! The committed CRD YAML must match what the types generate. Regenerate with
//! `cargo run -p bizosaas-operator -- crd --out-dir manifests/crds --out-dir charts/bizosaas/files/crds`.

use bizosaas_crds::generate::{crds, file_name, to_yaml};
use std::path::Path;

fn check_dir(dir: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut expected_files: Vec<String> = Vec::new();
    for crd in crds() {
        let name = file_name(&crd);
        let path = root.join(&name);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{dir}/{name} is missing ({e}); regenerate the CRDs"));
        assert!(
            committed == to_yaml(&crd),
            "{dir}/{name} differs from the types; regenerate with \
             `cargo run -p bizosaas-operator -- crd --out-dir manifests/crds --out-dir charts/bizosaas/files/crds`"
        );
        expected_files.push(name);
    }
    let committed = std::fs::read_to_string(root.join("kustomization.yaml")).unwrap_or_default();
    assert_eq!(committed, bizosaas_crds::generate::kustomization(), "{dir}/kustomization.yaml is stale");
    let mut present: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n.contains(".bizosaas.io"))
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(present, expected_files, "{dir} holds stale CRD files");
}

#[test]
fn manifests_crds_match_the_types() {
    check_dir("manifests/crds");
}

#[test]
fn chart_crds_match_the_types() {
    check_dir("charts/bizosaas/files/crds");
}
