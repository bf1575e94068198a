//! End to end with the real Lambda binaries on the emulator (tests/e2e/run.sh, tests/e2e/e2e.py):
//! template.yaml deployed through its CloudFormation, the functions run by its Lambda executor, the SQS
//! event-source mapping with partial batch responses, driven through the API Gateway endpoint only.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_real_binaries_deployed_from_template_yaml_serve_jobs_through_the_api() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new("bash")
        .arg(root.join("tests/e2e/run.sh"))
        .status()
        .expect("bash runs tests/e2e/run.sh");
    assert!(
        status.success(),
        "the end-to-end run failed (its output is above)"
    );
}
