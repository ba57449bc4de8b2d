//! Names and quoting of PostgreSQL identifiers and literals.

use super::DatabaseError;

/// The PostgreSQL names of one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantNames {
    /// Value of the `tenant_id` column, the tenant's name.
    pub tenant_id: String,
    /// Dedicated database `tenant_<name>`.
    pub database: String,
    /// NOLOGIN role that owns the tenant's objects.
    pub owner_role: String,
    /// LOGIN role the tenant's workloads use: not an owner, no BYPASSRLS.
    pub app_role: String,
    /// Name of the tenant's row-level security policies.
    pub policy: String,
}

impl TenantNames {
    /// Derives the names from a tenant name (`-` becomes `_`), refusing anything that would
    /// not be a plain lower-case identifier of at most 63 bytes.
    pub fn new(tenant: &str) -> Result<Self, DatabaseError> {
        let base = format!("tenant_{}", tenant.replace('-', "_"));
        let names = Self {
            tenant_id: tenant.to_string(),
            database: base.clone(),
            owner_role: format!("{base}_owner"),
            app_role: format!("{base}_app"),
            policy: format!("{base}_isolation"),
        };
        for ident in [&names.database, &names.owner_role, &names.app_role, &names.policy] {
            check_ident(ident)?;
        }
        if !tenant.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(DatabaseError::InvalidIdentifier(tenant.to_string()));
        }
        Ok(names)
    }
}

/// The NOLOGIN role that holds the Shared tenants' privileges in `platform_database`, one
/// per platform database so a tenant of one is granted nothing in another.
pub fn shared_tenants_role(platform_database: &str) -> Result<String, DatabaseError> {
    let role = format!("{platform_database}_tenants");
    if role.len() > 63 {
        return Err(DatabaseError::InvalidIdentifier(role));
    }
    Ok(role)
}

fn check_ident(ident: &str) -> Result<(), DatabaseError> {
    let ok = ident.len() <= 63
        && ident.starts_with(|c: char| c.is_ascii_lowercase())
        && ident.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok { Ok(()) } else { Err(DatabaseError::InvalidIdentifier(ident.to_string())) }
}

/// Quotes an identifier: `"name"`, doubling embedded quotes.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes a string literal: `'value'`, doubling embedded quotes. Rejects backslashes and
/// NUL so the result is the same under any `standard_conforming_strings` setting.
pub fn quote_literal(value: &str) -> Result<String, DatabaseError> {
    if value.contains('\\') || value.contains('\0') {
        return Err(DatabaseError::InvalidIdentifier("literal with backslash or NUL".into()));
    }
    Ok(format!("'{}'", value.replace('\'', "''")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_tenant() {
        let n = TenantNames::new("acme-corp").unwrap();
        assert_eq!(n.database, "tenant_acme_corp");
        assert_eq!(n.owner_role, "tenant_acme_corp_owner");
        assert_eq!(n.app_role, "tenant_acme_corp_app");
        assert_eq!(n.tenant_id, "acme-corp");
    }

    #[test]
    fn unsafe_or_long_names_are_refused() {
        for bad in ["Acme", "a\"; DROP DATABASE x; --", "x'y", &"a".repeat(60), "a b"] {
            assert!(TenantNames::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn quoting_escapes_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert!(quote_literal("a\\b").is_err());
    }
}
