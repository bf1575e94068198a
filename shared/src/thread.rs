//! Conversations: a thread holds an owner's agent runs one after another, each run seeing the ones
//! before it. Pure: what a thread, a run's place in it and a stored message are, how a message is kept
//! under the item limit, and which messages a run shows its model. The writes are the store's
//! ([`crate::store::ThreadStore`]), the ordering the worker's gate's, the HTTP routes `api::threads`'.
//!
//! - **A thread** (`POST /threads`) belongs to its creator, expires after its TTL, and has a policy for
//!   a message sent while a run is queued or going: [`Policy`].
//! - **A run** is an agent job submitted with `"thread": id`. Its submit stores the job, its user
//!   message and the thread's new `last_job` in one atomic write; the job records its position and the
//!   job before it ([`ThreadRun`]). The worker's gate defers it while that one is not finished, and
//!   holds a concurrency slot of one keyed on the thread while it runs, so runs never overlap and run
//!   in the order they were submitted.
//! - **Messages** are items of their own, keyed by (run position, index in the run): a run's answer and
//!   tool calls are appended when it ends by writes that only create, so a retried or continued run
//!   never appends twice. Each is at most [`MAX_MESSAGE_BYTES`] stored ([`ThreadMessage::new`] cuts
//!   longer text and says so), far under DynamoDB's 400 KB item.
//! - **History is bounded** ([`HistoryBound`]): a run sends its model at most the last N messages and
//!   about K tokens of the earlier runs ([`window`]). On DynamoDB the list comes from the `by_job`
//!   index, which is eventually consistent, and an enqueued run starts as soon as the run before it
//!   ends: within the index's lag (typically well under a second), so the list may miss that run's
//!   messages, its answer the most important. So a run's attempt records how many messages it left
//!   ([`ThreadRun::said`]) through the job writes it makes anyway, its terminal one included; the next
//!   run's gate reads that job consistently anyway ([`RunEnd`]), and the run reads those places by key
//!   (strongly consistent) and merges them into the list ([`with_latest`]): no extra write, a read unit
//!   per message of the run before. Older runs ended before the run before started, a whole run (a
//!   model call: seconds) earlier, far past the lag. Left to the index: the messages of a run that
//!   ended by another's write after it appended (a run whose lease lapsed as it ended: `said` unknown,
//!   only its user message is read by key), and, when the run before never ran (cancelled while
//!   queued), those of the one before that.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::job::{JobId, Millis};
pub use crate::job::{ThreadId, ThreadRun};

/// What a message sent while a run is queued or going does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// It runs after the runs before it, in the order sent.
    #[default]
    Enqueue,
    /// It is refused: `409 thread_busy`.
    Reject,
    /// The unfinished run is cancelled (what it said so far stays in the thread, marked
    /// interrupted), then it runs.
    Interrupt,
}

/// Returned when a policy is none of `enqueue`, `reject`, `interrupt`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy must be one of enqueue, reject, interrupt")]
pub struct InvalidPolicy;

impl Policy {
    pub fn parse(s: &str) -> Result<Self, InvalidPolicy> {
        match s {
            "enqueue" => Ok(Self::Enqueue),
            "reject" => Ok(Self::Reject),
            "interrupt" => Ok(Self::Interrupt),
            _ => Err(InvalidPolicy),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enqueue => "enqueue",
            Self::Reject => "reject",
            Self::Interrupt => "interrupt",
        }
    }
}

/// The shortest and longest a thread may be kept.
pub const MIN_TTL: Duration = Duration::from_secs(60);
pub const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);

/// A thread as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    pub thread_id: ThreadId,
    pub owner: String,
    pub policy: Policy,
    pub created_at: Millis,
    /// Epoch seconds (the table's TTL attribute): reads treat it as gone from then on.
    pub expires_at: i64,
    /// Runs submitted so far: the last one's position.
    pub runs: u64,
    /// The job of the last run submitted.
    pub last_job: Option<JobId>,
}

