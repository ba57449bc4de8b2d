//! `memory_save` and `memory_search`: the crew's long-term memory in the tenant database's
//! `agent_memory` table. Statements run as the tenant's app role, so the table's row-level
//! security decides what is visible; the queries also name the tenant explicitly.

use super::{ToolError, optional_str, required_str};
use crate::config::tool_names::{MEMORY_SAVE, MEMORY_SEARCH};
use crate::db::Db;
use crate::llm::ToolDef;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Longest memory accepted (bytes).
pub const MAX_CONTENT: usize = 32 * 1024;
const DEFAULT_LIMIT: i64 = 5;
const MAX_LIMIT: i64 = 20;

/// Memory of one crew of one tenant.
#[derive(Clone, Debug)]
pub struct Memory {
    db: Arc<Db>,
    tenant: String,
    crew: String,
}

/// A memory found by a search.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Found {
    pub id: i64,
    pub crew: String,
    pub agent: Option<String>,
    pub content: String,
    pub metadata: Value,
    pub created_at: String,
}

impl Memory {
    pub fn new(db: Arc<Db>, tenant: impl Into<String>, crew: impl Into<String>) -> Self {
        Self { db, tenant: tenant.into(), crew: crew.into() }
    }

    pub fn save_spec() -> ToolDef {
        ToolDef::function(
            MEMORY_SAVE,
            "Save a fact, decision or result to the crew's long-term memory so that later tasks can find it.",
            json!({
                "type": "object",
                "properties": {
                    "content": {"type": "string", "description": "What to remember, self-contained"},
                    "metadata": {"type": "object", "description": "Optional labels, e.g. {\"topic\": \"pricing\"}"}
                },
                "required": ["content"],
                "additionalProperties": false
            }),
        )
    }

    pub fn search_spec() -> ToolDef {
        ToolDef::function(
            MEMORY_SEARCH,
            "Search the crew's long-term memory for earlier facts, decisions and results.",
            json!({
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "Words to look for"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "description": "Most results (default 5)"},
                    "scope": {"type": "string", "enum": ["crew", "tenant"], "description": "This crew's memories (default) or all of the business's crews"}
                },
                "required": ["query"],
                "additionalProperties": false
            }),
        )
    }

    /// `memory_save` by `agent`; returns the result text for the model.
    pub async fn save_tool(&self, agent: &str, args: &Map<String, Value>) -> Result<String, ToolError> {
        let content = required_str(args, "content")?;
        let metadata = match args.get("metadata") {
            None | Some(Value::Null) => json!({}),
            Some(m @ Value::Object(_)) => m.clone(),
            Some(_) => return Err(ToolError::InvalidArguments("\"metadata\" must be an object".into())),
        };
        let id = self.save(agent, content, &metadata).await?;
        Ok(json!({"saved": true, "id": id}).to_string())
    }

    /// `memory_search`; returns the result text for the model.
    pub async fn search_tool(&self, args: &Map<String, Value>) -> Result<String, ToolError> {
        let query = required_str(args, "query")?;
        let limit = match args.get("limit") {
            None | Some(Value::Null) => DEFAULT_LIMIT,
            Some(v) => v
                .as_f64()
                .map(|f| f as i64)
                .ok_or_else(|| ToolError::InvalidArguments("\"limit\" must be a number".into()))?,
        };
        let whole_tenant = match optional_str(args, "scope")? {
            None | Some("crew") => false,
            Some("tenant") => true,
            Some(other) => return Err(ToolError::InvalidArguments(format!("unknown scope {other:?}"))),
        };
        let found = self.search(query, limit, whole_tenant).await?;
        Ok(json!({"results": found}).to_string())
    }

    /// Inserts a memory; returns its id.
    pub async fn save(&self, agent: &str, content: &str, metadata: &Value) -> Result<i64, ToolError> {
        if content.len() > MAX_CONTENT {
            return Err(ToolError::InvalidArguments(format!("the content is longer than {MAX_CONTENT} bytes")));
        }
        let (tenant, crew, agent, content, metadata) =
            (self.tenant.clone(), self.crew.clone(), agent.to_string(), content.to_string(), metadata.to_string());
        self.db
            .with(|c| async move {
                let row = c
                    .query_one(
                        "INSERT INTO agent_memory (tenant_id, crew, agent, content, metadata, created_at) \
                         VALUES ($1, $2, $3, $4, ($5::text)::jsonb, now()) RETURNING id",
                        &[&tenant, &crew, &agent, &content, &metadata],
                    )
                    .await?;
                Ok(row.get::<_, i64>(0))
            })
            .await
            .map_err(|e| ToolError::Database(e.to_string()))
    }

    /// Memories matching any word of `query` (full-text, ranked) or containing it, newest
    /// first among equals.
    pub async fn search(&self, query: &str, limit: i64, whole_tenant: bool) -> Result<Vec<Found>, ToolError> {
        let limit = limit.clamp(1, MAX_LIMIT);
        let words: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .take(32)
            .map(str::to_lowercase)
            .collect();
        let tsquery = words.join(" or ");
        let pattern = format!("%{}%", escape_like(query.trim()));
        let crew = (!whole_tenant).then(|| self.crew.clone());
        let tenant = self.tenant.clone();
        self.db
            .with(|c| async move {
                let rows = c
                    .query(
                        "SELECT id, crew, agent, content, metadata::text, \
                                COALESCE(to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), '') \
                         FROM agent_memory \
                         WHERE tenant_id = $1 AND ($2::text IS NULL OR crew = $2) \
                           AND ((length($3) > 0 AND to_tsvector('simple', content) @@ websearch_to_tsquery('simple', $3)) \
                                OR content ILIKE $4) \
                         ORDER BY CASE WHEN length($3) > 0 \
                                  THEN ts_rank(to_tsvector('simple', content), websearch_to_tsquery('simple', $3)) \
                                  ELSE 0 END DESC, created_at DESC, id DESC \
                         LIMIT $5",
                        &[&tenant, &crew, &tsquery, &pattern, &limit],
                    )
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| Found {
                        id: r.get(0),
                        crew: r.get(1),
                        agent: r.get(2),
                        content: r.get(3),
                        metadata: serde_json::from_str(r.get::<_, &str>(4)).unwrap_or(Value::Null),
                        created_at: r.get(5),
                    })
                    .collect())
            })
            .await
            .map_err(|e| ToolError::Database(e.to_string()))
    }
}

/// Escapes `%`, `_` and `\` for ILIKE (backslash is the default escape).
fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(escape_like(r"50%_off\"), r"50\%\_off\\");
    }
}
