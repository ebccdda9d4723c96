//! `zf module pack|push|ls|show`: packing a module folder into the same
//! reproducible bundle as scripts/pack-module.sh (one packer,
//! `zerofoot_shared::bundle::pack_dir`), uploading it, listing and showing
//! stored modules with each operation's description and params schema.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use zerofoot_shared::bundle;

use super::Ctx;
use crate::args::ModuleCommand;
use crate::error::CliError;
use crate::output::{self, indent, pretty, short_digest, text, Table};

pub async fn run(ctx: &Ctx, command: ModuleCommand) -> Result<(), CliError> {
    match command {
        ModuleCommand::Pack { dir, out } => pack(ctx, dir, out).await,
        ModuleCommand::Push { path } => push(ctx, path).await,
        ModuleCommand::Ls => list(ctx).await,
        ModuleCommand::Show { name } => show(ctx, &name).await,
    }
}

/// A packed module folder: its bytes and what its manifest says.
struct Packed {
    bytes: Vec<u8>,
    name: String,
    version: String,
}

/// Packs `dir` and checks the bundle as the repository will (same code), so
/// a broken module is reported here, before anything is written or sent.
async fn pack_folder(dir: PathBuf) -> Result<Packed, CliError> {
    tokio::task::spawn_blocking(move || {
        if !dir.join(bundle::MANIFEST_FILE).is_file() {
            return Err(CliError::Usage(format!(
                "{} has no {}: a module folder holds module.json at its root",
                dir.display(),
                bundle::MANIFEST_FILE
            )));
        }
        let bytes = bundle::pack_dir(&dir)
            .map_err(|e| CliError::Usage(format!("cannot pack {}: {e}", dir.display())))?;
        let manifest = bundle::inspect(&bytes[..]).map_err(|e| {
            CliError::Usage(format!("{} is not a valid module: {e}", dir.display()))
        })?;
        Ok(Packed {
            bytes,
            name: manifest.name,
            version: manifest.version.to_string(),
        })
    })
    .await
    .map_err(|e| CliError::Local(format!("packing stopped: {e}")))?
}

async fn pack(ctx: &Ctx, dir: PathBuf, out: Option<PathBuf>) -> Result<(), CliError> {
    let packed = pack_folder(dir).await?;
    let out = out.unwrap_or_else(|| format!("{}-{}.tar.gz", packed.name, packed.version).into());
    // As scripts/pack-module.sh prints it: relative to where zf runs.
    let path = if out.is_absolute() {
        out
    } else {
        std::env::current_dir()
            .map_err(|e| CliError::Local(format!("cannot tell the current folder: {e}")))?
            .join(out)
    };
    std::fs::write(&path, &packed.bytes)
        .map_err(|e| CliError::Local(format!("cannot write {}: {e}", path.display())))?;
    let digest = bundle::digest(&packed.bytes);
    if ctx.json {
        return output::json(&json!({
            "path": path.display().to_string(),
            "digest": digest,
            "name": packed.name,
            "version": packed.version,
            "size": packed.bytes.len(),
        }));
    }
    output::line(format!("{} {digest}", path.display()))
}

async fn push(ctx: &Ctx, path: PathBuf) -> Result<(), CliError> {
    let bytes = if path.is_dir() {
        pack_folder(path).await?.bytes
    } else {
        read_bundle(&path)?
    };
    let answer = ctx
        .api
        .post_bytes(&["v1", "modules"], bytes, "application/gzip")
        .await?;
    if ctx.json {
        return output::json(&answer.body);
    }
    let m = &answer.body;
    let what = format!(
        "{} {} {} ({} bytes)",
        text(&m["name"]),
        text(&m["version"]),
        text(&m["digest"]),
        text(&m["size"])
    );
    if answer.status == 201 {
        output::line(format!("stored {what}"))
    } else {
        output::line(format!("already stored with the same bytes: {what}"))
    }
}

fn read_bundle(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| {
        CliError::Usage(format!(
            "cannot read {}: {e}; give a bundle (.tar.gz) or a module folder",
            path.display()
        ))
    })
}

async fn list(ctx: &Ctx) -> Result<(), CliError> {
    let body = ctx.api.get(&["v1", "modules"], &[]).await?;
    if ctx.json {
        return output::json(&body);
    }
    let mut table = Table::new(&[
        "NAME",
        "VERSION",
        "OPERATIONS",
        "DIGEST",
        "PUBLISHED",
        "DESCRIPTION",
    ]);
    for module in body["modules"].as_array().into_iter().flatten() {
        table.row(vec![
            text(&module["name"]),
            text(&module["version"]),
            operations(&module["operations"]),
            short_digest(&module["digest"]),
            text(&module["published_at"]),
            text(&module["description"]),
        ]);
    }
    table.print()
}

/// `name:kind` of each operation, comma separated.
fn operations(ops: &Value) -> String {
    let all: Vec<String> = ops
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, spec)| format!("{name}:{}", text(&spec["kind"])))
        .collect();
    all.join(",")
}

async fn show(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let body = ctx.api.get(&["v1", "modules", name], &[]).await?;
    if ctx.json {
        return output::json(&body);
    }
    let versions = body["versions"].as_array().cloned().unwrap_or_default();
    for (i, module) in versions.iter().enumerate() {
        if i > 0 {
            output::line("")?;
        }
        output::line(describe(module))?;
    }
    Ok(())
}

/// One stored version: digest, size, publication, and every operation.
fn describe(module: &Value) -> String {
    let mut out = format!(
        "{} {}  {}  {} bytes  published {}{}",
        text(&module["name"]),
        text(&module["version"]),
        text(&module["digest"]),
        text(&module["size"]),
        text(&module["published_at"]),
        if module["signature"].is_string() {
            "  signed"
        } else {
            ""
        }
    );
    if let Some(description) = module["description"].as_str().filter(|d| !d.is_empty()) {
        out.push_str(&format!("\n  {description}"));
    }
    for (op, spec) in module["operations"].as_object().into_iter().flatten() {
        let mut traits = vec![text(&spec["kind"])];
        if let Some(ms) = spec["timeout_ms"].as_u64() {
            traits.push(format!("timeout {ms} ms"));
        }
        if let Some(retries) = spec["retries"].as_u64() {
            traits.push(format!("retries {retries}"));
        }
        if let Some(limits) = spec["limits"].as_object().filter(|l| !l.is_empty()) {
            traits.push(format!("limits {}", Value::Object(limits.clone())));
        }
        out.push_str(&format!("\n  operation {op} ({})", traits.join(", ")));
        if let Some(description) = spec["description"].as_str() {
            out.push_str(&format!("\n    {description}"));
        }
        match spec.get("params") {
            Some(schema) if !schema.is_null() => {
                out.push_str("\n    params (JSON Schema):\n");
                out.push_str(&indent(&pretty(schema), 6));
            }
            _ => out.push_str("\n    params: any object"),
        }
    }
    out
}
