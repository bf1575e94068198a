//! The API against openapi.yaml: schemathesis drives `jobctl dev` (tests/openapi/run.sh).
