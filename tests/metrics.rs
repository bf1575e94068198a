//! The metrics a worker invocation and a few submits print, read back as CloudWatch Embedded Metric
//! Format lines: names, units and dimensions. Its own test binary: the recorder is process-global.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use support::*;

/// Every metric in the flushed lines: name -> (unit, dimension names, dimension values seen).
type Seen = BTreeMap<String, (String, BTreeSet<String>, BTreeSet<String>)>;

fn read(lines: &str) -> Seen {
    let mut seen = Seen::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let doc: Value = serde_json::from_str(line).expect("each line is one JSON document");
        let ns = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(ns["Namespace"], "jobkit-test", "{line}");
        let dims: Vec<String> = ns["Dimensions"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_owned())
            .collect();
        for m in ns["Metrics"].as_array().unwrap() {
            let name = m["Name"].as_str().unwrap().to_owned();
            assert!(!doc[&name].is_null(), "a value for {name}: {line}");
            let entry = seen.entry(name).or_default();
            entry.0 = m["Unit"].as_str().unwrap_or_default().to_owned();
            entry.1.extend(dims.iter().cloned());
            for d in &dims {
                entry.2.insert(format!("{d}={}", doc[d].as_str().unwrap()));
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_invocation_prints_emf_with_names_units_and_dimensions() {
    let metrics = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace("jobkit-test")
        .with_dimension("Service", "svc")
        .with_dimension("Function", "worker")
        .init()
        .unwrap();
    jobkit::observe::describe();
    let fake = support::model::fake_model(support::model::Script::ToolThenAnswer).await;
    let registry = || registry(&fake.url);
    let s = memory().await;
    let api = s.api_with_settings(registry(), jobkit::api::ApiSettings::from_config(&s.config));
    for body in [
        json!({"kind": "agent", "input": {"agent": "mathy", "message": "6 times 7?"}}),
        json!({"kind": "echo", "input": 1}),
        json!({"kind": "flaky", "input": {"fail": "terminal"}}),
        json!({"kind": "flaky", "input": {"fail": "panic", "times": 1}}),
    ] {
        assert_eq!(
            api.handle(post_jobs("m", &body.to_string())).await.status(),
            202
        );
    }
    let refused = api
        .handle(post_jobs("m", r#"{"kind":"nope","input":1}"#))
        .await;
    assert_eq!(refused.status(), 422);
    // A malformed message with a made-up kind must not become a dimension.
    s.queue
        .send(
            r#"{"job_id":"01JF0000000000000000000000","kind":"user-chosen"}"#,
            std::time::Duration::ZERO,
        )
        .await
        .unwrap();
    let worker = s.event_source(registry(), fast_settings(5));
    let (batch, _) = worker.poll_once().await.unwrap();
    assert_eq!(batch.len(), 5, "one invocation of five deliveries");

    // A wait: parked by the worker, timed out by the sweep, which resumes it.
    let (_, waiting) = json(
        &api.handle(post_jobs("m", r#"{"kind":"nap","input":1}"#))
            .await,
    );
    let waiting = waiting["job_id"].as_str().unwrap().to_owned();
    eventually(
        "the job to park",
        std::time::Duration::from_secs(30),
        async || {
            let _ = worker.poll_once().await;
            let (_, v) = json(&api.handle(get_job("m", &waiting)).await);
            (v["status"] == "waiting").then_some(())
        },
    )
    .await;
    eventually(
        "the sweep to time it out",
        std::time::Duration::from_secs(30),
        async || {
            let report = s.sweeper().sweep(jobkit::sweep::SWEEP_AFTER).await.unwrap();
            (report.timed_out == 1 && report.resumed == 1).then_some(())
        },
    )
    .await;

    let mut out = Vec::new();
    metrics.flush(&mut out).unwrap();
    let lines = String::from_utf8(out).unwrap();
    println!("EMF lines of one worker invocation (and three submits):\n{lines}");
    let seen = read(&lines);

    let expect = |name: &str, unit: &str, dims: &[&str]| {
        let (u, d, _) = seen
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing: {seen:?}"));
        assert_eq!(u, unit, "{name}'s unit");
        let want: BTreeSet<String> = ["Service", "Function"]
            .iter()
            .chain(dims)
            .map(|s| s.to_string())
            .collect();
        assert_eq!(d, &want, "{name}'s dimensions");
    };
    expect("JobsAccepted", "Count", &["Kind"]);
    expect("SubmitRejected", "Count", &["Status"]);
    expect("Attempts", "Count", &["Kind", "Outcome"]);
    expect("Outcomes", "Count", &["Outcome"]);
    expect("HandlerDuration", "Milliseconds", &["Kind"]);
    expect("QueueWait", "Milliseconds", &["Kind"]);
    expect("EndToEnd", "Milliseconds", &["Kind"]);
    expect("Panics", "Count", &["Kind"]);
    expect("BatchSize", "Count", &[]);
    expect("BatchFailures", "Count", &[]);
    expect("JobsParked", "Count", &["Kind"]);
    expect("JobsResumed", "Count", &["Kind"]);
    expect("WaitDuration", "Milliseconds", &["Kind"]);
    expect("WaitTimeouts", "Count", &["Kind"]);

    let values = |name: &str| seen[name].2.clone();
    for tokens in ["InputTokens", "OutputTokens", "ModelRequests"] {
        expect(tokens, "Count", &["Model"]);
        assert!(
            values(tokens).contains("Model=fake"),
            "{tokens}: {:?}",
            values(tokens)
        );
    }
    for v in [
        "Outcome=completed",
        "Outcome=failed",
        "Outcome=retried",
        "Outcome=missing",
    ] {
        assert!(
            values("Outcomes").contains(v),
            "{v}: {:?}",
            values("Outcomes")
        );
    }
    assert!(values("SubmitRejected").contains("Status=422"));
    assert!(
        values("Attempts").contains("Kind=other"),
        "unknown kinds are bounded"
    );
    assert!(
        !values("Attempts").iter().any(|v| v.contains("user-chosen")),
        "a message cannot mint a dimension"
    );
    assert!(values("Panics").contains("Kind=flaky"));
    for wait in ["JobsParked", "JobsResumed", "WaitDuration", "WaitTimeouts"] {
        assert!(
            values(wait).contains("Kind=nap"),
            "{wait}: {:?}",
            values(wait)
        );
    }
}

/// The test kinds plus `nap`, a durable sleep of a millisecond, and the `mathy` agent on the fake model
/// at `model_url` (model id `fake`).
fn registry(model_url: &str) -> jobkit::HandlerRegistry {
    let mut r = test_registry();
    support::model::add_mathy(
        &mut r,
        std::sync::Arc::new(jobkit::agent::OpenAiCompatible::new(model_url, None)),
        "fake",
        std::sync::Arc::default(),
    );
    r.register_fn("nap", |_: Value, ctx| async move {
        ctx.sleep("nap", std::time::Duration::from_millis(1))
            .await?;
        Ok(json!("rested"))
    })
    .unwrap();
    r
}

/// The metric names a dashboard or alarm definition reads from the kit's namespace.
fn names_read(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            // SEARCH('{ns,...} MetricName="X" ...')
            for part in s.split("MetricName=\"").skip(1) {
                out.insert(part.split('"').next().unwrap().to_owned());
            }
        }
        Value::Array(items) => {
            // ["${MetricsNamespace}", "Name", ...] metric rows.
            if items.first() == Some(&json!("${MetricsNamespace}")) {
                out.insert(items[1].as_str().unwrap().to_owned());
            }
            items.iter().for_each(|i| names_read(i, out));
        }
        Value::Object(map) => map.values().for_each(|i| names_read(i, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_and_the_failure_rate_alarm_read_metrics_the_kit_emits() {
    let template: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(jobkit::template::TEMPLATE_YAML).expect("template.yaml parses");
    let template: Value = serde_json::to_value(&template).unwrap();
    let resources = &template["Resources"];
    let emitted: BTreeSet<String> = jobkit::observe::COUNTERS
        .iter()
        .chain(jobkit::observe::HISTOGRAMS)
        .map(|s| s.to_string())
        .collect();

    // `!Sub [body, vars]`: the body is JSON as it stands (its ${...} references sit inside strings).
    let sub = &resources["Dashboard"]["Properties"]["DashboardBody"];
    let body = sub
        .as_object()
        .and_then(|tagged| tagged.values().next())
        .and_then(|args| args[0].as_str())
        .unwrap_or_else(|| panic!("DashboardBody is a !Sub [body, vars]: {sub}"));
    let dashboard: Value = serde_json::from_str(body).expect("the dashboard body is JSON");
    let mut read = BTreeSet::new();
    names_read(&dashboard, &mut read);
    for required in [
        "Attempts",
        "Outcomes",
        "QueueWait",
        "EndToEnd",
        "HandlerDuration",
        "WebhookAttempts",
    ] {
        assert!(
            read.contains(required),
            "the dashboard shows {required}: {read:?}"
        );
    }
    for name in &read {
        assert!(
            emitted.contains(name),
            "the dashboard reads {name}, which the kit never emits"
        );
    }
    let widgets = dashboard["widgets"].as_array().unwrap();
    assert!(widgets.len() >= 10, "{} widgets", widgets.len());

    // The failure-rate alarm: the worker's Outcomes, with outcomes the worker records.
    let alarm = &resources["FailureRateAlarm"]["Properties"];
    let metrics = alarm["Metrics"].as_array().unwrap();
    let outcomes: BTreeSet<&str> = [
        jobkit::worker::Outcome::Completed,
        jobkit::worker::Outcome::Failed,
        jobkit::worker::Outcome::Retrying,
        jobkit::worker::Outcome::DeadLettered,
        jobkit::worker::Outcome::Cancelled,
        jobkit::worker::Outcome::Continued,
    ]
    .iter()
    .map(|o| o.as_str())
    .collect();
    let mut seen = BTreeSet::new();
    for m in metrics.iter().filter(|m| m.get("MetricStat").is_some()) {
        let metric = &m["MetricStat"]["Metric"];
        assert_eq!(metric["MetricName"], "Outcomes");
        let outcome = metric["Dimensions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["Name"] == "Outcome")
            .unwrap()["Value"]
            .as_str()
            .unwrap();
        assert!(
            outcomes.contains(outcome),
            "{outcome} is not an outcome the worker records"
        );
        seen.insert(outcome);
    }
    assert_eq!(
        seen, outcomes,
        "the rate's denominator counts every finished attempt"
    );
    let expression = metrics
        .iter()
        .find_map(|m| m["Expression"].as_str())
        .unwrap();
    assert!(expression.contains("failed") && expression.contains("dead"));
}
