//! The images `./dev images` builds (and `./dev test` imports into the node): minimal, non-root,
//! annotated, and the same bytes when built again from the same commit.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

/// `images.env` of the last image build: `OPERATOR_IMAGE`, `OPERATOR_DIGEST`, `OPERATOR_ARCHIVE`, ...
fn built() -> BTreeMap<String, String> {
    let cache = std::env::var_os("BIZOSAAS_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/bizosaas"));
    let path = cache.join("images/images.env");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("no image build at {}: run `./dev images --profile dev`", path.display()));
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// One member of a tar archive.
fn member(archive: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("tar").arg("-xOf").arg(archive).arg(name).output().unwrap();
    assert!(out.status.success(), "{name} is not in {}", archive.display());
    out.stdout
}

fn blob(archive: &Path, digest: &str) -> Vec<u8> {
    member(archive, &format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")))
}

#[test]
fn images_are_minimal_non_root_annotated_and_reproducible() {
    let env = built();
    for key in ["OPERATOR", "AGENT", "GATEWAY"] {
        let archive = PathBuf::from(&env[&format!("{key}_ARCHIVE")]);
        let digest = &env[&format!("{key}_DIGEST")];
        let binary = format!("bizosaas-{}", key.to_lowercase());
        let index: serde_json::Value = serde_json::from_slice(&member(&archive, "index.json")).unwrap();
        assert_eq!(index["manifests"][0]["digest"], digest.as_str(), "the archive holds the recorded digest");
        assert_eq!(
            index["manifests"][0]["annotations"]["io.containerd.image.name"],
            env[&format!("{key}_IMAGE")].as_str()
        );
        let manifest: serde_json::Value = serde_json::from_slice(&blob(&archive, digest)).unwrap();
        for annotation in ["version", "revision", "source"] {
            let value = &manifest["annotations"][format!("org.opencontainers.image.{annotation}")];
            assert!(value.as_str().is_some_and(|v| !v.is_empty()), "{binary}: no {annotation} annotation");
        }
        assert_eq!(manifest["annotations"]["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
        let config: serde_json::Value =
            serde_json::from_slice(&blob(&archive, manifest["config"]["digest"].as_str().unwrap())).unwrap();
        assert_eq!(config["config"]["User"], "65532:65532", "{binary} runs as root");
        assert_eq!(config["config"]["Entrypoint"][0], format!("/usr/local/bin/{binary}"));

        // One layer: the binary, its libraries and the CA bundle; no shell, no package manager.
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        let layer = std::env::temp_dir().join(format!("bizosaas-layer-{}-{binary}.tar.gz", std::process::id()));
        std::fs::write(&layer, blob(&archive, layers[0]["digest"].as_str().unwrap())).unwrap();
        let list = Command::new("tar").arg("-tzf").arg(&layer).output().unwrap();
        std::fs::remove_file(&layer).unwrap();
        let files: Vec<String> =
            String::from_utf8(list.stdout).unwrap().lines().filter(|l| !l.ends_with('/')).map(String::from).collect();
        assert!(files.contains(&format!("usr/local/bin/{binary}")), "{files:?}");
        assert!(files.contains(&"etc/ssl/certs/ca-certificates.crt".to_string()), "{files:?}");
        for forbidden in ["bin/sh", "bin/bash", "usr/bin/apt", "usr/bin/dpkg", "bin/busybox"] {
            assert!(!files.iter().any(|f| f == forbidden), "{binary} ships {forbidden}");
        }
        assert!(
            files.iter().all(|f| f.starts_with("usr/local/bin/") || f.starts_with("etc/ssl/") || f.starts_with("lib")),
            "{binary} ships more than it needs: {files:?}"
        );
    }

    // Built again from the same commit: the same digests.
    let out = Command::new("bash").arg(repo().join("images/build.sh")).args(["--profile", "dev"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = built();
    for key in ["OPERATOR_DIGEST", "AGENT_DIGEST", "GATEWAY_DIGEST"] {
        assert_eq!(again[key], env[key], "{key} changed on a rebuild of the same commit");
    }
}
