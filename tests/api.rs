//! API security: identity, isolation, list and cancel, validation, backpressure (issue 5).

mod support;
