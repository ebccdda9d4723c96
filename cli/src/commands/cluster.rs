//! `zf cluster`: the nodes with their status, role and sandbox, the lead
//! and its term, the management instances and, where the API lists them,
//! the repositories.

use serde_json::Value;

use super::Ctx;
use crate::error::CliError;
use crate::output::{self, text, Table};

pub async fn show(ctx: &Ctx) -> Result<(), CliError> {
    let view = ctx.api.get(&["v1", "cluster"], &[]).await?;
    if ctx.json {
        return output::json(&view);
    }
    output::line(format!("cluster  {}", text(&view["cluster"])))?;
    let lead = match view["lead"]["node"].as_str() {
        Some(node) => format!("{node} (term {})", text(&view["lead"]["term"])),
        None => "none: no node leads right now".to_string(),
    };
    let zones = list(&view["zones"]);
    if zones.len() <= 1 {
        output::line(format!("lead     {lead}"))?;
    } else {
        // One lead per zone; the default zone's is `lead` in the JSON.
        for zone in zones {
            let lead = match zone["lead"]["node"].as_str() {
                Some(node) => format!("{node} (term {})", text(&zone["lead"]["term"])),
                None => "none: no node leads right now".to_string(),
            };
            output::line(format!("lead     {lead} in zone {}", text(&zone["zone"])))?;
        }
    }
    output::line("")?;

    let mut nodes = Table::new(&[
        "NODE",
        "ZONE",
        "STATUS",
        "ROLE",
        "TERM",
        "RUNNING",
        "SANDBOX",
        "HEARTBEAT",
        "VERSION",
        "REGISTERED WITH",
    ]);
    for node in list(&view["nodes"]) {
        nodes.row(vec![
            text(&node["id"]),
            text(&node["zone"]),
            text(&node["status"]),
            text(&node["role"]),
            text(&node["term"]),
            text(&node["running"]),
            text(&node["sandbox"]),
            match node["heartbeat_age_ms"].as_u64() {
                Some(ms) => format!("{ms} ms ago"),
                None => "-".into(),
            },
            text(&node["version"]),
            names(&node["registered_with"]),
        ]);
    }
    nodes.print()?;
    output::line("")?;

    let mut management = Table::new(&["MANAGEMENT", "VERSION"]);
    for instance in list(&view["management"]) {
        management.row(vec![text(&instance["id"]), text(&instance["version"])]);
    }
    management.print()?;

    if let Some(repositories) = view.get("repositories").and_then(Value::as_array) {
        output::line("")?;
        let mut table = Table::new(&["REPOSITORY", "VERSION"]);
        for repository in repositories {
            let id = match repository {
                Value::String(_) => repository,
                other => &other["id"],
            };
            table.row(vec![text(id), text(&repository["version"])]);
        }
        table.print()?;
    }
    Ok(())
}

fn list(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn names(value: &Value) -> String {
    let all: Vec<String> = list(value).iter().map(text).collect();
    if all.is_empty() {
        "-".into()
    } else {
        all.join(",")
    }
}
