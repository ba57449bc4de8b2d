//! Reading what the platform database holds for one Shared tenant, so that provisioning
//! writes only what differs (see `schema::shared_tenant_changes`).

use crate::postgres::DatabaseError;
use crate::postgres::TenantNames;
use crate::postgres::schema::SharedAccess;
use tokio_postgres::Client;

/// The tenant's membership of `group`, whether it holds privileges of its own and the
/// policies that name its role, in two queries on a connection to the platform database.
pub(super) async fn read(client: &Client, names: &TenantNames, group: &str) -> Result<SharedAccess, DatabaseError> {
    let rows = client
        .query(
            "SELECT tablename::text, policyname::text FROM pg_policies \
             WHERE schemaname = 'public' AND (policyname = $1 OR $2::name = ANY (roles))",
            &[&names.policy, &names.app_role],
        )
        .await
        .map_err(DatabaseError::statement("reading a tenant's policies"))?;
    let own_policies = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    // What the role holds in its own name: on the database, the schema and its tables and
    // sequences. Held through the group, nothing appears here.
    let row = client
        .query_one(
            "WITH app AS (SELECT oid FROM pg_roles WHERE rolname = $1) \
             SELECT \
               EXISTS (SELECT 1 FROM pg_auth_members m, app \
                        WHERE m.member = app.oid AND m.roleid = (SELECT oid FROM pg_roles WHERE rolname = $2)), \
               EXISTS (SELECT 1 FROM pg_database d, aclexplode(d.datacl) a, app \
                        WHERE d.datname = current_database() AND a.grantee = app.oid) \
               OR EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(n.nspacl) a, app \
                        WHERE n.nspname = 'public' AND a.grantee = app.oid) \
               OR EXISTS (SELECT 1 FROM pg_class c, aclexplode(c.relacl) a, app \
                        WHERE c.relnamespace = 'public'::regnamespace AND a.grantee = app.oid)",
            &[&names.app_role, &group],
        )
        .await
        .map_err(DatabaseError::statement("reading a tenant's privileges"))?;
    Ok(SharedAccess { member: row.get(0), direct_grants: row.get(1), own_policies })
}
