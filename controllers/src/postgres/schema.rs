//! The tenant-data tables and their row-level security. Used in a Dedicated tenant's own
//! database and in the shared platform database; in both, every table has ENABLE and FORCE
//! ROW LEVEL SECURITY. In a Dedicated database a policy bound to the tenant's app role admits
//! the tenant's rows; in the platform database one policy per table, bound to the Shared
//! tenants' group, admits the rows of the tenant whose app role the session runs as. A
//! session setting, which the session could change, is never the guard.

use super::DatabaseError;
use super::ident::{TenantNames, quote_ident, quote_literal};

/// Tables holding tenant rows.
pub const TABLES: [&str; 7] =
    ["agent_memory", "usage_events", "audit_log", "agent_runs", "token_budgets", "token_reservations", "usage_exports"];

/// What a tenant's app role may do to each table. Usage events are append-only (what is
/// billed cannot be rewritten from inside the tenant); the audit log is append-only and not
/// readable by it at all (its owners read it through the gateway, which asks RBAC); budgets
/// are counted up, reservations taken and given back. The usage export cursor is the
/// operator's: the tenant may see how far its usage is billed, never move it (which would skip
/// or repeat billing).
const APP_PRIVILEGES: [(&str, &str); 7] = [
    ("agent_memory", "SELECT, INSERT, UPDATE, DELETE"),
    ("usage_events", "SELECT, INSERT"),
    ("audit_log", "INSERT"),
    ("agent_runs", "SELECT, INSERT, UPDATE, DELETE"),
    ("token_budgets", "SELECT, INSERT, UPDATE"),
    ("token_reservations", "SELECT, INSERT, DELETE"),
    ("usage_exports", "SELECT"),
];

/// What the operator itself does in tenant data: reads usage and budgets (the Tenant's status)
/// and appends to the audit log (its own actions on the tenant's data); keeps the cursor of
/// each usage export.
const OPERATOR_PRIVILEGES: [(&str, &str); 4] = [
    ("usage_events", "SELECT"),
    ("token_budgets", "SELECT"),
    ("audit_log", "INSERT"),
    ("usage_exports", "SELECT, INSERT, UPDATE"),
];

/// Name of the policies that admit the operator's own role.
const OPERATOR_POLICY: &str = "bizosaas_operator";

/// The gateway's role: it appends every request it serves to the tenant's audit log and
/// reads the log back for the tenant's owners. It holds nothing else in tenant data.
pub const GATEWAY_ROLE: &str = "bizosaas_gateway";

