//! `bizosaas-operator catalog`: the built-in agents as a table or YAML.

use bizosaas_crds::catalog::CATALOG;

pub fn table() -> String {
    let mut out = format!("{:<22} {:<20} {}\n", "TEMPLATE", "NAME", "ROLE");
    for d in &CATALOG {
        out.push_str(&format!("{:<22} {:<20} {}\n", d.template.as_str(), d.name, d.role));
    }
    out
}

pub fn yaml() -> String {
    serde_saphyr::to_string(&CATALOG.to_vec()).expect("the catalog serializes")
}
