//! Test modules built on the fly: a folder with `module.json` and a shell
//! entrypoint, packed into a bundle by the same code the repository uses.

use std::path::Path;

/// Packs a module whose entrypoint is `script` (a POSIX sh script).
pub fn bundle(name: &str, version: &str, operations: serde_json::Value, script: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    write_module(dir.path(), name, version, operations, script);
    zerofoot_shared::bundle::pack_dir(dir.path()).expect("pack module")
}

pub fn write_module(
    dir: &Path,
    name: &str,
    version: &str,
    operations: serde_json::Value,
    script: &str,
) {
    use std::os::unix::fs::PermissionsExt;
    let manifest = serde_json::json!({
        "name": name, "version": version, "entrypoint": "bin/run", "operations": operations,
    });
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    std::fs::write(dir.join("module.json"), manifest.to_string()).expect("write manifest");
    std::fs::write(dir.join("bin/run"), script).expect("write script");
    std::fs::set_permissions(dir.join("bin/run"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
}