/// DDL that creates the tables (idempotent), owned by `owner`, with RLS forced.
pub fn tables(owner: &str) -> String {
    let owner = quote_ident(owner);
    let mut sql = String::from(
        "REVOKE ALL ON SCHEMA public FROM PUBLIC;
CREATE TABLE IF NOT EXISTS agent_memory (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    crew text NOT NULL,
    agent text,
    content text NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS agent_memory_tenant_crew ON agent_memory (tenant_id, crew);
CREATE TABLE IF NOT EXISTS usage_events (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    crew text,
    model text,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS usage_events_tenant_time ON usage_events (tenant_id, created_at);
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS agent text;
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS run_id text;
-- What the model gateway charged for the call, when it says (OpenRouter's usage.cost).
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS cost_usd numeric;
CREATE TABLE IF NOT EXISTS audit_log (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Who did what to which object, and how it ended: the gateway's requests and the operator's
-- own actions on the tenant's data (`source`), read back by id.
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT 'tenant';
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS groups text[] NOT NULL DEFAULT '{}';
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS target text;
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS outcome text;
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS request_id text;
CREATE INDEX IF NOT EXISTS audit_log_tenant_id ON audit_log (tenant_id, id);
-- The agent runtime's runs: every replica of a crew finds them by run_id and Idempotency-Key;
-- the unique key index makes replicas racing on one key create one run (INSERT ... ON CONFLICT).
-- The executing replica renews heartbeat_at; an unfinished run with a stale one is interrupted.
CREATE TABLE IF NOT EXISTS agent_runs (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    crew text NOT NULL,
    run_id text NOT NULL,
    idempotency_key text,
    request jsonb NOT NULL,
    status text NOT NULL,
    tasks jsonb NOT NULL DEFAULT '[]',
    output text,
    error jsonb,
    usage jsonb NOT NULL DEFAULT '{}',
    cancel_requested boolean NOT NULL DEFAULT false,
    owner text,
    heartbeat_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS agent_runs_tenant_run ON agent_runs (tenant_id, run_id);
CREATE UNIQUE INDEX IF NOT EXISTS agent_runs_tenant_crew_key ON agent_runs (tenant_id, crew, idempotency_key);
CREATE INDEX IF NOT EXISTS agent_runs_tenant_crew_time ON agent_runs (tenant_id, crew, created_at);
-- Tokens spent per calendar month (UTC): scope '' is the whole tenant, any other scope the
-- crew of that name. Every replica of every crew counts here, in the same transaction that
-- records the usage event.
CREATE TABLE IF NOT EXISTS token_budgets (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    scope text NOT NULL,
    month date NOT NULL,
    used bigint NOT NULL DEFAULT 0,
    UNIQUE (tenant_id, scope, month)
);
-- Tokens that model calls in flight may still spend. A call is admitted only while used plus
-- reserved is under the budget, which bounds the overshoot of concurrent calls by one call;
-- a reservation its replica never gave back (it crashed) stops counting when it expires.
CREATE TABLE IF NOT EXISTS token_reservations (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    crew text NOT NULL,
    tokens bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS token_reservations_tenant_expiry ON token_reservations (tenant_id, expires_at);
-- How far each tenant's usage is exported to each billing target: the id of the last usage
-- event the target accepted. Only the operator moves it, after the target answered.
CREATE TABLE IF NOT EXISTS usage_exports (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    target text NOT NULL,
    last_event_id bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, target)
);
",
    );
    sql.push_str(&format!("ALTER SCHEMA public OWNER TO {owner};\n"));
    for table in TABLES {
        sql.push_str(&format!(
            "ALTER TABLE {table} OWNER TO {owner};
ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
ALTER SEQUENCE {table}_id_seq OWNER TO {owner};
"
        ));
    }
    sql
}

/// Grants and policies that let a tenant's app role see and write only its own rows, in a
/// Dedicated tenant's database. Policies are replaced as a whole so a changed definition
/// converges.
pub fn tenant_access(names: &TenantNames) -> Result<String, DatabaseError> {
    Ok(format!("{}{}", tenant_grants(&names.app_role), tenant_policies(names)?))
}

/// Name of the policies that admit the Shared tenants' group in the platform database.
const SHARED_TENANTS_POLICY: &str = "bizosaas_shared_tenants";

/// The tenant whose app role the session runs as: `tenant_<name>_app` with `_` back to `-`
/// (a tenant name has no `_`, see [`TenantNames::new`]), NULL for any other role. A scalar
/// subquery, so each statement works it out once rather than per row.
const TENANT_OF_CURRENT_USER: &str =
    "(SELECT replace(substring(current_user FROM '^tenant_([a-z0-9_]+)_app$'), '_', '-'))";

/// The Shared tenants' access to the platform database, set up once with it: `group` holds
/// CONNECT (granted with the database), the tables' privileges and one policy per table that
/// admits the rows of the tenant the session's role belongs to. A policy or grant per tenant
/// would cost every tenant's provisioning more as tenants were added: each reloads every
/// policy on the table in every session using it, and a table's access list cannot grow past
/// one catalog page (about 2,400 grants, after which every provisioning failed).
pub fn shared_tenants_access(group: &str) -> String {
    let role = quote_ident(group);
    let policy = quote_ident(SHARED_TENANTS_POLICY);
    let mut sql = tenant_grants(group);
    for (table, _) in APP_PRIVILEGES {
        let own = own_rows_only(table);
        sql.push_str(&format!(
            "DROP POLICY IF EXISTS {policy} ON {table};
CREATE POLICY {policy} ON {table} AS PERMISSIVE FOR ALL TO {role}
    USING (tenant_id = {TENANT_OF_CURRENT_USER}) WITH CHECK (tenant_id = {TENANT_OF_CURRENT_USER}{own});
"
        ));
    }
    sql
}

/// A Shared tenant's access as the platform database holds it, read before anything changes
/// so that provisioning a converged tenant writes nothing there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedAccess {
    /// Whether the app role is a member of the Shared tenants' group.
    pub member: bool,
    /// Whether the app role holds privileges in its own name in the database (earlier
    /// versions granted them directly).
    pub direct_grants: bool,
    /// Policies that name the app role, as `(table, policy)`: earlier versions made one per
    /// tenant and table; the group's policy has replaced them.
    pub own_policies: Vec<(String, String)>,
}

/// The statements that bring a Shared tenant from `found` to membership of `group` and
/// nothing else in `database`; empty when there is nothing to change.
pub fn shared_tenant_changes(names: &TenantNames, group: &str, database: &str, found: &SharedAccess) -> String {
    let app = quote_ident(&names.app_role);
    let mut sql = String::new();
    if found.direct_grants {
        sql.push_str(&format!(
            "REVOKE ALL ON DATABASE {} FROM {app};\nREVOKE ALL ON SCHEMA public FROM {app};\n",
            quote_ident(database)
        ));
        for (table, _) in APP_PRIVILEGES {
            sql.push_str(&format!(
                "REVOKE ALL ON {table} FROM {app};\nREVOKE ALL ON SEQUENCE {table}_id_seq FROM {app};\n"
            ));
        }
    }
    for (table, policy) in &found.own_policies {
        sql.push_str(&format!("DROP POLICY IF EXISTS {} ON {};\n", quote_ident(policy), quote_ident(table)));
    }
    if !found.member {
        sql.push_str(&format!("GRANT {} TO {app};\n", quote_ident(group)));
    }
    sql
}

/// What a tenant's app role may do to each table (see [`APP_PRIVILEGES`]), granted to
/// `grantee`: the app role itself, or the group of a platform database's tenants.
pub fn tenant_grants(grantee: &str) -> String {
    let grantee = quote_ident(grantee);
    let mut sql = format!("GRANT USAGE ON SCHEMA public TO {grantee};\n");
    for (table, privileges) in APP_PRIVILEGES {
        sql.push_str(&format!(
            "REVOKE ALL ON {table} FROM {grantee};
GRANT {privileges} ON {table} TO {grantee};
GRANT USAGE ON SEQUENCE {table}_id_seq TO {grantee};
"
        ));
    }
    sql
}

/// The tenant's row-level security policies, one per table, bound to its app role and its
/// `tenant_id` literal; each is replaced as a whole.
fn tenant_policies(names: &TenantNames) -> Result<String, DatabaseError> {
    let app = quote_ident(&names.app_role);
    let policy = quote_ident(&names.policy);
    let tenant = quote_literal(&names.tenant_id)?;
    let mut sql = String::new();
    for (table, _) in APP_PRIVILEGES {
        let own = own_rows_only(table);
        sql.push_str(&format!(
            "DROP POLICY IF EXISTS {policy} ON {table};
CREATE POLICY {policy} ON {table} AS PERMISSIVE FOR ALL TO {app}
    USING (tenant_id = {tenant}) WITH CHECK (tenant_id = {tenant}{own});
"
        ));
    }
    Ok(sql)
}

/// The rest of a tenant policy's WITH CHECK on `table`: what the tenant appends to its audit
/// log is marked as its own, so it cannot pass for the gateway's or the operator's.
fn own_rows_only(table: &str) -> &'static str {
    if table == "audit_log" { " AND source = 'tenant'" } else { "" }
}

/// Grants and policies for the operator's own role (the one running this SQL) on every
/// tenant's rows of the tables it reads or appends to; replaced as a whole, like the tenants'.
pub fn operator_access() -> String {
    let policy = quote_ident(OPERATOR_POLICY);
    let mut sql = String::new();
    for (table, privilege) in OPERATOR_PRIVILEGES {
        let (command, clause) = match (privilege, table) {
            ("INSERT", "audit_log") => ("INSERT", "WITH CHECK (source = 'operator')"),
            ("INSERT", _) => ("INSERT", "WITH CHECK (true)"),
            ("SELECT, INSERT, UPDATE", _) => ("ALL", "USING (true) WITH CHECK (true)"),
            _ => ("SELECT", "USING (true)"),
        };
        sql.push_str(&format!(
            "GRANT {privilege} ON {table} TO CURRENT_USER;
DROP POLICY IF EXISTS {policy} ON {table};
CREATE POLICY {policy} ON {table} AS PERMISSIVE FOR {command} TO CURRENT_USER {clause};
"
        ));
    }
    sql.push_str("GRANT USAGE ON SEQUENCE audit_log_id_seq TO CURRENT_USER;\n");
    sql.push_str("GRANT USAGE ON SEQUENCE usage_exports_id_seq TO CURRENT_USER;\n");
    sql
}

/// Grants and policies for the gateway's role ([`GATEWAY_ROLE`]): append to and read every
/// tenant's audit rows, nothing else. The gateway filters by the tenant the caller's RBAC
/// allows; the role cannot touch memory, runs or usage whatever it sends.
pub fn gateway_access() -> String {
    let role = quote_ident(GATEWAY_ROLE);
    format!(
        "GRANT USAGE ON SCHEMA public TO {role};
REVOKE ALL ON audit_log FROM {role};
GRANT SELECT, INSERT ON audit_log TO {role};
GRANT USAGE ON SEQUENCE audit_log_id_seq TO {role};
DROP POLICY IF EXISTS {role} ON audit_log;
CREATE POLICY {role} ON audit_log AS PERMISSIVE FOR ALL TO {role} USING (true) WITH CHECK (source = 'gateway');
"
    )
}

/// Removes a tenant's rows from the shared platform database and, while its role still
/// exists, its policies and every privilege it holds there (and on the database itself).
pub fn remove_tenant(names: &TenantNames, role_exists: bool) -> Result<String, DatabaseError> {
    let app = quote_ident(&names.app_role);
    let policy = quote_ident(&names.policy);
    let tenant = quote_literal(&names.tenant_id)?;
    let mut sql = String::new();
    for table in TABLES {
        let mut statements = format!("DELETE FROM {table} WHERE tenant_id = {tenant};\n");
        if role_exists {
            statements.push_str(&format!("DROP POLICY IF EXISTS {policy} ON {table};\n"));
        }
        // A table an older operator never created (in a platform database it made) holds
        // nothing of the tenant; its absence must not wedge the deletion.
        sql.push_str(&format!(
            "DO $$ BEGIN IF to_regclass('public.{table}') IS NOT NULL THEN\n{statements}END IF; END $$;\n"
        ));
    }
    if role_exists {
        // Revokes its grants here and on shared objects such as the database's CONNECT.
        sql.push_str(&format!("DROP OWNED BY {app};\n"));
    }
    Ok(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_forces_row_level_security() {
        let sql = tables("tenant_acme_owner");
        for table in TABLES {
            assert!(sql.contains(&format!("ALTER TABLE {table} FORCE ROW LEVEL SECURITY")));
            assert!(sql.contains(&format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")));
        }
    }

    #[test]
    fn agent_runs_are_unique_per_run_and_per_idempotency_key() {
        let sql = tables("tenant_acme_owner");
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS agent_runs ("));
        // The runtime's `INSERT … ON CONFLICT (tenant_id, crew, idempotency_key)` needs this index.
        assert!(sql.contains(
            "CREATE UNIQUE INDEX IF NOT EXISTS agent_runs_tenant_crew_key ON agent_runs (tenant_id, crew, idempotency_key);"
        ));
        assert!(
            sql.contains("CREATE UNIQUE INDEX IF NOT EXISTS agent_runs_tenant_run ON agent_runs (tenant_id, run_id);")
        );
        assert!(sql.contains("ALTER SEQUENCE agent_runs_id_seq OWNER TO \"tenant_acme_owner\";"));
        let access = tenant_access(&TenantNames::new("acme").unwrap()).unwrap();
        assert!(access.contains(
            "CREATE POLICY \"tenant_acme_isolation\" ON agent_runs AS PERMISSIVE FOR ALL TO \"tenant_acme_app\"\n    USING (tenant_id = 'acme') WITH CHECK (tenant_id = 'acme');"
        ));
        assert!(access.contains("GRANT SELECT, INSERT, UPDATE, DELETE ON agent_runs TO \"tenant_acme_app\";"));
        assert!(
            remove_tenant(&TenantNames::new("acme").unwrap(), false)
                .unwrap()
                .contains("DELETE FROM agent_runs WHERE tenant_id = 'acme';")
        );
    }

    #[test]
    fn removal_without_the_role_only_deletes_rows() {
        let names = TenantNames::new("acme").unwrap();
        let sql = remove_tenant(&names, false).unwrap();
        assert!(sql.contains("DELETE FROM audit_log WHERE tenant_id = 'acme';"));
        assert!(!sql.contains("tenant_acme_app"));
        assert!(remove_tenant(&names, true).unwrap().contains("DROP OWNED BY \"tenant_acme_app\";"));
        assert!(
            sql.contains(
                "DO $$ BEGIN IF to_regclass('public.usage_exports') IS NOT NULL THEN\nDELETE FROM usage_exports"
            ),
            "a table an older operator did not create is skipped: {sql}"
        );
    }

    #[test]
    fn usage_and_audit_rows_are_append_only_for_the_tenant() {
        let access = tenant_access(&TenantNames::new("acme").unwrap()).unwrap();
        for table in ["usage_events", "audit_log"] {
            assert!(access.contains(&format!("REVOKE ALL ON {table} FROM \"tenant_acme_app\";")));
        }
        assert!(access.contains("GRANT SELECT, INSERT ON usage_events TO \"tenant_acme_app\";"));
        assert!(
            access.contains("GRANT INSERT ON audit_log TO \"tenant_acme_app\";"),
            "the audit log is its owners' to read"
        );
        assert!(access.contains("GRANT SELECT, INSERT, DELETE ON token_reservations TO \"tenant_acme_app\";"));
        assert_eq!(APP_PRIVILEGES.map(|(t, _)| t), TABLES, "every table has its privileges");
        let operator = operator_access();
        assert!(operator.contains("CREATE POLICY \"bizosaas_operator\" ON token_budgets AS PERMISSIVE FOR SELECT TO CURRENT_USER USING (true);"));
        assert!(operator.contains("CREATE POLICY \"bizosaas_operator\" ON audit_log AS PERMISSIVE FOR INSERT TO CURRENT_USER WITH CHECK (source = 'operator');"));
        assert!(access.contains("ON audit_log AS PERMISSIVE FOR ALL TO \"tenant_acme_app\"\n    USING (tenant_id = 'acme') WITH CHECK (tenant_id = 'acme' AND source = 'tenant');"), "a tenant cannot forge the platform's entries");
        assert!(!operator.contains("agent_memory"), "the operator never reads the tenant's memory");
    }

    #[test]
    fn only_the_operator_moves_the_usage_export_cursor() {
        let sql = tables("tenant_acme_owner");
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS usage_exports ("));
        assert!(sql.contains("UNIQUE (tenant_id, target)"), "one cursor per tenant and target");
        assert!(sql.contains("ALTER TABLE usage_exports FORCE ROW LEVEL SECURITY"));
        let access = tenant_access(&TenantNames::new("acme").unwrap()).unwrap();
        assert!(access.contains("REVOKE ALL ON usage_exports FROM \"tenant_acme_app\";"));
        assert!(access.contains("GRANT SELECT ON usage_exports TO \"tenant_acme_app\";"), "read-only for the tenant");
        assert!(access.contains(
            "CREATE POLICY \"tenant_acme_isolation\" ON usage_exports AS PERMISSIVE FOR ALL TO \"tenant_acme_app\"\n    USING (tenant_id = 'acme')"
        ));
        let operator = operator_access();
        assert!(operator.contains("GRANT SELECT, INSERT, UPDATE ON usage_exports TO CURRENT_USER;"));
        assert!(operator.contains(
            "CREATE POLICY \"bizosaas_operator\" ON usage_exports AS PERMISSIVE FOR ALL TO CURRENT_USER USING (true) WITH CHECK (true);"
        ));
        assert!(operator.contains("GRANT USAGE ON SEQUENCE usage_exports_id_seq TO CURRENT_USER;"));
        assert!(!operator.contains("DELETE"), "the operator never deletes a cursor (or anything else)");
        assert!(
            remove_tenant(&TenantNames::new("acme").unwrap(), false)
                .unwrap()
                .contains("DELETE FROM usage_exports WHERE tenant_id = 'acme';")
        );
    }

    #[test]
    fn the_gateway_holds_only_the_audit_log() {
        let sql = gateway_access();
        assert!(sql.contains("GRANT SELECT, INSERT ON audit_log TO \"bizosaas_gateway\";"));
        for table in TABLES.iter().filter(|t| **t != "audit_log") {
            assert!(!sql.contains(table), "the gateway's role is granted {table}");
        }
        assert!(!sql.contains("UPDATE") && !sql.contains("DELETE"), "audit rows are append-only");
    }

    fn changes(found: &SharedAccess) -> String {
        shared_tenant_changes(
            &TenantNames::new("acme").unwrap(),
            "bizosaas_platform_tenants",
            "bizosaas_platform",
            found,
        )
    }

    #[test]
    fn a_new_shared_tenant_only_joins_the_group() {
        assert_eq!(changes(&SharedAccess::default()), "GRANT \"bizosaas_platform_tenants\" TO \"tenant_acme_app\";\n");
        let converged = SharedAccess { member: true, ..Default::default() };
        assert_eq!(changes(&converged), "", "a converged tenant changes nothing");
    }

    #[test]
    fn what_earlier_versions_gave_the_role_itself_is_taken_away() {
        let found = SharedAccess {
            member: true,
            direct_grants: true,
            own_policies: vec![("agent_memory".into(), "tenant_acme_isolation".into())],
        };
        let sql = changes(&found);
        assert!(sql.contains("REVOKE ALL ON DATABASE \"bizosaas_platform\" FROM \"tenant_acme_app\";"));
        assert!(sql.contains("REVOKE ALL ON SCHEMA public FROM \"tenant_acme_app\";"));
        for table in TABLES {
            assert!(sql.contains(&format!("REVOKE ALL ON {table} FROM \"tenant_acme_app\";")), "{table}");
        }
        assert!(sql.contains("DROP POLICY IF EXISTS \"tenant_acme_isolation\" ON \"agent_memory\";"), "{sql}");
        assert!(!sql.contains("GRANT"), "{sql}");
    }

    #[test]
    fn the_group_holds_the_privileges_and_one_policy_per_table() {
        let sql = shared_tenants_access("bizosaas_platform_tenants");
        assert!(sql.contains("GRANT SELECT, INSERT ON usage_events TO \"bizosaas_platform_tenants\";"));
        assert!(sql.contains("GRANT USAGE ON SCHEMA public TO \"bizosaas_platform_tenants\";"));
        for table in TABLES {
            assert!(sql.contains(&format!(
                "CREATE POLICY \"bizosaas_shared_tenants\" ON {table} AS PERMISSIVE FOR ALL TO \"bizosaas_platform_tenants\"\n    USING (tenant_id = {TENANT_OF_CURRENT_USER})"
            )), "{table}");
        }
        assert_eq!(sql.matches("CREATE POLICY").count(), TABLES.len());
        assert!(sql.contains(&format!("WITH CHECK (tenant_id = {TENANT_OF_CURRENT_USER} AND source = 'tenant');")));
        assert!(!sql.contains("current_setting"), "a session setting must never be the guard");
    }

    #[test]
    fn policies_bind_the_tenant_literal_to_its_role() {
        let sql = tenant_access(&TenantNames::new("acme").unwrap()).unwrap();
        assert!(sql.contains(
            "CREATE POLICY \"tenant_acme_isolation\" ON agent_memory AS PERMISSIVE FOR ALL TO \"tenant_acme_app\"\n    USING (tenant_id = 'acme') WITH CHECK (tenant_id = 'acme');"
        ));
        assert!(!sql.contains("current_setting"), "a session setting must never be the guard");
    }
}
