//! Reads the queues and the table out of template.yaml, so resources created on an emulator (or by
//! `jobctl`) are the deployed ones, not a restatement that can drift. Pure: parsing and evaluation only;
//! `queue::sqs::create_queues` and `store::dynamo::create_table` create what it describes.
//!
//! Supported intrinsics inside those resources: `Ref` (parameters, with their defaults or overrides, and
//! resources), `Fn::GetAtt X.Arn`, `Fn::FindInMap` and `Fn::Join`, in short (`!Ref`) or long form; a resource's
//! `Condition` with `Fn::Equals`, `Fn::Not`, `Fn::And`, `Fn::Or` and `Condition` (a resource whose
//! condition is false is not created). Anything else is an error, so an unsupported construct fails
//! loudly rather than creating something different.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use serde_yaml_ng::Value as Yaml;

/// The template shipped with the kit.
pub const TEMPLATE_YAML: &str = include_str!("../../template.yaml");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template is not valid YAML: {0}")]
    Yaml(String),
    #[error("{0}: unsupported or malformed construct: {1}")]
    Unsupported(String, String),
    #[error("parameter {0} has no default and no override")]
    MissingParameter(String),
    #[error("unknown parameter override {0}")]
    UnknownParameter(String),
}

/// A queue to create: CreateQueue attributes, and its dead-letter target if it has a redrive policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub logical_id: String,
    pub attributes: BTreeMap<String, String>,
    pub redrive: Option<Redrive>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    /// Logical id of the dead-letter queue.
    pub dead_letter_queue: String,
    pub max_receive_count: u32,
}

/// A table to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub logical_id: String,
    /// (name, S|N|B)
    pub attribute_definitions: Vec<(String, String)>,
    /// (name, HASH|RANGE)
    pub key_schema: Vec<(String, String)>,
    pub global_secondary_indexes: Vec<IndexSpec>,
    pub ttl_attribute: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    pub name: String,
    pub key_schema: Vec<(String, String)>,
    pub projection_type: String,
}

/// How a function's SQS event source feeds it (what `jobctl dev` reproduces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSourceSpec {
    /// Messages per invocation (`BatchSize`).
    pub batch_size: u32,
    /// Invocations at once (`ScalingConfig.MaximumConcurrency`), if bounded.
    pub maximum_concurrency: Option<u32>,
}

/// The local-relevant part of the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSpec {
    /// Resolved parameter values (defaults, then overrides).
    pub parameters: BTreeMap<String, String>,
    /// Queues in creation order: every dead-letter queue before the queues that redrive to it.
    pub queues: Vec<QueueSpec>,
    pub tables: Vec<TableSpec>,
    /// The SQS event source of each function that has one, by the function's logical id.
    pub event_sources: BTreeMap<String, EventSourceSpec>,
}

impl StackSpec {
    pub fn queue(&self, logical_id: &str) -> Option<&QueueSpec> {
        self.queues.iter().find(|q| q.logical_id == logical_id)
    }

    pub fn table(&self, logical_id: &str) -> Option<&TableSpec> {
        self.tables.iter().find(|t| t.logical_id == logical_id)
    }
}

