//! `GET /usage?day=`: the caller's model usage of a UTC day (today by default), by model, with the
//! daily token budget when one is set (see [`crate::usage`]). One eventually consistent read.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json as JsonBody;
use axum::extract::{RawQuery, State};
use serde::{Deserialize, Serialize};

use super::jobs::parameters;
use super::status::rfc3339;
use super::{ApiError, Caller, StatusApi};
use crate::usage::{Day, ModelUsage};

/// The caller's usage of one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageView {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// When the day's budget resets: the next UTC midnight (RFC 3339).
    pub resets_at: String,
    /// Tokens a day allowed each user (`null`: no budget).
    pub limit: Option<u64>,
    /// Input and output tokens of every model that day.
    pub total_tokens: u64,
    /// What is left of the budget that day (`null`: no budget).
    pub remaining: Option<u64>,
    pub models: BTreeMap<String, ModelUsage>,
}

pub(super) async fn usage(
    State(api): State<Arc<StatusApi>>,
    Caller(user): Caller,
    RawQuery(raw): RawQuery,
) -> Result<JsonBody<UsageView>, ApiError> {
    let params = parameters(raw.as_deref(), &["day"])?;
    let now = api.clock.now();
    let day = match params.get("day") {
        Some(raw) => Day::parse(raw, now)?,
        None => Day::of(now),
    };
    let usage = api.store.usage(&user, day).await?;
    let budget = api.token_budget();
    Ok(JsonBody(UsageView {
        day: day.to_string(),
        resets_at: rfc3339(day.resets_at()),
        limit: budget.map(|b| b.limit),
        total_tokens: usage.total_tokens,
        remaining: budget.map(|b| b.remaining(usage.total_tokens)),
        models: usage.models,
    }))
}
