//! Trace context across the queue: the submit request's W3C `traceparent` travels with the job's message
//! (an SQS message attribute, and `AWSTraceHeader` for X-Ray when active tracing is on), and the worker's
//! span for that job records the same trace id with the submit as its parent, so one job reads as one
//! trace from its POST to its worker, and every log line of the job can be found by trace id.

use std::fmt;

/// The message attribute that carries the context.
pub const ATTRIBUTE: &str = "traceparent";

/// A W3C trace context: `00-<trace id>-<parent span id>-<flags>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, not all zero: the span that sent this context.
    pub span_id: String,
    pub sampled: bool,
}

fn hex_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && s.bytes().any(|b| b != b'0')
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl TraceContext {
    /// A new trace, for a request that brought none.
    pub fn root() -> Self {
        Self {
            trace_id: random_hex(16),
            span_id: random_hex(8),
            sampled: true,
        }
    }

    /// Parses a `traceparent` header (version 00; anything malformed is `None`, per the spec's "restart
    /// the trace").
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00"
            || parts.next().is_some()
            || !hex_id(trace_id, 32)
            || !hex_id(span_id, 16)
        {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16)
            .ok()
            .filter(|_| flags.len() == 2)?;
        Some(Self {
            trace_id: trace_id.to_owned(),
            span_id: span_id.to_owned(),
            sampled: flags & 1 == 1,
        })
    }

    /// From an X-Ray header (`Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1`):
    /// the same trace id, as W3C writes it.
    pub fn from_xray(header: &str) -> Option<Self> {
        let field = |name: &str| {
            header
                .split(';')
                .find_map(|kv| kv.trim().strip_prefix(name)?.strip_prefix('='))
        };
        let root = field("Root")?;
        let mut r = root.split('-');
        let (one, time, unique) = (r.next()?, r.next()?, r.next()?);
        let trace_id = format!("{time}{unique}").to_lowercase();
        if one != "1" || !hex_id(&trace_id, 32) {
            return None;
        }
        let span_id = field("Parent")
            .map(str::to_lowercase)
            .filter(|p| hex_id(p, 16))
            .unwrap_or_else(|| random_hex(8));
        Some(Self {
            trace_id,
            span_id,
            sampled: field("Sampled") != Some("0"),
        })
    }

    /// The context a new span under this one hands on: same trace, a fresh span id.
    pub fn child(&self) -> Self {
        Self {
            span_id: random_hex(8),
            ..self.clone()
        }
    }

    /// The X-Ray form of the trace id (`1-<8 hex>-<24 hex>`), for `AWSTraceHeader`.
    pub fn xray_header(&self) -> String {
        format!(
            "Root=1-{}-{};Parent={};Sampled={}",
            &self.trace_id[..8],
            &self.trace_id[8..],
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

/// The context of a submit request: its `traceparent` header, else the invocation's X-Ray trace (Lambda
/// sets `_X_AMZN_TRACE_ID`), else a new trace; then a child for the submit's own span.
pub fn for_request(traceparent: Option<&str>) -> TraceContext {
    traceparent
        .and_then(TraceContext::parse)
        .or_else(|| {
            std::env::var("_X_AMZN_TRACE_ID")
                .ok()
                .and_then(|h| TraceContext::from_xray(&h))
        })
        .unwrap_or_else(TraceContext::root)
        .child()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_malformed_ones_restart() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse(h).unwrap();
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(t.sampled);
        assert_eq!(t.to_string(), h);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_takes_a_new_span() {
        let t = TraceContext::root();
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.span_id, t.span_id);
        assert_eq!(TraceContext::parse(&c.to_string()), Some(c));
    }

    #[test]
    fn xray_headers_convert_both_ways() {
        let x = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let t = TraceContext::from_xray(x).unwrap();
        assert_eq!(t.trace_id, "5759e988bd862e3fe1be46a994272793");
        assert_eq!(t.span_id, "53995c3f42cd8ad8");
        assert_eq!(t.xray_header(), x);
        assert_eq!(
            TraceContext::from_xray("Root=2-5759e988-bd86;Sampled=1"),
            None
        );
    }
}
