//! `zf resource put|get|ls|rm`: managed resources. `put` reads a YAML or
//! JSON file holding the resource's `id` with the body the API takes
//! (`kind`, `config`, `secrets`); secrets go up, only their names come back.

use std::path::Path;

use reqwest::Method;
use serde_json::Value;

use super::Ctx;
use crate::args::ResourceCommand;
use crate::error::CliError;
use crate::input;
use crate::output::{self, indent, pretty, text, Table};

pub async fn run(ctx: &Ctx, command: ResourceCommand) -> Result<(), CliError> {
    match command {
        ResourceCommand::Put { file } => put(ctx, &file).await,
        ResourceCommand::Get { id } => get(ctx, &id).await,
        ResourceCommand::Ls { selector } => list(ctx, selector.as_deref()).await,
        ResourceCommand::Rm { id } => remove(ctx, &id).await,
    }
}

/// The resource's id and the body to PUT.
fn read_resource(file: &Path) -> Result<(String, Value), CliError> {
    let shape = "write the resource as `id`, `kind`, `config` and optionally `secrets`";
    let mut body = match input::read_document(file)? {
        Value::Object(map) => map,
        _ => {
            return Err(CliError::Usage(format!(
                "{} does not hold an object: {shape}",
                file.display()
            )))
        }
    };
    let id = match body.remove("id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        _ => {
            return Err(CliError::Usage(format!(
                "{} has no `id` string: {shape}",
                file.display()
            )))
        }
    };
    Ok((id, Value::Object(body)))
}

async fn put(ctx: &Ctx, file: &Path) -> Result<(), CliError> {
    let (id, body) = read_resource(file)?;
    let answer = ctx
        .api
        .send_json(Method::PUT, &["v1", "resources", &id], &body, false)
        .await?;
    if ctx.json {
        return output::json(&answer.body);
    }
    let verb = if answer.status == 201 {
        "created"
    } else {
        "replaced"
    };
    output::line(format!(
        "{verb} resource {id} (kind {})",
        text(&answer.body["kind"])
    ))
}

async fn get(ctx: &Ctx, id: &str) -> Result<(), CliError> {
    let r = ctx.api.get(&["v1", "resources", id], &[]).await?;
    if ctx.json {
        return output::json(&r);
    }
    let lines = [
        format!("id:          {}", text(&r["id"])),
        format!("kind:        {}", text(&r["kind"])),
        format!("labels:      {}", labels(&r["labels"])),
        format!("updated:     {}", text(&r["updated_at"])),
        format!("secrets:     {}", secret_names(&r["secret_names"])),
        format!("config:\n{}", indent(&pretty(&r["config"]), 2)),
        format!(
            "state:       reported by {} at {}",
            text(&r["reported_by"]),
            text(&r["state_updated_at"])
        ),
        indent(&pretty(&r["state"]), 2),
    ];
    output::line(lines.join("\n"))
}

/// `k=v,k2=v2`, or `-` without labels.
fn labels(labels: &Value) -> String {
    let pairs: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    if pairs.is_empty() {
        "-".into()
    } else {
        pairs.join(",")
    }
}

fn secret_names(names: &Value) -> String {
    let all: Vec<String> = names.as_array().into_iter().flatten().map(text).collect();
    if all.is_empty() {
        "-".into()
    } else {
        all.join(", ")
    }
}

async fn list(ctx: &Ctx, selector: Option<&str>) -> Result<(), CliError> {
    let query: Vec<(&str, String)> = selector
        .map(|s| ("selector", s.to_string()))
        .into_iter()
        .collect();
    let body = ctx.api.get(&["v1", "resources"], &query).await?;
    if ctx.json {
        return output::json(&body);
    }
    let mut table = Table::new(&[
        "ID",
        "KIND",
        "LABELS",
        "SECRETS",
        "UPDATED",
        "STATE REPORTED",
    ]);
    for r in body["resources"].as_array().into_iter().flatten() {
        table.row(vec![
            text(&r["id"]),
            text(&r["kind"]),
            labels(&r["labels"]),
            secret_names(&r["secret_names"]),
            text(&r["updated_at"]),
            match r["reported_by"].as_str() {
                Some(node) => format!("{} by {node}", text(&r["state_updated_at"])),
                None => "-".into(),
            },
        ]);
    }
    table.print()
}

async fn remove(ctx: &Ctx, id: &str) -> Result<(), CliError> {
    let answer = ctx.api.delete(&["v1", "resources", id]).await?;
    if ctx.json {
        // 204 carries no body: there is nothing to print.
        return match answer.body {
            Value::Null => Ok(()),
            body => output::json(&body),
        };
    }
    output::line(format!("deleted resource {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_resource_file_names_its_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("web.yaml");
        std::fs::write(
            &file,
            "id: web-1\nkind: file\nconfig:\n  path: /var/log/syslog\nsecrets:\n  token: s3cret\n",
        )
        .expect("write");
        let (id, body) = read_resource(&file).expect("read");
        assert_eq!(id, "web-1");
        assert_eq!(
            body,
            json!({"kind": "file", "config": {"path": "/var/log/syslog"}, "secrets": {"token": "s3cret"}})
        );
        std::fs::write(&file, "kind: file\n").expect("write");
        let err = read_resource(&file).expect_err("no id");
        assert!(err.to_string().contains("no `id`"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }
}
