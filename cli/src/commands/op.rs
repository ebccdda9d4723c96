//! `zf op run|ls|show|cancel|events|logs`: operations. `run` waits for a
//! sync operation's result (exit 1 when it failed or was cancelled) and
//! starts an async one, optionally following its events; `events` and
//! `logs` read an operation's feeds page by page or live ([`crate::feed`]).

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::Ctx;
use crate::args::{FeedArgs, OpCommand, RunArgs};
use crate::error::CliError;
use crate::feed::{self, is_final, Feed};
use crate::input;
use crate::output::{self, indent, pretty, text, Table};

/// Pause between looks at a sync operation the API answered 202 for.
const POLL_EVERY: Duration = Duration::from_millis(500);
const MAX_POLL_PAUSE: Duration = Duration::from_secs(5);

pub async fn run(ctx: &Ctx, command: OpCommand) -> Result<(), CliError> {
    match command {
        OpCommand::Run(args) => run_op(ctx, args).await,
        OpCommand::Ls {
            state,
            module,
            kind,
            limit,
        } => list(ctx, state, module, kind, limit).await,
        OpCommand::Show { id } => show(ctx, &id).await,
        OpCommand::Cancel { id } => cancel(ctx, &id).await,
        OpCommand::Events(args) => read_feed(ctx, args, Feed::events, print_event).await,
        OpCommand::Logs(args) => read_feed(ctx, args, Feed::logs, print_log).await,
    }
}

async fn run_op(ctx: &Ctx, args: RunArgs) -> Result<(), CliError> {
    let params = input::params(args.params_file.as_deref(), &args.params)?;
    let mut body = json!({"module": args.module, "operation": args.operation, "params": params});
    if let Some(version) = &args.version {
        body["version"] = json!(version);
    }
    if let Some(resource) = &args.resource {
        body["resource"] = json!(resource);
    }
    if let Some(selector) = &args.selector {
        body["targets"] = json!({ "selector": selector });
    }
    if let Some(targets) = &args.targets {
        body["targets"] = json!({ "resources": targets });
    }
    if let Some(n) = args.max_parallel {
        body["max_parallel"] = json!(n);
    }
    if let Some(policy) = &args.fail_policy {
        body["fail_policy"] = policy.clone();
    }
    // A sync submission answers when the operation ended: no time limit here.
    let answer = ctx
        .api
        .send_json(Method::POST, &["v1", "operations"], &body, true)
        .await?;
    let op = answer.body;
    let id = text(&op["id"]);
    if op["kind"] == "async" {
        if !args.follow {
            if ctx.json {
                output::json(&op)?;
            } else {
                output::line(&id)?;
            }
            eprintln!(
                "zf: operation {id} ({} {}) started; `zf op events {id} --follow` streams its events",
                args.module, args.operation
            );
            return Ok(());
        }
        eprintln!(
            "zf: following operation {id} ({} {}); Ctrl-C stops following, not the operation",
            args.module, args.operation
        );
        let json = ctx.json;
        let last = feed::follow(&ctx.api, &Feed::events(&id), 0, &mut |e| {
            print_event(json, e)
        })
        .await?;
        return outcome(&last, true);
    }
    let last = if is_final(&op) {
        op
    } else {
        wait_final(ctx, &id).await?
    };
    if ctx.json {
        output::json(&last)?;
    } else if last["state"] == "complete" && !last["result"].is_null() {
        output::line(pretty(&last["result"]))?;
    }
    outcome(&last, false)
}

/// Polls a sync operation until it is final; the API may be briefly away.
async fn wait_final(ctx: &Ctx, id: &str) -> Result<Value, CliError> {
    eprintln!("zf: operation {id} is still running; waiting for it (Ctrl-C stops waiting, not the operation)");
    let mut pause = POLL_EVERY;
    loop {
        tokio::time::sleep(pause).await;
        match ctx.api.get(&["v1", "operations", id], &[]).await {
            Ok(op) if is_final(&op) => return Ok(op),
            Ok(_) => pause = POLL_EVERY,
            Err(e) if e.is_transient() => {
                pause = (pause * 2).min(MAX_POLL_PAUSE);
                eprintln!(
                    "zf: cannot check operation {id} ({}); trying again",
                    e.to_string().lines().next().unwrap_or_default()
                );
            }
            Err(e) => return Err(e),
        }
    }
}

/// Success if the operation completed, else exit 1 saying why. With
/// `say_complete`, a completion is noted on stderr (after a stream).
fn outcome(op: &Value, say_complete: bool) -> Result<(), CliError> {
    let id = text(&op["id"]);
    match op["state"].as_str() {
        Some("complete") => {
            if say_complete {
                eprintln!("zf: operation {id} complete");
            }
            Ok(())
        }
        Some("cancelled") => Err(CliError::Failed(format!(
            "operation {id} was cancelled{}",
            match op["error"].as_str() {
                Some(error) => format!(": {error}"),
                None => String::new(),
            }
        ))),
        _ => Err(CliError::Failed(format!(
            "operation {id} {}: {}\n  hint: `zf op show {id}` shows its attempts; `zf op logs {id}` its log lines",
            text(&op["state"]),
            op["error"].as_str().unwrap_or("no error was recorded")
        ))),
    }
}

/// `<seq> <at> <node> <key or -> <data>`, or the event as a JSON line.
fn print_event(json: bool, event: &Value) -> Result<(), CliError> {
    if json {
        return output::json_line(event);
    }
    output::line(format!(
        "{} {} {} {} {}",
        text(&event["seq"]),
        text(&event["at"]),
        text(&event["node"]),
        text(&event["key"]),
        event["data"]
    ))
}

