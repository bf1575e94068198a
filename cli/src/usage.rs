//! `jobctl usage [--day YYYY-MM-DD]`: the caller's model tokens of a UTC day, by model, and the daily
//! budget (`GET /usage`).

use jobkit::api::UsageView;
use serde_json::Value;

use crate::client::Client;

/// Prints the caller's usage of `day` (today when `None`): as the API sent it with `json`, else a
/// line for the day and budget and one per model.
pub async fn show(c: &Client, day: Option<&str>, json: bool) -> anyhow::Result<bool> {
    let path = match day {
        Some(day) => {
            let mut url = reqwest::Url::parse("http://api/usage").expect("a valid URL");
            url.query_pairs_mut().append_pair("day", day);
            format!("/usage?{}", url.query().unwrap_or_default())
        }
        None => "/usage".to_owned(),
    };
    let raw: Value = c.get_raw(&path).await?;
    if json {
        println!("{raw}");
        return Ok(true);
    }
    let usage: UsageView = serde_json::from_value(raw)?;
    print!("{}", describe(&usage));
    Ok(true)
}

/// The usage as a person reads it.
fn describe(u: &UsageView) -> String {
    let budget = match (u.limit, u.remaining) {
        (Some(limit), Some(left)) => format!("of {limit} a day, {left} left"),
        _ => "no daily budget".to_owned(),
    };
    let mut out = format!(
        "{} (UTC, resets {}): {} tokens, {budget}\n",
        u.day, u.resets_at, u.total_tokens
    );
    let width = u.models.keys().map(String::len).max().unwrap_or(0);
    for (model, m) in &u.models {
        out += &format!(
            "  {model:width$}  {} in  {} out  {} requests\n",
            m.input_tokens, m.output_tokens, m.requests
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobkit::usage::ModelUsage;

    #[test]
    fn usage_reads_as_a_line_per_model_under_the_budget() {
        let mut u = UsageView {
            day: "2026-12-07".into(),
            resets_at: "2026-12-08T00:00:00.000Z".into(),
            limit: Some(1000),
            total_tokens: 78,
            remaining: Some(922),
            models: Default::default(),
        };
        let m = |i, o, r| ModelUsage {
            input_tokens: i,
            output_tokens: o,
            requests: r,
        };
        u.models.insert("fake".into(), m(40, 12, 4));
        u.models.insert("llama3.2".into(), m(20, 6, 2));
        assert_eq!(
            describe(&u),
            "2026-12-07 (UTC, resets 2026-12-08T00:00:00.000Z): 78 tokens, of 1000 a day, 922 left\n\
             \x20 fake      40 in  12 out  4 requests\n\
             \x20 llama3.2  20 in  6 out  2 requests\n"
        );
        u.limit = None;
        u.remaining = None;
        assert!(describe(&u).contains("78 tokens, no daily budget"));
    }
}