/// Parses `yaml`, with `overrides` replacing parameter defaults (as `sam deploy --parameter-overrides`).
pub fn parse(yaml: &str, overrides: &BTreeMap<String, String>) -> Result<StackSpec, TemplateError> {
    let doc = to_json_value(yaml)?;
    let empty = Map::new();
    let section = |name: &str| doc.get(name).and_then(Value::as_object).unwrap_or(&empty);

    let mut parameters = BTreeMap::new();
    for (name, def) in section("Parameters") {
        if let Some(v) = def.get("Default") {
            parameters.insert(name.clone(), scalar(v).unwrap_or_default());
        }
    }
    for (name, v) in overrides {
        if !section("Parameters").contains_key(name) {
            return Err(TemplateError::UnknownParameter(name.clone()));
        }
        parameters.insert(name.clone(), v.clone());
    }
    let ctx = Eval {
        parameters: &parameters,
        mappings: section("Mappings"),
        resources: section("Resources"),
        conditions: section("Conditions"),
    };

    let mut queues = Vec::new();
    let mut tables = Vec::new();
    let mut event_sources = BTreeMap::new();
    for (id, res) in section("Resources") {
        if let Some(name) = res.get("Condition") {
            let name = name
                .as_str()
                .ok_or_else(|| TemplateError::Unsupported(id.clone(), name.to_string()))?;
            if !ctx.condition(id, name)? {
                continue;
            }
        }
        let props = res.get("Properties").cloned().unwrap_or(json!({}));
        match res.get("Type").and_then(Value::as_str) {
            Some("AWS::SQS::Queue") => queues.push(queue_spec(id, &ctx.eval(id, &props)?)?),
            Some("AWS::DynamoDB::Table") => tables.push(table_spec(id, &ctx.eval(id, &props)?)?),
            Some("AWS::Serverless::Function") => {
                if let Some(source) = event_source_spec(&ctx, id, &props)? {
                    event_sources.insert(id.clone(), source);
                }
            }
            _ => {}
        }
    }
    // Dead-letter queues (no redrive of their own) first.
    queues.sort_by_key(|q| q.redrive.is_some());
    Ok(StackSpec {
        parameters,
        queues,
        tables,
        event_sources,
    })
}

/// The whole template as JSON, intrinsics in their long form, unevaluated: for checks of resources this
/// module does not read (the API's CORS, its routes).
pub(crate) fn to_json_value(yaml: &str) -> Result<Value, TemplateError> {
    let doc: Yaml =
        serde_yaml_ng::from_str(yaml).map_err(|e| TemplateError::Yaml(e.to_string()))?;
    Ok(to_json(&doc))
}

/// The function's SQS event (the first, if several): only its sizes are evaluated, so the rest of the
/// function may use intrinsics this module does not support.
fn event_source_spec(
    ctx: &Eval<'_>,
    id: &str,
    props: &Value,
) -> Result<Option<EventSourceSpec>, TemplateError> {
    let Some(event) = props
        .get("Events")
        .and_then(Value::as_object)
        .and_then(|events| events.values().find(|e| e["Type"] == "SQS"))
    else {
        return Ok(None);
    };
    let number = |v: &Value| -> Result<Option<u32>, TemplateError> {
        if v.is_null() {
            return Ok(None);
        }
        let v = ctx.eval(id, v)?;
        scalar(&v)
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| TemplateError::Unsupported(id.to_owned(), v.to_string()))
    };
    let p = &event["Properties"];
    Ok(Some(EventSourceSpec {
        // SQS event sources default to 10 messages per invocation.
        batch_size: number(&p["BatchSize"])?.unwrap_or(10),
        maximum_concurrency: number(&p["ScalingConfig"]["MaximumConcurrency"])?,
    }))
}

/// YAML to JSON, turning CloudFormation short-form tags into their long form (`!Ref X` -> `{"Ref": X}`).
fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => json!(b),
        Yaml::Number(n) => serde_json::to_value(n).unwrap_or(Value::Null),
        Yaml::String(s) => json!(s),
        Yaml::Sequence(s) => Value::Array(s.iter().map(to_json).collect()),
        Yaml::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (scalar(&to_json(k)).unwrap_or_default(), to_json(v)))
                .collect(),
        ),
        Yaml::Tagged(t) => {
            let tag = t.tag.to_string();
            let name = tag.trim_start_matches('!');
            let key = if name == "Ref" || name == "Condition" {
                name.to_owned()
            } else {
                format!("Fn::{name}")
            };
            let mut value = to_json(&t.value);
            // `!GetAtt X.Arn` is the string form of `Fn::GetAtt: [X, Arn]`.
            if name == "GetAtt"
                && let Some((res, attr)) = value.as_str().and_then(|s| s.split_once('.'))
            {
                value = json!([res, attr]);
            }
            json!({ key: value })
        }
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