impl Thread {
    pub fn new(owner: String, policy: Policy, ttl: Duration, now: Millis) -> Self {
        Self {
            thread_id: ThreadId::generate(now),
            owner,
            policy,
            created_at: now,
            expires_at: now / 1000 + ttl.as_secs() as i64,
            runs: 0,
            last_job: None,
        }
    }

    /// Whether it is gone at `now`, whether or not DynamoDB has deleted it yet.
    pub fn expired(&self, now: Millis) -> bool {
        now / 1000 >= self.expires_at
    }

    /// Whether `user` may see it at `now`: theirs and not expired (anything else is the same `404`).
    pub fn visible_to(&self, user: &str, now: Millis) -> bool {
        self.owner == user && !self.expired(now)
    }

    /// The place of the next run, `job`.
    pub fn next_run(&self) -> ThreadRun {
        ThreadRun {
            thread: self.thread_id.clone(),
            position: self.runs + 1,
            after: self.last_job.clone(),
            expires_at: self.expires_at,
            said: None,
        }
    }

    /// The thread once `job` is its next run.
    pub fn linking(&self, job: &JobId) -> Self {
        Self {
            runs: self.runs + 1,
            last_job: Some(job.clone()),
            ..self.clone()
        }
    }
}

/// A message's place in its thread: `run * SEQ_SPAN + index`, so messages sort by run, then by their
/// order within it.
pub const SEQ_SPAN: u64 = 1_000_000;

/// The most a stored message takes (its JSON): longer text is cut, and the message says so. An item
/// holds one message and a few keys, so it stays far under DynamoDB's 400 KB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What is appended to cut text.
const CUT_MARK: &str = " [truncated]";

/// One message of a thread, as stored: the agent's message (`{"role": "user" | "assistant" | "tool",
/// ...}`, as the agent loop sends it to its model), where it sits, which job wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadMessage {
    pub run: u64,
    pub index: u32,
    pub job_id: JobId,
    pub at: Millis,
    pub message: Value,
    /// The run was interrupted (cancelled) here: what it said before is kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// The message's size before it was cut to [`MAX_MESSAGE_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated_from: Option<u64>,
}

impl ThreadMessage {
    /// Message `index` of run `run`, cut to [`MAX_MESSAGE_BYTES`] if longer: the longest strings are
    /// shortened (each ending in "[truncated]") until it fits, and `truncated_from` says how large it
    /// was.
    pub fn new(run: u64, index: u32, job_id: JobId, at: Millis, mut message: Value) -> Self {
        let size = message.to_string().len();
        let truncated_from = (size > MAX_MESSAGE_BYTES).then(|| {
            shrink(&mut message, MAX_MESSAGE_BYTES);
            size as u64
        });
        Self {
            run,
            index,
            job_id,
            at,
            message,
            interrupted: false,
            truncated_from,
        }
    }

    pub fn seq(&self) -> u64 {
        self.run * SEQ_SPAN + u64::from(self.index)
    }

    fn role(&self) -> Option<&str> {
        self.message.get("role")?.as_str()
    }

    /// Whether it is a run's answer: an assistant message asking for no tool.
    fn is_answer(&self) -> bool {
        self.role() == Some("assistant")
            && self
                .message
                .get("tool_calls")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
    }
}

/// Cuts the strings of `v` so that its JSON takes at most `cap` bytes: every string is cut to the
/// longest length `n` that fits (found by bisection), so short ones are kept whole. A message whose
/// structure alone is too large (thousands of tiny tool arguments) becomes a note saying so.
fn shrink(v: &mut Value, cap: usize) {
    let fits = |n: usize, v: &Value| {
        let mut c = v.clone();
        cut_strings(&mut c, n);
        c.to_string().len() <= cap
    };
    let (mut lo, mut hi) = (0usize, cap);
    if !fits(0, v) {
        let role = v.get("role").cloned().unwrap_or(json!("assistant"));
        *v = json!({"role": role, "text": "[message too large to store]", "tool_calls": []});
        if role != "assistant" {
            v.as_object_mut().map(|o| o.remove("tool_calls"));
        }
        return;
    }
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid, v) { lo = mid } else { hi = mid - 1 }
    }
    cut_strings(v, lo);
}

