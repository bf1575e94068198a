//! **The** place where this project's job kinds are registered. The submit function (which rejects
//! unknown kinds), the worker (which runs them) and `jobctl` (`dev`, and the local commands) all call
//! [`registry`], so adding a kind is one edit here.

use jobkit::HandlerRegistry;

/// Every kind this project runs: the built-ins (`echo`, `sleep`) plus your own, e.g.
///
/// ```ignore
/// r.register_fn("summarize", |input: Summarize, ctx: JobContext| async move { /* ... */ })?;
/// ```
pub fn registry() -> HandlerRegistry {
    HandlerRegistry::with_builtins()
}
