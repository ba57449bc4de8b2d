//! The operator's connections to the harness's real PostgreSQL over TLS: `verify-full` with
//! the harness's CA is encrypted, a CA that did not sign the server's certificate is refused
//! with a message that says so, and `verify-full` checks the host name where `verify-ca` does
//! not.
//!
//! BIZOSAAS_TEST_DATABASE_URL is the admin URL and BIZOSAAS_TEST_DATABASE_CA the CA bundle
//! (`./dev test` sets both: `tests/harness/postgres.sh url` and `tests/harness/postgres.sh ca`).

use bizosaas_controllers::postgres::Admin;
use std::path::{Path, PathBuf};
use std::process::Command;

fn env(name: &str, part: &str) -> String {
    std::env::var(name).ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
        panic!(
            "{name} is not set: start PostgreSQL with `bash tests/harness/postgres.sh up` and set it to \
             `bash tests/harness/postgres.sh {part}` (or run `./dev test`)"
        )
    })
}

/// The admin URL with `sslmode` (and more parameters) added.
fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// The admin URL with its host replaced by `localhost`, a name the certificate does not hold.
fn by_name(url: &str) -> String {
    let (scheme_user, rest) = url.rsplit_once('@').expect("the admin URL has user@host");
    let port_and_path = &rest[rest.find(':').expect("the admin URL has a port")..];
    format!("{scheme_user}@localhost{port_and_path}")
}

/// A CA of its own, which signed nothing the server holds.
fn unrelated_ca(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let ca = dir.join("wrong-ca.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
        .args(["-days", "1", "-subj", "/CN=not the database CA", "-addext", "basicConstraints=critical,CA:TRUE"])
        .arg("-keyout")
        .arg(dir.join("wrong-ca.key"))
        .arg("-out")
        .arg(&ca)
        .output()
        .expect("openssl is needed to make a CA");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    ca
}

#[tokio::test]
async fn verify_full_is_encrypted_and_refuses_a_wrong_ca_or_name() {
    let url = env("BIZOSAAS_TEST_DATABASE_URL", "url");
    let ca = PathBuf::from(env("BIZOSAAS_TEST_DATABASE_CA", "ca"));
    let admin = |url: &str| Admin::new(url, None, "bizosaas_platform_tls").unwrap();

    let full = with_params(&url, "sslmode=verify-full");
    let verified = admin(&full).with_ca_file(&ca).unwrap();
    assert!(verified.encrypted().await.unwrap(), "verify-full connected without TLS");
    let rootcert = with_params(&url, &format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    assert!(admin(&rootcert).encrypted().await.unwrap(), "sslrootcert in the URL is not used");
    assert!(!admin(&url).encrypted().await.unwrap(), "a URL without sslmode is encrypted: the test proves nothing");

    let dir = std::env::temp_dir().join(format!("bizosaas-tls-test-{}", std::process::id()));
    let wrong = admin(&full).with_ca_file(&unrelated_ca(&dir)).unwrap();
    let err = wrong.ping().await.expect_err("a CA that signed nothing was accepted");
    let message = err.to_string();
    assert!(message.contains("invalid peer certificate") && message.contains("UnknownIssuer"), "{message}");
    assert!(message.contains("--database-ca-file"), "the error does not say what to check: {message}");
    std::fs::remove_dir_all(&dir).unwrap();

    let wrong_name = admin(&by_name(&full)).with_ca_file(&ca).unwrap();
    let err = wrong_name.ping().await.expect_err("verify-full accepted a name the certificate lacks");
    assert!(err.to_string().contains("not valid for name \"localhost\""), "{err}");
    let ca_only = admin(&with_params(&by_name(&url), "sslmode=verify-ca")).with_ca_file(&ca).unwrap();
    assert!(ca_only.encrypted().await.unwrap(), "verify-ca checked the name");
    let required = admin(&with_params(&by_name(&url), "sslmode=require"));
    assert!(required.encrypted().await.unwrap(), "require did not encrypt");
}