/// Cuts every string of `v` longer than `n` bytes (plus the mark) to `n` bytes and the mark.
fn cut_strings(v: &mut Value, n: usize) {
    match v {
        Value::String(s) if s.len() > n + CUT_MARK.len() => {
            let cut = (0..=n).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
            s.truncate(cut);
            s.push_str(CUT_MARK);
        }
        Value::Array(items) => items.iter_mut().for_each(|i| cut_strings(i, n)),
        Value::Object(fields) => fields.values_mut().for_each(|f| cut_strings(f, n)),
        _ => {}
    }
}

/// A page request of a thread's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageQuery {
    /// Only messages before this [`ThreadMessage::seq`] (exclusive).
    pub before: Option<u64>,
    /// Only messages after this one (exclusive).
    pub after: Option<u64>,
    pub limit: usize,
    /// Newest first (the history a run reads) rather than oldest first (`GET /threads/{id}`).
    pub newest_first: bool,
}

/// How much of its thread a run shows its model: at most the last `messages` messages of the runs
/// before it, and fewer when those would take more than about `tokens` tokens (4 bytes of JSON a
/// token, the rule the model limits estimate with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryBound {
    pub messages: usize,
    pub tokens: u64,
}

impl Default for HistoryBound {
    /// 40 messages, 16,000 tokens: a long conversation's gist within a small model's context.
    fn default() -> Self {
        Self {
            messages: 40,
            tokens: 16_000,
        }
    }
}

/// The variables that override [`HistoryBound`]'s defaults (and what code set).
pub const HISTORY_MESSAGES_ENV: &str = "JOBKIT_THREAD_HISTORY_MESSAGES";
pub const HISTORY_TOKENS_ENV: &str = "JOBKIT_THREAD_HISTORY_TOKENS";

/// A history bound variable that is not a number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} must be a whole number (got {value:?})")]
pub struct InvalidHistoryBound {
    pub name: &'static str,
    pub value: String,
}

impl HistoryBound {
    /// `self` with what [`HISTORY_MESSAGES_ENV`] and [`HISTORY_TOKENS_ENV`] set, naming the bad one.
    pub fn with_env(self) -> Result<Self, InvalidHistoryBound> {
        self.with_vars(|name| std::env::var(name).ok())
    }

    fn with_vars(
        mut self,
        var: impl Fn(&'static str) -> Option<String>,
    ) -> Result<Self, InvalidHistoryBound> {
        let read = |name: &'static str| -> Result<Option<u64>, InvalidHistoryBound> {
            var(name)
                .filter(|v| !v.is_empty())
                .map(|v| {
                    v.trim().parse().map_err(|_| InvalidHistoryBound {
                        name,
                        value: v.clone(),
                    })
                })
                .transpose()
        };
        if let Some(n) = read(HISTORY_MESSAGES_ENV)? {
            self.messages = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = read(HISTORY_TOKENS_ENV)? {
            self.tokens = n;
        }
        Ok(self)
    }
}

/// How the run before a run ended, as its job said when the gate let the run start (a consistent
/// read): its position and how many messages it left (indices `0..said`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEnd {
    pub run: u64,
    pub said: u32,
}

impl RunEnd {
    /// The end of the run `run` (as its job holds it). A run that recorded no count left at least its
    /// user message, which its submit wrote.
    pub fn of(run: &ThreadRun) -> Self {
        Self {
            run: run.position,
            said: run.said.unwrap_or(1).max(1),
        }
    }

    /// The places of its last `limit` messages (all a history of `limit` messages can show).
    pub fn last(&self, limit: usize) -> std::ops::Range<u32> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        self.said.saturating_sub(limit)..self.said
    }
}

