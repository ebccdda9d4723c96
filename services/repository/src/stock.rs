//! The stock modules (`shell`, `http-probe`, `file-tail`, `ssh`), built into the
//! binary from `services/repository/modules/` and stored at start when
//! absent. Packing is deterministic, so a restart stores nothing new.

use std::path::Path;

use crate::store::ModuleStore;

/// (module, path inside the bundle, content, executable)
const FILES: &[(&str, &str, &str, bool)] = &[
    (
        "shell",
        "module.json",
        include_str!("../modules/shell/module.json"),
        false,
    ),
    (
        "shell",
        "bin/run",
        include_str!("../modules/shell/bin/run"),
        true,
    ),
    (
        "http-probe",
        "module.json",
        include_str!("../modules/http-probe/module.json"),
        false,
    ),
    (
        "http-probe",
        "bin/run",
        include_str!("../modules/http-probe/bin/run"),
        true,
    ),
    (
        "file-tail",
        "module.json",
        include_str!("../modules/file-tail/module.json"),
        false,
    ),
    (
        "file-tail",
        "bin/run",
        include_str!("../modules/file-tail/bin/run"),
        true,
    ),
    (
        "ssh",
        "module.json",
        include_str!("../modules/ssh/module.json"),
        false,
    ),
    (
        "ssh",
        "bin/run",
        include_str!("../modules/ssh/bin/run"),
        true,
    ),
];

const MODULES: &[&str] = &["shell", "http-probe", "file-tail", "ssh"];

pub async fn load(store: &ModuleStore) {
    for module in MODULES {
        let packed = tokio::task::spawn_blocking(move || pack(module)).await;
        let bytes = match packed {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                tracing::error!(module, error = %e, "cannot pack a stock module");
                continue;
            }
            Err(e) => {
                tracing::error!(module, error = %e, "stock module packing failed");
                continue;
            }
        };
        match store.store(bytes.as_slice()).await {
            Ok(outcome) if outcome.created => {
                tracing::info!(module, version = %outcome.module.version, "stock module stored")
            }
            Ok(_) => tracing::debug!(module, "stock module already stored"),
            // Someone published other bytes under this version: theirs stand.
            Err(e) if e.status == 409 => {
                tracing::warn!(module, error = %e, "stock module not stored")
            }
            Err(e) => tracing::error!(module, error = %e, "cannot store a stock module"),
        }
    }
}

fn pack(module: &str) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    for (_, path, content, executable) in FILES.iter().filter(|f| f.0 == module) {
        let target = dir.path().join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, content)?;
        let mode = if *executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
    }
    zerofoot_shared::bundle::pack_dir(Path::new(dir.path()))
}
