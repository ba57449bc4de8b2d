//! Keeps the user documentation honest: every field of every kind's `spec`, as the CRD's
//! OpenAPI schema names it, is mentioned in code (a YAML example, a table cell in backticks)
//! on that kind's page under `docs/`. A field added to the types without documentation, or a
//! page that drops one, fails here with the full list of what is missing.

use bizosaas_crds::generate::crds;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use std::collections::BTreeSet;
use std::path::Path;

/// The page that documents each kind.
const PAGES: [(&str, &str); 5] = [
    ("Tenant", "docs/tenant.md"),
    ("AgentCrew", "docs/agentcrew.md"),
    ("Workflow", "docs/workflow.md"),
    ("WorkflowRun", "docs/workflow.md"),
    ("Integration", "docs/integration.md"),
];

/// Every field path below `spec`, e.g. `spec.database.isolation`, `spec.steps[].name`.
fn spec_paths(crd: &CustomResourceDefinition) -> Vec<String> {
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap_or_else(|| panic!("{} has no OpenAPI schema", crd.spec.names.kind));
    let spec = schema
        .properties
        .as_ref()
        .and_then(|p| p.get("spec"))
        .unwrap_or_else(|| panic!("{} has no spec in its schema", crd.spec.names.kind));
    let mut paths = Vec::new();
    walk(spec, "spec", &mut paths);
    paths
}

fn walk(schema: &JSONSchemaProps, path: &str, paths: &mut Vec<String>) {
    for (name, property) in schema.properties.iter().flatten() {
        let child = format!("{path}.{name}");
        paths.push(child.clone());
        walk(property, &child, paths);
    }
    match &schema.items {
        Some(JSONSchemaPropsOrArray::Schema(items)) => walk(items, &format!("{path}[]"), paths),
        Some(JSONSchemaPropsOrArray::Schemas(all)) => all.iter().for_each(|s| walk(s, &format!("{path}[]"), paths)),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &schema.additional_properties {
        walk(values, &format!("{path}.*"), paths);
    }
    for alternative in [&schema.all_of, &schema.any_of, &schema.one_of].into_iter().flatten().flatten() {
        walk(alternative, path, paths);
    }
}

/// The last name of a path: `isolation` of `spec.database.isolation`.
fn leaf(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path).trim_end_matches("[]")
}

/// Every identifier written as code on a page: in fenced blocks and in inline code spans.
fn code_words(page: &str) -> BTreeSet<String> {
    let mut code = String::new();
    let mut fenced = false;
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            code.push_str(line);
            code.push('\n');
            continue;
        }
        // Inline code: the odd-numbered pieces between backticks.
        for (i, piece) in line.split('`').enumerate() {
            if i % 2 == 1 {
                code.push_str(piece);
                code.push('\n');
            }
        }
    }
    code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_spec_field_is_documented_on_its_kinds_page() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut failures = Vec::new();
    let all = crds();
    assert_eq!(all.len(), PAGES.len(), "a kind was added or removed: list its page in PAGES");
    for crd in &all {
        let kind = crd.spec.names.kind.as_str();
        let page = PAGES
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, page)| *page)
            .unwrap_or_else(|| panic!("no documentation page is listed for {kind}"));
        let text = std::fs::read_to_string(root.join(page)).unwrap_or_else(|e| panic!("{page} cannot be read: {e}"));
        let words = code_words(&text);
        let paths = spec_paths(crd);
        assert!(!paths.is_empty(), "{kind}: the schema walk found no spec fields");
        let missing: Vec<&String> = paths.iter().filter(|p| !words.contains(leaf(p))).collect();
        if !missing.is_empty() {
            let list = missing.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n");
            failures.push(format!("{page} does not mention these {kind} fields in code:\n{list}"));
        }
    }
    assert!(failures.is_empty(), "undocumented spec fields:\n{}", failures.join("\n"));
}

#[test]
fn the_schema_walk_sees_nested_fields() {
    let tenant = crds().into_iter().find(|c| c.spec.names.kind == "Tenant").unwrap();
    let paths = spec_paths(&tenant);
    for expected in ["spec.database.adoptRetained", "spec.owners[].namespace", "spec.branding.customDomain"] {
        assert!(paths.iter().any(|p| p == expected), "{expected} not found in {paths:?}");
    }
    let workflow = crds().into_iter().find(|c| c.spec.names.kind == "Workflow").unwrap();
    let paths = spec_paths(&workflow);
    assert!(paths.iter().any(|p| p == "spec.steps[].http.headers"), "{paths:?}");
    assert!(paths.iter().any(|p| p == "spec.retry.backoff.maxDuration"), "{paths:?}");
}

#[test]
fn code_words_come_from_code_only() {
    let page = "Prose mentions isolation.\n`spec.database.deletionPolicy` and\n```yaml\nadoptRetained: true\n```\n";
    let words = code_words(page);
    assert!(words.contains("deletionPolicy") && words.contains("adoptRetained") && words.contains("spec"));
    assert!(!words.contains("isolation") && !words.contains("Prose"));
}
