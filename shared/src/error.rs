//! The error alias every layer shares. A leaf of the module graph: it imports nothing from the crate, so
//! no module reaches upward for an error type.

/// Any error, boxed: the `source` of the kit's typed errors and the error of plumbing code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The text a caught panic carries (`panic!("...")` makes a `&str` or a `String`).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}
