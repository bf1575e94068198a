//! A webhook receiver for the suites: `tests/webhooks/receiver.py`, which checks every delivery with
//! the reference `standardwebhooks` library from PyPI (not jobkit's code), installed on first use into
//! `.venv/receiver`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use super::repo_root;

const STANDARDWEBHOOKS: &str = "standardwebhooks==1.1.0";

/// The venv's python, with `standardwebhooks` installed (once per test process).
fn python() -> std::path::PathBuf {
    static READY: OnceLock<std::path::PathBuf> = OnceLock::new();
    READY
        .get_or_init(|| {
            let venv = repo_root().join(".venv/receiver");
            let python = venv.join("bin/python");
            let installed = Command::new(&python)
                .args(["-c", "import standardwebhooks"])
                .status()
                .is_ok_and(|s| s.success());
            if !installed {
                let made = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .expect("python3 runs");
                assert!(made.success(), "python3 -m venv .venv/receiver failed");
                let pip = Command::new(&python)
                    .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                    .arg(STANDARDWEBHOOKS)
                    .status()
                    .expect("pip runs");
                assert!(pip.success(), "pip install {STANDARDWEBHOOKS} failed");
            }
            python
        })
        .clone()
}

/// A running receiver; killed when dropped.
pub struct Receiver {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Receiver {
    /// Starts a receiver verifying with `secret`; `/slow-once` waits `slow_secs`.
    pub fn start(secret: &str, slow_secs: f64) -> Self {
        let mut child = Command::new(python())
            .arg(repo_root().join("tests/webhooks/receiver.py"))
            .arg(secret)
            .arg(slow_secs.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the receiver starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the receiver prints its port");
        let port: u16 = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected receiver output {line:?}"));
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The URL of one of its behaviours (`/ok`, `/fail-twice`, ...).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every delivery received so far.
    pub async fn log(&self) -> Vec<Value> {
        reqwest::get(format!("{}/log", self.base))
            .await
            .expect("the receiver answers")
            .json()
            .await
            .expect("a JSON log")
    }

    /// The deliveries of event `id`.
    pub async fn deliveries_of(&self, id: &str) -> Vec<Value> {
        self.log()
            .await
            .into_iter()
            .filter(|d| d["id"] == id)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
