//! `GET /kinds`: the registered kinds with their input and output JSON Schemas, so a client can see
//! what a kind takes before submitting (submit checks every input against the same types).

use std::sync::Arc;

use axum::Json as JsonBody;
use axum::extract::State;
use serde::Serialize;

use super::{Caller, SubmitApi};
use crate::handler::KindInfo;

/// The answer of `GET /kinds`.
#[derive(Debug, Serialize)]
pub struct KindList {
    /// By name.
    pub kinds: Vec<KindInfo>,
}

/// Served by the submit function: it holds the registry submit checks against, so the list is exactly
/// what it accepts.
pub(super) async fn list(State(api): State<Arc<SubmitApi>>, _: Caller) -> JsonBody<KindList> {
    JsonBody(KindList {
        kinds: api.registry().describe(),
    })
}
