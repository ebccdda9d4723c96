//! What the user hands `zf` besides flags: JSON or YAML files (a resource,
//! an operation's params) and `--param KEY=VALUE` pairs.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::CliError;

/// `KEY=VALUE`, VALUE taken as JSON when it parses (numbers, booleans, null,
/// arrays, objects, quoted strings), else as the string it is.
pub fn parse_param(arg: &str) -> Result<(String, Value), String> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?} is not KEY=VALUE, e.g. --param command=uname"))?;
    if key.is_empty() {
        return Err(format!("{arg:?} has no KEY before '='"));
    }
    let value =
        serde_json::from_str::<Value>(value).unwrap_or_else(|_| Value::String(value.into()));
    Ok((key.to_string(), value))
}

/// A JSON or YAML file as JSON (YAML holds JSON, so either is read the same way).
pub fn read_document(path: &Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    if let Ok(value) = serde_json::from_str::<Value>(&text) {
        return Ok(value);
    }
    let is_json = path.extension().is_some_and(|e| e == "json");
    if is_json {
        let err = serde_json::from_str::<Value>(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        return Err(CliError::Usage(format!(
            "{} is not valid JSON: {err}",
            path.display()
        )));
    }
    serde_norway::from_str::<Value>(&text).map_err(|e| {
        CliError::Usage(format!(
            "{} is neither JSON nor YAML that maps to JSON: {e}",
            path.display()
        ))
    })
}

/// The params object: the file's object (if any) with every pair set on it.
pub fn params(file: Option<&Path>, pairs: &[(String, Value)]) -> Result<Value, CliError> {
    let mut params = match file {
        None => Map::new(),
        Some(path) => match read_document(path)? {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            _ => {
                return Err(CliError::Usage(format!(
                    "{} must hold an object of params, e.g. command: uname",
                    path.display()
                )))
            }
        },
    };
    for (key, value) in pairs {
        params.insert(key.clone(), value.clone());
    }
    Ok(Value::Object(params))
}

/// `--fail-policy`: `continue`, `stop`, or N (stop after N failures).
pub fn parse_fail_policy(text: &str) -> Result<Value, String> {
    match text {
        "continue" | "stop" => Ok(Value::String(text.to_string())),
        n => match n.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(serde_json::json!({ "stop_after": n })),
            _ => Err(format!(
                "{n:?} is not a fail policy: use continue, stop, or a number of failures (1 or more)"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_json_when_they_parse() {
        let parsed = |arg| parse_param(arg).expect("parses").1;
        assert_eq!(parsed("n=3"), json!(3));
        assert_eq!(parsed("b=true"), json!(true));
        assert_eq!(parsed("x=null"), json!(null));
        assert_eq!(parsed("args=[\"-a\"]"), json!(["-a"]));
        assert_eq!(parsed("o={\"k\":1}"), json!({"k": 1}));
        assert_eq!(parsed("q=\"3\""), json!("3"));
        assert_eq!(parsed("s=hello world"), json!("hello world"));
        assert_eq!(parsed("zero=007"), json!("007"));
        assert_eq!(parsed("e="), json!(""));
        assert_eq!(parsed("eq=a=b"), json!("a=b"));
        assert!(parse_param("novalue").is_err());
        assert!(parse_param("=1").is_err());
    }

    #[test]
    fn yaml_and_json_files_read_alike_and_pairs_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = dir.path().join("p.yaml");
        std::fs::write(&yaml, "command: echo\nargs: [a, 1]\nlines: 2\n").expect("write");
        let json_file = dir.path().join("p.json");
        std::fs::write(
            &json_file,
            r#"{"command": "echo", "args": ["a", 1], "lines": 2}"#,
        )
        .expect("write");
        assert_eq!(
            read_document(&yaml).expect("yaml"),
            read_document(&json_file).expect("json")
        );
        let merged = params(Some(&yaml), &[("lines".into(), json!(5))]).expect("params");
        assert_eq!(
            merged,
            json!({"command": "echo", "args": ["a", 1], "lines": 5})
        );
        std::fs::write(&json_file, "{not json").expect("write");
        let err = read_document(&json_file).expect_err("bad JSON");
        assert_eq!(err.exit_code(), 2, "{err}");
        let list = dir.path().join("list.yaml");
        std::fs::write(&list, "- a\n- b\n").expect("write");
        assert!(
            params(Some(&list), &[]).is_err(),
            "params must be an object"
        );
        assert!(read_document(&dir.path().join("missing.yaml")).is_err());
    }
}
