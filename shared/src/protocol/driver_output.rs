//! The lines a driver writes on stdout (SPEC §3): results, events,
//! checkpoints, resource state and log lines. A line that is not one of the
//! protocol's messages is kept as a log line, never a failure.

use serde_json::Value;

/// One line of driver output.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Result(Value),
    Event { data: Value, key: Option<String> },
    Checkpoint(Value),
    ResourceState(Value),
    Log { level: String, msg: String },
}

/// Reads one stdout line. A line that is not one of the protocol's messages
/// is kept as a log line, never a failure.
pub fn parse_line(line: &[u8]) -> Option<Output> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    if text.trim().is_empty() {
        return None;
    }
    let as_log = || Output::Log {
        level: "info".into(),
        msg: text.to_string(),
    };
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(text) else {
        return Some(as_log());
    };
    let data = obj.remove("data").unwrap_or(Value::Null);
    let output = match obj.get("type").and_then(Value::as_str) {
        Some("result") => Output::Result(data),
        Some("event") => Output::Event {
            data,
            key: match obj.get("key") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            },
        },
        Some("checkpoint") => Output::Checkpoint(data),
        Some("resource_state") => Output::ResourceState(data),
        Some("log") => Output::Log {
            level: obj
                .get("level")
                .and_then(Value::as_str)
                .unwrap_or("info")
                .to_string(),
            msg: obj
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        },
        _ => as_log(),
    };
    Some(output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn protocol_lines_are_parsed() {
        assert_eq!(
            parse_line(br#"{"type":"result","data":{"a":1}}"#),
            Some(Output::Result(json!({"a":1})))
        );
        assert_eq!(
            parse_line(br#"{"type":"event","data":2,"key":"k"}"#),
            Some(Output::Event {
                data: json!(2),
                key: Some("k".into())
            })
        );
        assert_eq!(
            parse_line(br#"{"type":"event","data":2,"key":7}"#),
            Some(Output::Event {
                data: json!(2),
                key: Some("7".into())
            })
        );
        assert_eq!(
            parse_line(br#"{"type":"checkpoint","data":{"o":3}}"#),
            Some(Output::Checkpoint(json!({"o":3})))
        );
        assert_eq!(
            parse_line(br#"{"type":"resource_state","data":"up"}"#),
            Some(Output::ResourceState(json!("up")))
        );
        assert_eq!(
            parse_line(br#"{"type":"log","level":"warn","msg":"m"}"#),
            Some(Output::Log {
                level: "warn".into(),
                msg: "m".into()
            })
        );
    }

    #[test]
    fn anything_else_is_a_log_line() {
        for raw in [
            &b"plain text"[..],
            b"{\"type\":\"weird\"}",
            b"[1,2]",
            b"{broken",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(parse_line(raw), Some(Output::Log { .. })),
                "{raw:?}"
            );
        }
        assert_eq!(parse_line(b"   "), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Any JSON value, nested a few levels.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                ".{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,6}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// Any bytes at all: no panic, and only blank lines are dropped.
            #[test]
            fn any_line_is_read_without_panic(line in prop::collection::vec(any::<u8>(), 0..256)) {
                let parsed = parse_line(&line);
                let blank = String::from_utf8_lossy(&line).trim_end_matches('\r').trim().is_empty();
                prop_assert_eq!(parsed.is_none(), blank);
            }

            /// Every message a driver can write comes back as what it said.
            #[test]
            fn protocol_messages_round_trip(data in json_value(), key in ".{0,16}", which in 0usize..4) {
                let (line, expected) = match which {
                    0 => (json!({"type": "result", "data": data}), Output::Result(data.clone())),
                    1 => (
                        json!({"type": "event", "key": key, "data": data}),
                        Output::Event { data: data.clone(), key: Some(key.clone()) },
                    ),
                    2 => (json!({"type": "checkpoint", "data": data}), Output::Checkpoint(data.clone())),
                    _ => (json!({"type": "resource_state", "data": data}), Output::ResourceState(data.clone())),
                };
                let text = line.to_string();
                prop_assert_eq!(parse_line(text.as_bytes()), Some(expected));
            }

            /// A line that is not a JSON object is kept, whole, as a log line.
            #[test]
            fn other_lines_become_log_lines(text in "[^{\\s]\\PC{0,40}") {
                let parsed = parse_line(text.as_bytes());
                prop_assert_eq!(parsed, Some(Output::Log { level: "info".into(), msg: text }));
            }
        }
    }
}