/// The newest `limit` messages of `listed` (as the index listed them, newest first) and `latest`
/// (read by key), newest first, each once: the history as a consistent list would have had it, when
/// `latest` holds everything the list may have missed.
pub fn with_latest(
    listed: Vec<ThreadMessage>,
    latest: Vec<ThreadMessage>,
    limit: usize,
) -> Vec<ThreadMessage> {
    let by_seq: std::collections::BTreeMap<u64, ThreadMessage> = listed
        .into_iter()
        .chain(latest)
        .map(|m| (m.seq(), m))
        .collect();
    by_seq.into_values().rev().take(limit).collect()
}

/// Said to the model in place of an answer a run did not give (it failed or was interrupted before
/// answering), so the conversation the model reads alternates as providers require.
pub const NO_ANSWER: &str = "(this run ended without an answer)";

/// The messages a run shows its model from `earlier` (the runs before it, oldest first): whole runs'
/// worth from the end, within `bound`. It starts at a user message (never at a tool result whose call
/// was cut off), and a run that ended without an answer gets [`NO_ANSWER`] after its last message.
pub fn window(earlier: &[ThreadMessage], bound: HistoryBound) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for (i, m) in earlier.iter().enumerate() {
        out.push(m.message.clone());
        let run_ends = earlier.get(i + 1).is_none_or(|next| next.run != m.run);
        if run_ends && !m.is_answer() {
            out.push(json!({"role": "assistant", "text": NO_ANSWER, "tool_calls": []}));
        }
    }
    let tokens = |v: &Value| (v.to_string().len() / 4) as u64;
    let mut start = out.len().saturating_sub(bound.messages);
    let mut spent: u64 = out[start..].iter().map(tokens).sum();
    while start < out.len() && spent > bound.tokens {
        spent -= tokens(&out[start]);
        start += 1;
    }
    while start < out.len() && out[start].get("role").and_then(Value::as_str) != Some("user") {
        start += 1;
    }
    out.split_off(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(run: u64, index: u32, message: Value) -> ThreadMessage {
        ThreadMessage::new(run, index, JobId::generate(0), 0, message)
    }

    #[test]
    fn policies_parse_by_name_only() {
        for p in [Policy::Enqueue, Policy::Reject, Policy::Interrupt] {
            assert_eq!(Policy::parse(p.as_str()), Ok(p));
        }
        assert!(Policy::parse("Enqueue").is_err() && Policy::parse("").is_err());
        assert_eq!(Policy::default(), Policy::Enqueue);
    }

    #[test]
    fn a_thread_is_gone_for_everyone_at_its_expiry_and_for_others_always() {
        let t = Thread::new("ann".into(), Policy::Enqueue, MIN_TTL, 1_000_000);
        assert!(t.visible_to("ann", 1_000_000) && !t.visible_to("bob", 1_000_000));
        assert!(!t.visible_to("ann", 1_000_000 + 60_000));
        let run = t.next_run();
        assert_eq!((run.position, run.after), (1, None));
        let job = JobId::generate(0);
        let linked = t.linking(&job);
        assert_eq!(linked.next_run().after, Some(job));
        assert_eq!(linked.next_run().position, 2);
    }

    #[test]
    fn an_oversized_message_is_cut_under_the_limit_and_says_so() {
        let huge = "é".repeat(300_000);
        let m = msg(1, 0, json!({"role": "user", "text": huge}));
        let stored = serde_json::to_string(&m.message).unwrap();
        assert!(stored.len() <= MAX_MESSAGE_BYTES, "{}", stored.len());
        assert!(
            stored.len() > MAX_MESSAGE_BYTES - 1024,
            "cut no more than needed"
        );
        assert!(m.message["text"].as_str().unwrap().ends_with("[truncated]"));
        assert_eq!(m.truncated_from, Some(huge.len() as u64 + 25));
        let small = msg(1, 1, json!({"role": "user", "text": "hi"}));
        assert_eq!(
            (small.truncated_from, small.message["text"].as_str()),
            (None, Some("hi"))
        );
        let many: Vec<Value> = (0..20_000).map(|i| json!({"id": i})).collect();
        let m = msg(1, 2, json!({"role": "tool", "results": many}));
        assert!(m.message.to_string().len() <= MAX_MESSAGE_BYTES);
        assert_eq!(m.message["text"], "[message too large to store]");
    }

    #[test]
    fn the_window_keeps_the_last_messages_from_a_user_message_and_fills_missing_answers() {
        let user = |t: &str| json!({"role": "user", "text": t});
        let answer = |t: &str| json!({"role": "assistant", "text": t, "tool_calls": []});
        let call = json!({"role": "assistant", "text": "", "tool_calls": [{"id": "1", "name": "c", "input": {}}]});
        let result = json!({"role": "tool", "results": [{"id": "1", "content": "2"}]});
        let earlier = vec![
            msg(1, 0, user("a")),
            msg(1, 1, answer("A")),
            msg(2, 0, user("b")),
            msg(2, 1, call.clone()),
            msg(2, 2, result.clone()),
            msg(2, 3, answer("B")),
            msg(3, 0, user("c")), // failed: no answer
        ];
        let all = window(&earlier, HistoryBound::default());
        assert_eq!(all.len(), 8);
        assert_eq!(all[7]["text"], NO_ANSWER);
        // Four messages from the end would start at the tool result: the window starts after it.
        let last4 = window(
            &earlier,
            HistoryBound {
                messages: 4,
                tokens: u64::MAX,
            },
        );
        assert_eq!(last4, vec![user("c"), answer(NO_ANSWER)]);
        let last5 = window(
            &earlier,
            HistoryBound {
                messages: 6,
                tokens: u64::MAX,
            },
        );
        assert_eq!(last5[0], user("b"));
        assert_eq!(last5.len(), 6);
        let tight = window(
            &earlier,
            HistoryBound {
                messages: 100,
                tokens: 20,
            },
        );
        assert!(tight.len() <= 2, "{tight:?}");
        assert!(window(&[], HistoryBound::default()).is_empty());
    }

    #[test]
    fn the_latest_run_read_by_key_fills_what_the_index_missed_once() {
        let user = |t: &str| json!({"role": "user", "text": t});
        let all: Vec<ThreadMessage> = (1..=3)
            .flat_map(|run| (0..2).map(move |i| msg(run, i, user(&format!("{run}.{i}")))))
            .collect();
        let newest_first = |ms: &[ThreadMessage]| ms.iter().rev().cloned().collect::<Vec<_>>();
        // The index has not listed run 3's answer yet, nor anything of it: read by key, merged.
        let listed = newest_first(&all[..5]);
        let merged = with_latest(listed.clone(), all[4..].to_vec(), 4);
        assert_eq!(merged, newest_first(&all[2..]));
        let lagging = newest_first(&all[..4]);
        assert_eq!(with_latest(lagging, all[4..].to_vec(), 4), merged);
        // Consistent already (the embedded store): nothing changes.
        assert_eq!(
            with_latest(newest_first(&all[2..]), all[4..].to_vec(), 4),
            merged
        );
        let end = RunEnd::of(&ThreadRun {
            said: Some(5),
            ..Thread::new("ann".into(), Policy::Enqueue, MIN_TTL, 0).next_run()
        });
        assert_eq!((end.run, end.last(40), end.last(2)), (1, 0..5, 3..5));
        let unrecorded =
            RunEnd::of(&Thread::new("ann".into(), Policy::Enqueue, MIN_TTL, 0).next_run());
        assert_eq!(unrecorded.last(40), 0..1);
    }

    #[test]
    fn the_history_bound_takes_the_environment_and_names_a_bad_variable() {
        let vars = |m: &'static str, t: &'static str| {
            move |name: &'static str| {
                Some(if name == HISTORY_MESSAGES_ENV { m } else { t }.to_owned())
            }
        };
        let b = HistoryBound::default().with_vars(vars("7", "")).unwrap();
        assert_eq!(
            b,
            HistoryBound {
                messages: 7,
                tokens: 16_000
            }
        );
        let e = HistoryBound::default()
            .with_vars(vars("7", "lots"))
            .unwrap_err();
        assert_eq!(e.name, HISTORY_TOKENS_ENV);
    }
}
