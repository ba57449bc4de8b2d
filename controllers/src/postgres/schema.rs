//! The tenant-data tables and their row-level security. Used in a Dedicated tenant's own
//! database and in the shared platform database; in both, every table has ENABLE and FORCE
//! ROW LEVEL SECURITY and a policy per tenant bound to that tenant's app role, so a session
//! setting is never the only guard.

use super::DatabaseError;
use super::ident::{TenantNames, quote_ident, quote_literal};

/// Tables holding tenant rows.
pub const TABLES: [&str; 4] = ["agent_memory", "usage_events", "audit_log", "agent_runs"];

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
CREATE TABLE IF NOT EXISTS audit_log (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
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

/// Grants and policies that let a tenant's app role see and write only its own rows.
/// Policies are replaced as a whole so a changed definition converges.
pub fn tenant_access(names: &TenantNames) -> Result<String, DatabaseError> {
    let app = quote_ident(&names.app_role);
    let policy = quote_ident(&names.policy);
    let tenant = quote_literal(&names.tenant_id)?;
    let mut sql = format!("GRANT USAGE ON SCHEMA public TO {app};\n");
    for table in TABLES {
        sql.push_str(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {app};
GRANT USAGE ON SEQUENCE {table}_id_seq TO {app};
DROP POLICY IF EXISTS {policy} ON {table};
CREATE POLICY {policy} ON {table} AS PERMISSIVE FOR ALL TO {app}
    USING (tenant_id = {tenant}) WITH CHECK (tenant_id = {tenant});
"
        ));
    }
    Ok(sql)
}

/// Removes a tenant's rows from the shared platform database and, while its role still
/// exists, its policies and every privilege it holds there (and on the database itself).
pub fn remove_tenant(names: &TenantNames, role_exists: bool) -> Result<String, DatabaseError> {
    let app = quote_ident(&names.app_role);
    let policy = quote_ident(&names.policy);
    let tenant = quote_literal(&names.tenant_id)?;
    let mut sql = String::new();
    for table in TABLES {
        sql.push_str(&format!("DELETE FROM {table} WHERE tenant_id = {tenant};\n"));
        if role_exists {
            sql.push_str(&format!("DROP POLICY IF EXISTS {policy} ON {table};\n"));
        }
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
