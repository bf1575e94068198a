//! The README's example kind, `summarize` (not registered: a deployment runs only what [`crate::registry`]
//! registers). Compiled with the crate's own dependencies, and the README shows this file between its
//! markers (a test checks), so the example cannot drift from code that builds.

// README: example
use jobkit::prelude::*;

/// What a `summarize` job takes: submit refuses an input that does not decode into it (`422
/// invalid_input`), and `GET /kinds` shows its JSON Schema.
#[derive(Deserialize, JsonSchema)]
pub struct Summarize {
    pub url: String,
    pub pages: u32,
}

/// Where a retried or continued run resumes.
#[derive(Serialize, Deserialize)]
struct Page {
    next: u32,
}

pub async fn summarize(input: Summarize, ctx: JobContext) -> Result<String, JobError> {
    let from = ctx.checkpoint::<Page>()?.map_or(0, |p| p.next); // resume after a retry
    for page in from..input.pages {
        ctx.check_cancelled()?; // DELETE /jobs/{id} is seen within about 5 s
        // ... call your model / tools for `page` of `input.url` ...
        ctx.save_checkpoint(&Page { next: page + 1 }).await?;
        let percent = u64::from(page + 1) * 100 / u64::from(input.pages);
        ctx.progress(percent as u8, "summarizing").await?;
        if ctx.should_yield() {
            return Err(JobError::Yield); // near the deadline: continue in a fresh invocation
        }
    }
    Ok(format!("{} pages summarized", input.pages)) // or Err(JobError::retryable(..) / terminal(..))
}
// README: end