/// `<at> <node> <level> <msg>`, or the line as a JSON line.
fn print_log(json: bool, line: &Value) -> Result<(), CliError> {
    if json {
        return output::json_line(line);
    }
    output::line(format!(
        "{} {} {} {}",
        text(&line["at"]),
        text(&line["node"]),
        text(&line["level"]),
        line["msg"].as_str().unwrap_or_default()
    ))
}

async fn read_feed(
    ctx: &Ctx,
    args: FeedArgs,
    feed_of: fn(&str) -> Feed,
    print: fn(bool, &Value) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let feed = feed_of(&args.id);
    let json = ctx.json;
    let mut sink = |entry: &Value| print(json, entry);
    if args.follow {
        let last = feed::follow(&ctx.api, &feed, args.after, &mut sink).await?;
        return outcome(&last, true);
    }
    feed::read_pages(&ctx.api, &feed, args.after, &mut sink).await?;
    Ok(())
}

async fn list(
    ctx: &Ctx,
    state: Option<String>,
    module: Option<String>,
    kind: Option<String>,
    limit: Option<u32>,
) -> Result<(), CliError> {
    let mut query = Vec::new();
    for (name, value) in [("state", state), ("module", module), ("kind", kind)] {
        if let Some(value) = value {
            query.push((name, value));
        }
    }
    if let Some(limit) = limit {
        query.push(("limit", limit.to_string()));
    }
    let body = ctx.api.get(&["v1", "operations"], &query).await?;
    if ctx.json {
        return output::json(&body);
    }
    let mut table = Table::new(&[
        "ID",
        "STATE",
        "KIND",
        "MODULE",
        "OPERATION",
        "OWNER",
        "CREATED",
    ]);
    for op in body["operations"].as_array().into_iter().flatten() {
        table.row(vec![
            text(&op["id"]),
            text(&op["state"]),
            text(&op["kind"]),
            format!("{} {}", text(&op["module"]), text(&op["version"])),
            text(&op["operation"]),
            text(&op["owner"]),
            text(&op["created_at"]),
        ]);
    }
    table.print()
}

async fn show(ctx: &Ctx, id: &str) -> Result<(), CliError> {
    let op = ctx.api.get(&["v1", "operations", id], &[]).await?;
    if ctx.json {
        return output::json(&op);
    }
    output::line(describe(&op))
}

/// The execution context for people.
fn describe(op: &Value) -> String {
    let mut lines = vec![
        format!("id:         {}", text(&op["id"])),
        format!(
            "operation:  {} {} {} ({})",
            text(&op["module"]),
            text(&op["version"]),
            text(&op["operation"]),
            text(&op["kind"])
        ),
        format!("state:      {}", text(&op["state"])),
        format!("resource:   {}", text(&op["resource"])),
        format!(
            "owner:      {} (epoch {})",
            text(&op["owner"]),
            text(&op["epoch"])
        ),
        format!("created:    {}", text(&op["created_at"])),
        format!("updated:    {}", text(&op["updated_at"])),
        format!("params:     {}", op["params"]),
    ];
    let attempts = op["attempts"].as_array().cloned().unwrap_or_default();
    if !attempts.is_empty() {
        lines.push("attempts:".into());
        for a in &attempts {
            lines.push(format!(
                "  {} epoch {} {} from {}",
                text(&a["node"]),
                text(&a["epoch"]),
                text(&a["outcome"]),
                text(&a["started_at"])
            ));
        }
    }
    if !op["checkpoint"].is_null() {
        lines.push(format!("checkpoint: {}", op["checkpoint"]));
    }
    if let Some(children) = op["children"].as_array() {
        let counts = op["counts"].as_object().cloned().unwrap_or_default();
        let counted: Vec<String> = counts
            .iter()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(state, n)| format!("{n} {state}"))
            .collect();
        lines.push(format!(
            "targets:    {} ({}), at most {} at once, fail policy {}",
            children.len(),
            counted.join(", "),
            text(&op["batch"]["max_parallel"]),
            op["batch"]["fail_policy"]
        ));
        for child in children {
            let mut line = format!(
                "  {:<24} {:<11} {}",
                text(&child["resource"]),
                child["state"].as_str().unwrap_or("not started"),
                text(&child["id"])
            );
            if let Some(error) = child["error"].as_str() {
                line.push_str(&format!("  {error}"));
            }
            lines.push(line);
        }
    }
    if !op["result"].is_null() {
        lines.push(format!("result:\n{}", indent(&pretty(&op["result"]), 2)));
    }
    if let Some(error) = op["error"].as_str() {
        lines.push(format!("error:      {error}"));
    }
    lines.join("\n")
}

async fn cancel(ctx: &Ctx, id: &str) -> Result<(), CliError> {
    let answer = ctx.api.delete(&["v1", "operations", id]).await?;
    if ctx.json {
        return output::json(&answer.body);
    }
    match answer.body["state"].as_str() {
        Some("cancelling") => output::line(format!(
            "operation {id} cancelling: its owner stops the driver, then it is cancelled"
        )),
        Some(state) => output::line(format!("operation {id} {state}")),
        None => output::line(format!("operation {id}: cancel recorded")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_completed_operation_succeeds() {
        assert!(outcome(&json!({"id": "a", "state": "complete"}), false).is_ok());
        let failed = outcome(
            &json!({"id": "a", "state": "failed", "error": "boom"}),
            false,
        )
        .expect_err("failed");
        assert_eq!(failed.exit_code(), 1);
        assert!(failed.to_string().contains("boom"), "{failed}");
        let cancelled =
            outcome(&json!({"id": "a", "state": "cancelled"}), false).expect_err("cancelled");
        assert_eq!(cancelled.exit_code(), 1);
    }
}