struct Eval<'a> {
    parameters: &'a BTreeMap<String, String>,
    mappings: &'a Map<String, Value>,
    resources: &'a Map<String, Value>,
    conditions: &'a Map<String, Value>,
}

impl Eval<'_> {
    /// The value of the template's condition `name` (for the resource `at`).
    fn condition(&self, at: &str, name: &str) -> Result<bool, TemplateError> {
        let def = self.conditions.get(name).ok_or_else(|| {
            TemplateError::Unsupported(at.to_owned(), format!("condition {name}"))
        })?;
        self.truth(at, def)
    }

    fn truth(&self, at: &str, v: &Value) -> Result<bool, TemplateError> {
        let bad = || TemplateError::Unsupported(at.to_owned(), v.to_string());
        let (f, arg) = v
            .as_object()
            .filter(|m| m.len() == 1)
            .and_then(|m| m.iter().next())
            .ok_or_else(bad)?;
        let args = || arg.as_array().ok_or_else(bad);
        match f.as_str() {
            "Condition" => self.condition(at, arg.as_str().ok_or_else(bad)?),
            "Fn::Not" => match args()?.as_slice() {
                [one] => Ok(!self.truth(at, one)?),
                _ => Err(bad()),
            },
            "Fn::And" => args()?
                .iter()
                .try_fold(true, |acc, c| Ok(acc & self.truth(at, c)?)),
            "Fn::Or" => args()?
                .iter()
                .try_fold(false, |acc, c| Ok(acc | self.truth(at, c)?)),
            "Fn::Equals" => match args()?.as_slice() {
                [a, b] => Ok(scalar(&self.eval(at, a)?) == scalar(&self.eval(at, b)?)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    /// Resolves parameter refs and maps; resource refs and `GetAtt` stay as they are, for the creator.
    fn eval(&self, at: &str, v: &Value) -> Result<Value, TemplateError> {
        let bad = |what: &Value| TemplateError::Unsupported(at.to_owned(), what.to_string());
        match v {
            Value::Array(items) => items
                .iter()
                .map(|i| self.eval(at, i))
                .collect::<Result<_, _>>()
                .map(Value::Array),
            Value::Object(m)
                if m.len() == 1
                    && m.keys()
                        .next()
                        .is_some_and(|k| k == "Ref" || k.starts_with("Fn::")) =>
            {
                let (f, arg) = m.iter().next().expect("one entry");
                match f.as_str() {
                    "Ref" => {
                        let name = arg.as_str().ok_or_else(|| bad(v))?;
                        if let Some(p) = self.parameters.get(name) {
                            Ok(json!(p))
                        } else if self.resources.contains_key(name) {
                            Ok(v.clone())
                        } else {
                            Err(TemplateError::MissingParameter(name.to_owned()))
                        }
                    }
                    "Fn::GetAtt" => match arg.as_array().map(Vec::as_slice) {
                        Some([Value::String(r), Value::String(a)])
                            if a == "Arn" && self.resources.contains_key(r) =>
                        {
                            Ok(v.clone())
                        }
                        _ => Err(bad(v)),
                    },
                    // `!Join [sep, list]`, where a CommaDelimitedList parameter's `!Ref` is its text
                    // (`a,b`): the usual test for an empty list, `!Join ["", !Ref List]`.
                    "Fn::Join" => {
                        let args = self.eval(at, arg)?;
                        match args.as_array().map(Vec::as_slice) {
                            Some([Value::String(sep), Value::String(list)]) => {
                                Ok(json!(list.split(',').collect::<Vec<_>>().join(sep)))
                            }
                            Some([Value::String(sep), Value::Array(items)]) => items
                                .iter()
                                .map(scalar)
                                .collect::<Option<Vec<_>>>()
                                .map(|items| json!(items.join(sep)))
                                .ok_or_else(|| bad(v)),
                            _ => Err(bad(v)),
                        }
                    }
                    "Fn::FindInMap" => {
                        let args = self.eval(at, arg)?;
                        let keys: Vec<String> = args
                            .as_array()
                            .ok_or_else(|| bad(v))?
                            .iter()
                            .filter_map(scalar)
                            .collect();
                        let [map, k1, k2] = keys.as_slice() else {
                            return Err(bad(v));
                        };
                        self.mappings
                            .get(map)
                            .and_then(|m| m.get(k1))
                            .and_then(|m| m.get(k2))
                            .cloned()
                            .ok_or_else(|| bad(v))
                    }
                    _ => Err(bad(v)),
                }
            }
            Value::Object(m) => m
                .iter()
                .map(|(k, x)| Ok((k.clone(), self.eval(at, x)?)))
                .collect::<Result<Map<_, _>, _>>()
                .map(Value::Object),
            other => Ok(other.clone()),
        }
    }
}

/// CloudFormation queue properties that are CreateQueue attributes of the same name.
const QUEUE_ATTRIBUTES: [&str; 7] = [
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "MaximumMessageSize",
    "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled",
    "FifoQueue",
];

fn queue_spec(id: &str, props: &Value) -> Result<QueueSpec, TemplateError> {
    let bad = |what: &str| TemplateError::Unsupported(id.to_owned(), what.to_owned());
    let mut attributes = BTreeMap::new();
    for name in QUEUE_ATTRIBUTES {
        if let Some(v) = props.get(name) {
            attributes.insert(name.to_owned(), scalar(v).ok_or_else(|| bad(name))?);
        }
    }
    let redrive = match props.get("RedrivePolicy") {
        None => None,
        Some(p) => {
            let target = p
                .pointer("/deadLetterTargetArn/Fn::GetAtt/0")
                .and_then(Value::as_str);
            let count = p
                .get("maxReceiveCount")
                .and_then(scalar)
                .and_then(|c| c.parse().ok());
            match (target, count) {
                (Some(t), Some(c)) => Some(Redrive {
                    dead_letter_queue: t.to_owned(),
                    max_receive_count: c,
                }),
                _ => {
                    return Err(bad(
                        "RedrivePolicy needs deadLetterTargetArn: !GetAtt Q.Arn and maxReceiveCount",
                    ));
                }
            }
        }
    };
    Ok(QueueSpec {
        logical_id: id.to_owned(),
        attributes,
        redrive,
    })
}

fn pairs(v: Option<&Value>, a: &str, b: &str) -> Vec<(String, String)> {
    v.and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| Some((scalar(i.get(a)?)?, scalar(i.get(b)?)?)))
                .collect()
        })
        .unwrap_or_default()
}

