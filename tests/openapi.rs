//! The API against openapi.yaml: schemathesis drives `jobctl dev` (tests/openapi/run.sh). Every response
//! must be one the spec documents (status, content type, headers, body schema), no request may cause a
//! 5xx, invalid requests must be rejected and valid ones accepted, undocumented methods must answer 405
//! with the right `Allow`, and submitted jobs must be readable and cancellable through the spec's links.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_api_conforms_to_openapi_yaml() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new("bash")
        .arg(root.join("tests/openapi/run.sh"))
        .current_dir(&root)
        .output()
        .expect("bash runs tests/openapi/run.sh");
    // Printed through the test harness, so `cargo test` shows it only on failure (or with --nocapture).
    println!("{}", String::from_utf8_lossy(&output.stdout));
    println!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "schemathesis found responses that do not conform to openapi.yaml, or the run failed \
         (its output is above; reproduce with `bash tests/openapi/run.sh`)"
    );
}
