//! Any bytes as a module bundle: the validator answers Ok or an error, never
//! panics; what it accepts unpacks inside a fresh root and nowhere else.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if zerofoot_shared::bundle::inspect(data).is_err() {
        return;
    }
    let Ok(dir) = tempfile_dir() else { return };
    let root = dir.join("root");
    if std::fs::create_dir(&root).is_ok() {
        let _ = zerofoot_shared::bundle::unpack(data, &root);
        let beside: Vec<_> = std::fs::read_dir(&dir)
            .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(beside, vec![std::ffi::OsString::from("root")], "escaped the root");
    }
    let _ = std::fs::remove_dir_all(&dir);
});

/// A fresh folder under the system temp dir, without extra dependencies.
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "zf-fuzz-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}