fn table_spec(id: &str, props: &Value) -> Result<TableSpec, TemplateError> {
    let key_schema = pairs(props.get("KeySchema"), "AttributeName", "KeyType");
    if key_schema.is_empty() {
        return Err(TemplateError::Unsupported(
            id.to_owned(),
            "KeySchema".into(),
        ));
    }
    let global_secondary_indexes = props
        .get("GlobalSecondaryIndexes")
        .and_then(Value::as_array)
        .map(|gs| {
            gs.iter()
                .map(|g| IndexSpec {
                    name: g.get("IndexName").and_then(scalar).unwrap_or_default(),
                    key_schema: pairs(g.get("KeySchema"), "AttributeName", "KeyType"),
                    projection_type: g
                        .pointer("/Projection/ProjectionType")
                        .and_then(scalar)
                        .unwrap_or_else(|| "ALL".into()),
                })
                .collect()
        })
        .unwrap_or_default();
    let ttl = props.get("TimeToLiveSpecification");
    Ok(TableSpec {
        logical_id: id.to_owned(),
        attribute_definitions: pairs(
            props.get("AttributeDefinitions"),
            "AttributeName",
            "AttributeType",
        ),
        key_schema,
        global_secondary_indexes,
        ttl_attribute: ttl
            .filter(|t| t.get("Enabled").and_then(scalar).as_deref() == Some("true"))
            .and_then(|t| t.get("AttributeName").and_then(scalar)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(overrides: &[(&str, &str)]) -> Result<StackSpec, TemplateError> {
        let o = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(TEMPLATE_YAML, &o)
    }

    #[test]
    fn the_functions_event_sources_are_read_with_their_parameters() {
        let s = shipped(&[("WorkerBatchSize", "4")]).unwrap();
        assert_eq!(s.event_sources["WorkerFunction"].batch_size, 4);
        let deliver = s.event_sources["DeliverFunction"];
        assert_eq!(deliver.batch_size, 10);
        assert_eq!(deliver.maximum_concurrency, Some(10));
    }

    #[test]
    fn the_shipped_template_has_a_queue_redriving_to_a_longer_lived_dlq() {
        let s = shipped(&[]).unwrap();
        let jobs = s.queue("JobsQueue").expect("JobsQueue");
        let dlq = s.queue("JobsDeadLetterQueue").expect("JobsDeadLetterQueue");
        let redrive = jobs.redrive.as_ref().expect("redrive policy");
        assert_eq!(redrive.dead_letter_queue, "JobsDeadLetterQueue");
        assert!(redrive.max_receive_count >= 5);
        let retention = |q: &QueueSpec| {
            q.attributes["MessageRetentionPeriod"]
                .parse::<u64>()
                .unwrap()
        };
        assert!(retention(dlq) > retention(jobs));
        // Each DLQ is created before the queue that redrives to it.
        let position = |id: &str| s.queues.iter().position(|q| q.logical_id == id).unwrap();
        for q in &s.queues {
            if let Some(r) = &q.redrive {
                assert!(position(&r.dead_letter_queue) < position(&q.logical_id));
            }
        }
        // Webhook deliveries outlive their whole retry schedule (about 28 h) and have their own DLQ.
        let deliveries = s.queue("DeliveriesQueue").expect("DeliveriesQueue");
        assert!(retention(deliveries) > 28 * 3600);
        assert_eq!(
            deliveries.redrive.as_ref().unwrap().dead_letter_queue,
            "DeliveriesDeadLetterQueue"
        );
    }

    #[test]
    fn the_container_queue_exists_only_when_asked_for_or_with_a_container_image() {
        let has = |o: &[(&str, &str)]| {
            let s = shipped(o).unwrap();
            match (
                s.queue("ContainerJobsQueue"),
                s.queue("ContainerJobsDeadLetterQueue"),
            ) {
                (Some(q), Some(_)) => {
                    let r = q.redrive.as_ref().expect("a redrive policy");
                    assert_eq!(r.dead_letter_queue, "ContainerJobsDeadLetterQueue");
                    true
                }
                (None, None) => false,
                _ => panic!("the queue and its DLQ come together"),
            }
        };
        assert!(!has(&[]));
        assert!(has(&[("ContainerQueue", "true")]));
        assert!(has(&[(
            "ContainerImage",
            "x.dkr.ecr.eu-west-1.amazonaws.com/w:1"
        )]));
        assert!(!has(&[("ContainerQueue", "false")]));
    }

    #[test]
    fn conditions_evaluate_and_unsupported_ones_fail_loudly() {
        let yaml = |cond: &str| {
            format!(
                "Parameters:\n  P: {{Type: String, Default: a}}\nConditions:\n  C: {cond}\n  D: !Not [!Condition C]\n\
                 Resources:\n  Q:\n    Type: AWS::SQS::Queue\n    Condition: D\n"
            )
        };
        let queues = |cond: &str| parse(&yaml(cond), &BTreeMap::new()).map(|s| s.queues.len());
        assert_eq!(queues("!Equals [!Ref P, a]"), Ok(0));
        assert_eq!(queues("!Equals [!Ref P, b]"), Ok(1));
        assert_eq!(queues("!And [!Equals [!Ref P, a], !Equals [b, b]]"), Ok(0));
        assert_eq!(queues("!Or [!Equals [!Ref P, b], !Equals [a, b]]"), Ok(1));
        assert_eq!(queues("!Equals [!Join [\"\", [a, b]], ab]"), Ok(0));
        assert_eq!(queues("!Equals [!Join [\"-\", !Ref P], a]"), Ok(0));
        assert!(matches!(
            queues("!Contains [[a], !Ref P]"),
            Err(TemplateError::Unsupported(..))
        ));
    }

    #[test]
    fn a_comma_delimited_list_joins_to_test_for_emptiness() {
        let yaml = "Parameters:\n  L: {Type: CommaDelimitedList, Default: \"\"}\nConditions:\n  \
                    Has: !Not [!Equals [!Join [\"\", !Ref L], \"\"]]\nResources:\n  Q:\n    \
                    Type: AWS::SQS::Queue\n    Condition: Has\n";
        let queues =
            |l: &str| parse(yaml, &[("L".to_owned(), l.to_owned())].into()).map(|s| s.queues.len());
        assert_eq!(parse(yaml, &BTreeMap::new()).map(|s| s.queues.len()), Ok(0));
        assert_eq!(queues(""), Ok(0));
        assert_eq!(queues("https://a.example,https://b.example"), Ok(1));
    }

    #[test]
    fn visibility_is_six_times_the_worker_timeout() {
        for t in ["30", "900"] {
            let s = shipped(&[("WorkerTimeout", t)]).unwrap();
            let vis: u64 = s.queue("JobsQueue").unwrap().attributes["VisibilityTimeout"]
                .parse()
                .unwrap();
            assert_eq!(vis, 6 * t.parse::<u64>().unwrap());
        }
    }

    #[test]
    fn the_table_is_keyed_by_job_id_with_a_ttl_and_a_user_index() {
        let s = shipped(&[]).unwrap();
        let t = s.table("JobsTable").expect("JobsTable");
        assert_eq!(t.key_schema, [("job_id".to_owned(), "HASH".to_owned())]);
        assert_eq!(t.ttl_attribute.as_deref(), Some("expires_at"));
        assert!(
            t.global_secondary_indexes
                .iter()
                .any(|g| g.name == "by_user_shard")
        );
        let due = t
            .global_secondary_indexes
            .iter()
            .find(|g| g.name == "by_due");
        assert_eq!(
            due.map(|g| (g.key_schema.clone(), g.projection_type.as_str())),
            Some((
                vec![
                    ("due_shard".to_owned(), "HASH".to_owned()),
                    ("due_at".to_owned(), "RANGE".to_owned())
                ],
                "KEYS_ONLY"
            )),
            "the due index the due task queries"
        );
    }

    #[test]
    fn overrides_replace_defaults_and_unknown_ones_are_refused() {
        let s = shipped(&[("MaxReceiveCount", "7")]).unwrap();
        assert_eq!(
            s.queue("JobsQueue")
                .unwrap()
                .redrive
                .as_ref()
                .unwrap()
                .max_receive_count,
            7
        );
        assert_eq!(
            shipped(&[("Nope", "1")]),
            Err(TemplateError::UnknownParameter("Nope".into()))
        );
    }

    #[test]
    fn unsupported_intrinsics_fail_loudly() {
        let yaml = "Resources:\n  Q:\n    Type: AWS::SQS::Queue\n    Properties:\n      VisibilityTimeout: !Sub '${X}'\n";
        assert!(matches!(
            parse(yaml, &BTreeMap::new()),
            Err(TemplateError::Unsupported(..))
        ));
        let yaml = "Resources:\n  Q:\n    Type: AWS::SQS::Queue\n    Properties:\n      DelaySeconds: !Ref Missing\n";
        assert_eq!(
            parse(yaml, &BTreeMap::new()),
            Err(TemplateError::MissingParameter("Missing".into()))
        );
    }
}
