//! Token accounting per run and per agent, and the budgets: `maxTokensPerRun` for one run, and
//! the monthly budgets of the crew and the tenant (kept in the tenant database by
//! [`crate::ledger`]; a crew without a database counts its own month in [`MonthlyLedger`]).

use crate::llm::Usage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

/// Tokens and calls, as the API reports them (and the `agent_runs` rows keep them; missing
/// fields read as zero).
#[derive(Serialize, Deserialize, Clone, Copy, Default, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Chat completions that returned a response (retries not counted).
    pub llm_calls: u64,
}

impl TokenUsage {
    pub fn add(&mut self, u: &Usage) {
        self.prompt_tokens += u.prompt_tokens;
        self.completion_tokens += u.completion_tokens;
        self.total_tokens += u.prompt_tokens + u.completion_tokens;
        self.llm_calls += 1;
    }

    /// What `self` has on top of an earlier snapshot.
    pub fn since(&self, earlier: &TokenUsage) -> TokenUsage {
        TokenUsage {
            prompt_tokens: self.prompt_tokens - earlier.prompt_tokens,
            completion_tokens: self.completion_tokens - earlier.completion_tokens,
            total_tokens: self.total_tokens - earlier.total_tokens,
            llm_calls: self.llm_calls - earlier.llm_calls,
        }
    }
}

/// Usage of one run.
#[derive(Serialize, Deserialize, Clone, Default, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RunUsage {
    #[serde(flatten)]
    pub total: TokenUsage,
    /// Per agent name (`manager` for the manager of a Hierarchical crew).
    pub by_agent: BTreeMap<String, TokenUsage>,
}

impl RunUsage {
    pub fn add(&mut self, agent: &str, u: &Usage) {
        self.total.add(u);
        self.by_agent.entry(agent.to_string()).or_default().add(u);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "stopped: the next model call would exceed the run's token budget (maxTokensPerRun {limit}): {used} tokens used, about {estimate} more needed for the prompt alone"
    )]
    RunWouldExceed { limit: u64, used: u64, estimate: u64 },
    #[error("stopped: the run exceeded its token budget (maxTokensPerRun {limit}) with {used} tokens")]
    RunExceeded { limit: u64, used: u64 },
    #[error(
        "stopped: the model's answer was cut off at the run's token budget (maxTokensPerRun {limit}) with {used} tokens used"
    )]
    RunCutOff { limit: u64, used: u64 },
    #[error("stopped: the crew's monthly token budget (monthlyTokens {limit}) is used up: {used} tokens this month")]
    Monthly { limit: u64, used: u64 },
    #[error(
        "stopped: the tenant's monthly token budget (quota.monthlyTokens {limit}) is used up: {used} tokens this month across its crews"
    )]
    TenantMonthly { limit: u64, used: u64 },
    #[error("the token budget cannot be checked: {0}")]
    Unavailable(String),
}

impl BudgetError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::RunWouldExceed { .. } | Self::RunExceeded { .. } | Self::RunCutOff { .. } => "budget_exceeded",
            Self::Monthly { .. } => "monthly_budget_exceeded",
            Self::TenantMonthly { .. } => "tenant_budget_exhausted",
            Self::Unavailable(_) => "budget_unavailable",
        }
    }
}

/// Tokens of a prompt estimated from its characters (about four per token).
pub fn estimate_tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

/// The run budget: checked before each call with an estimate of the prompt, and after it
/// with the reported usage.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunBudget {
    pub limit: Option<u64>,
}

impl RunBudget {
    /// Before a call: fails when the prompt alone would reach the limit; otherwise returns
    /// the most completion tokens the call may use.
    pub fn before_call(&self, used: u64, prompt_estimate: u64) -> Result<Option<u32>, BudgetError> {
        let Some(limit) = self.limit else { return Ok(None) };
        if used + prompt_estimate >= limit {
            return Err(BudgetError::RunWouldExceed { limit, used, estimate: prompt_estimate });
        }
        Ok(Some(u32::try_from(limit - used - prompt_estimate).unwrap_or(u32::MAX)))
    }

    /// After a call: fails when the run went over the limit.
    pub fn after_call(&self, used: u64) -> Result<(), BudgetError> {
        match self.limit {
            Some(limit) if used > limit => Err(BudgetError::RunExceeded { limit, used }),
            _ => Ok(()),
        }
    }
}

#[derive(Debug)]
struct Month {
    key: (i64, u32),
    used: u64,
}

/// Tokens a crew without a tenant database used this calendar month, counted by this process.
#[derive(Debug)]
pub struct MonthlyLedger {
    limit: u64,
    month: Mutex<Month>,
}

impl MonthlyLedger {
    pub fn new(limit: u64) -> Self {
        Self { limit, month: Mutex::new(Month { key: crate::time::year_month(SystemTime::now()), used: 0 }) }
    }

    fn with_month<T>(&self, f: impl FnOnce(&mut Month) -> T) -> T {
        let mut m = self.month.lock().expect("monthly ledger lock");
        let key = crate::time::year_month(SystemTime::now());
        if m.key != key {
            *m = Month { key, used: 0 };
        }
        f(&mut m)
    }

    pub fn used(&self) -> u64 {
        self.with_month(|m| m.used)
    }

    pub fn add(&self, tokens: u64) {
        self.with_month(|m| m.used += tokens);
    }

    pub fn check(&self) -> Result<(), BudgetError> {
        let used = self.used();
        if used >= self.limit { Err(BudgetError::Monthly { limit: self.limit, used }) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_budget_stops_before_and_after() {
        let b = RunBudget { limit: Some(100) };
        assert_eq!(b.before_call(50, 20), Ok(Some(30)));
        assert!(matches!(b.before_call(90, 10), Err(BudgetError::RunWouldExceed { .. })));
        assert!(b.after_call(100).is_ok());
        assert_eq!(b.after_call(101), Err(BudgetError::RunExceeded { limit: 100, used: 101 }));
        assert_eq!(RunBudget::default().before_call(u64::MAX / 2, 5), Ok(None));
    }

    #[test]
    fn usage_adds_up_per_agent() {
        let mut u = RunUsage::default();
        u.add("a", &Usage { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5, cost: None });
        u.add("b", &Usage { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2, cost: None });
        u.add("a", &Usage { prompt_tokens: 1, completion_tokens: 0, total_tokens: 1, cost: None });
        assert_eq!(u.total.total_tokens, 8);
        assert_eq!(
            u.by_agent["a"],
            TokenUsage { prompt_tokens: 4, completion_tokens: 2, total_tokens: 6, llm_calls: 2 }
        );
        let json = serde_json::to_value(&u).unwrap();
        assert_eq!(json["totalTokens"], 8);
        assert_eq!(json["byAgent"]["b"]["llmCalls"], 1);
    }

    #[test]
    fn monthly_ledger_limits() {
        let l = MonthlyLedger::new(10);
        l.add(4);
        assert!(l.check().is_ok());
        l.add(3);
        assert_eq!(l.used(), 7);
        l.add(5);
        assert_eq!(l.check().unwrap_err().category(), "monthly_budget_exceeded");
    }
}
