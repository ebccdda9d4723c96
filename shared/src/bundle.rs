//! Module bundles (SPEC §3): a gzip-compressed tar archive with `module.json`
//! at its root. One walk over the archive applies every safety rule, and both
//! the repository (checking an upload) and the node (unpacking into its cache)
//! go through it, so a bundle the repository accepted is unpacked under the
//! same rules, and a bundle that breaks them is never written to disk.
//!
//! Rules: entries stay inside the root (no absolute path, no `..`); symlinks
//! point below their own folder (relative, no `..`); hard links name a path
//! inside the root; no device files or FIFOs; bounded size and entry count.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use sha2::{Digest as _, Sha256};

use crate::protocol::{Manifest, ManifestError};

pub const MANIFEST_FILE: &str = "module.json";
/// Largest bundle accepted, compressed (SPEC §3).
pub const DEFAULT_MAX_BUNDLE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest total size of the files in a bundle, unpacked (a gzip bomb stops here).
pub const MAX_UNPACKED_BYTES: u64 = 1024 * 1024 * 1024;
pub const MAX_ENTRIES: usize = 10_000;
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the bundle is not gzip-compressed (it must be a .tar.gz)")]
    NotGzip,
    #[error("the bundle is not a valid gzip-compressed tar archive: {0}")]
    NotTar(String),
    #[error("archive entry {entry:?} is refused: {reason}")]
    Entry { entry: String, reason: String },
    #[error("the bundle has no module.json at its root")]
    NoManifest,
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("the entrypoint {0:?} named in module.json is not a regular file in the bundle")]
    MissingEntrypoint(String),
    #[error("the bundle unpacks to more than {0} bytes")]
    TooLargeUnpacked(u64),
    #[error("the bundle has more than {0} entries")]
    TooManyEntries(usize),
    #[error("cannot unpack into {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// `sha256:<hex>` of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Computes a digest over bytes as they pass.
#[derive(Default)]
pub struct Digester(Sha256);

impl Digester {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.0.finalize()))
    }
}

/// What one walk found in a bundle.
struct Found {
    manifest: Option<Manifest>,
    regular_files: Vec<PathBuf>,
}

/// Checks a bundle and returns its manifest. Reads the archive once; writes nothing.
pub fn inspect(bundle: impl Read) -> Result<Manifest, BundleError> {
    let found = walk(bundle, |_, _, _| Ok(()))?;
    finish(found)
}

/// Checks a bundle while unpacking it into `dest` (which must exist and be
/// empty), and returns its manifest. The entrypoint is made executable. On
/// error `dest` may hold part of the bundle: unpack into a temporary folder
/// and rename it into place only on success.
pub fn unpack(bundle: impl Read, dest: &Path) -> Result<Manifest, BundleError> {
    let write_err = |source| BundleError::Write {
        path: dest.to_path_buf(),
        source,
    };
    let found = walk(bundle, |entry, path, consumed| match consumed {
        Some(bytes) => fs::write(dest.join(path), bytes).map_err(write_err),
        None => {
            entry.set_preserve_mtime(false);
            entry.unpack_in(dest).map(|_| ()).map_err(write_err)
        }
    })?;
    let manifest = finish(found)?;
    let entrypoint = dest.join(manifest.entrypoint_path());
    make_executable(&entrypoint).map_err(|source| BundleError::Write {
        path: entrypoint,
        source,
    })?;
    Ok(manifest)
}

fn make_executable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perms = fs::metadata(path)?.permissions();
    perms.set_mode(perms.mode() | 0o755);
    fs::set_permissions(path, perms)
}

fn finish(found: Found) -> Result<Manifest, BundleError> {
    let manifest = found.manifest.ok_or(BundleError::NoManifest)?;
    let entrypoint = manifest.entrypoint_path();
    if !found.regular_files.contains(&entrypoint) {
        return Err(BundleError::MissingEntrypoint(manifest.entrypoint.clone()));
    }
    Ok(manifest)
}

type Entry<'a, R> = tar::Entry<'a, GzDecoder<BufReader<R>>>;

fn walk<R: Read>(
    bundle: R,
    mut visit: impl FnMut(&mut Entry<'_, R>, &Path, Option<&[u8]>) -> Result<(), BundleError>,
) -> Result<Found, BundleError> {
    let mut reader = BufReader::new(bundle);
    let head = reader
        .fill_buf()
        .map_err(|e| BundleError::NotTar(e.to_string()))?;
    if head.len() < 2 || head[0] != 0x1f || head[1] != 0x8b {
        return Err(BundleError::NotGzip);
    }
    let mut archive = tar::Archive::new(GzDecoder::new(reader));
    let entries = archive
        .entries()
        .map_err(|e| BundleError::NotTar(e.to_string()))?;
    let mut found = Found {
        manifest: None,
        regular_files: Vec::new(),
    };
    let mut count = 0usize;
    let mut unpacked = 0u64;
    // Every path seen so far, and whether it is a directory (given or implied).
    let mut seen: HashMap<PathBuf, bool> = HashMap::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| BundleError::NotTar(e.to_string()))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(BundleError::TooManyEntries(MAX_ENTRIES));
        }
        let raw = entry
            .path()
            .map_err(|e| BundleError::NotTar(e.to_string()))?
            .into_owned();
        let name = raw.display().to_string();
        let refuse = |reason: &str| BundleError::Entry {
            entry: name.clone(),
            reason: reason.to_string(),
        };
        let path = relative_inside(&raw)
            .ok_or_else(|| refuse("its path is absolute or leaves the bundle root"))?;
        let kind = entry.header().entry_type();
        if !matches!(
            kind,
            tar::EntryType::XHeader
                | tar::EntryType::XGlobalHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            place(&mut seen, &path, kind == tar::EntryType::Directory).map_err(|r| refuse(&r))?;
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                unpacked += entry.size();
                if unpacked > MAX_UNPACKED_BYTES {
                    return Err(BundleError::TooLargeUnpacked(MAX_UNPACKED_BYTES));
                }
                found.regular_files.push(path.clone());
            }
            tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| BundleError::NotTar(e.to_string()))?
                    .ok_or_else(|| refuse("a symlink without a target"))?;
                if !points_below(&target) {
                    return Err(refuse(&format!(
                        "symlink to {:?} points outside its folder; links must be relative and must not use '..'",
                        target.display()
                    )));
                }
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| BundleError::NotTar(e.to_string()))?
                    .ok_or_else(|| refuse("a hard link without a target"))?;
                if relative_inside(&target).is_none() || !points_below(&target) {
                    return Err(refuse(&format!(
                        "hard link to {:?} leaves the bundle root",
                        target.display()
                    )));
                }
                // Spelled exactly as the file's own entry (no `.` parts).
                let earlier_file = relative_inside(&target).is_some_and(|t| {
                    t.as_os_str() == target.as_os_str() && found.regular_files.contains(&t)
                });
                if !earlier_file {
                    return Err(refuse(&format!(
                        "hard link to {:?}, which is not a regular file earlier in the bundle",
                        target.display()
                    )));
                }
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(refuse("device files are not allowed in a bundle"))
            }
            tar::EntryType::Fifo => return Err(refuse("FIFOs are not allowed in a bundle")),
            tar::EntryType::XHeader
            | tar::EntryType::XGlobalHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => {
                return Err(refuse(&format!("entry type {other:?} is not supported")));
            }
        }
        if path == Path::new(MANIFEST_FILE) {
            if kind != tar::EntryType::Regular && kind != tar::EntryType::Continuous {
                return Err(refuse("module.json must be a regular file"));
            }
            if entry.size() > MAX_MANIFEST_BYTES {
                return Err(refuse("module.json is larger than 1 MiB"));
            }
            let mut text = Vec::new();
            (&mut entry)
                .take(MAX_MANIFEST_BYTES)
                .read_to_end(&mut text)
                .map_err(|e| BundleError::NotTar(e.to_string()))?;
            found.manifest = Some(Manifest::parse(&text)?);
            // The entry's bytes are consumed: hand them over instead.
            visit(&mut entry, &path, Some(&text))?;
            continue;
        }
        visit(&mut entry, &path, None)?;
    }
    if count == 0 {
        return Err(BundleError::NotTar("it holds no entries".into()));
    }
    Ok(found)
}

/// Records `path` among the entries seen so far. Each path may appear once
/// (a directory may repeat), and only directories may hold other entries,
/// so that whatever passes also unpacks.
fn place(seen: &mut HashMap<PathBuf, bool>, path: &Path, is_dir: bool) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Ok(());
    }
    for ancestor in path.ancestors().skip(1) {
        if ancestor.as_os_str().is_empty() {
            break;
        }
        match seen.get(ancestor) {
            Some(false) => {
                return Err(format!(
                    "it lies inside {}, which is not a directory",
                    ancestor.display()
                ))
            }
            Some(true) => {}
            None => {
                seen.insert(ancestor.to_path_buf(), true);
            }
        }
    }
    match seen.insert(path.to_path_buf(), is_dir) {
        Some(true) if is_dir => Ok(()),
        Some(_) => Err("the same path appears twice in the bundle".into()),
        None => Ok(()),
    }
}

/// The path with `.` components dropped, if it is relative and has no `..`.
/// The root itself (`./`) gives an empty path.
fn relative_inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// A link target that only descends from the link's folder.
fn points_below(target: &Path) -> bool {
    target.components().count() > 0
        && target
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Packs a module folder into a bundle. The result depends only on the
/// folder's content (sorted entries, zero timestamps and owners), so packing
/// the same folder twice gives the same digest.
pub fn pack_dir(dir: &Path) -> io::Result<Vec<u8>> {
    let encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    add_dir(&mut builder, dir, Path::new(""))?;
    let encoder = builder.into_inner()?;
    encoder.finish()
}

fn add_dir<W: Write>(builder: &mut tar::Builder<W>, root: &Path, rel: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut children: Vec<_> = fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let rel_path = rel.join(child.file_name());
        let meta = fs::symlink_metadata(child.path())?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, &rel_path, io::empty())?;
            add_dir(builder, root, &rel_path)?;
        } else if meta.file_type().is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder.append_link(&mut header, &rel_path, fs::read_link(child.path())?)?;
        } else {
            let executable = meta.permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_size(meta.len());
            builder.append_data(&mut header, &rel_path, fs::File::open(child.path())?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"{"name":"demo","version":"1.0.0","entrypoint":"bin/run",
        "operations":{"go":{"kind":"sync"}}}"#;

    /// An archive entry written byte by byte, so that tests can build what
    /// `tar::Builder` itself refuses to write.
    struct Raw<'a> {
        name: &'a str,
        kind: tar::EntryType,
        link: &'a str,
        data: &'a [u8],
    }

    fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
        Raw {
            name,
            kind: tar::EntryType::Regular,
            link: "",
            data,
        }
    }

    fn tar_of(entries: &[Raw<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for e in entries {
            let mut header = tar::Header::new_old();
            let bytes = header.as_old_mut();
            bytes.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            bytes.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
            header.set_entry_type(e.kind);
            header.set_mode(0o755);
            header.set_size(e.data.len() as u64);
            header.set_cksum();
            builder.append(&header, e.data).expect("append");
        }
        builder.into_inner().expect("tar")
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).expect("gzip");
        enc.finish().expect("gzip")
    }

    fn bundle(extra: Vec<Raw<'_>>) -> Vec<u8> {
        let mut entries = vec![
            file("module.json", MANIFEST.as_bytes()),
            file("bin/run", b"#!/bin/sh\n"),
        ];
        entries.extend(extra);
        gzip(&tar_of(&entries))
    }

    fn refused(bytes: &[u8]) -> String {
        inspect(bytes).expect_err("must be refused").to_string()
    }

    #[test]
    fn a_good_bundle_is_accepted_and_unpacked() {
        let bytes = bundle(vec![
            Raw {
                name: "lib/",
                kind: tar::EntryType::Directory,
                link: "",
                data: b"",
            },
            Raw {
                name: "lib/alias",
                kind: tar::EntryType::Symlink,
                link: "../bin/run",
                data: b"",
            },
        ]);
        // That symlink climbs with '..': refused, and nothing else in it is.
        assert!(refused(&bytes).contains("lib/alias"));

        let bytes = bundle(vec![Raw {
            name: "run2",
            kind: tar::EntryType::Symlink,
            link: "bin/run",
            data: b"",
        }]);
        let manifest = inspect(bytes.as_slice()).expect("valid");
        assert_eq!(manifest.name, "demo");
        let dir = tempfile::tempdir().expect("tempdir");
        unpack(bytes.as_slice(), dir.path()).expect("unpack");
        assert_eq!(
            fs::read_to_string(dir.path().join("module.json")).expect("manifest"),
            MANIFEST
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("bin/run"))
            .expect("entrypoint")
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "entrypoint is executable");
    }

    #[test]
    fn malformed_archives_are_named() {
        assert!(refused(b"plain text").contains("not gzip"));
        assert!(refused(&gzip(&[b'x'; 2048])).contains("not a valid gzip-compressed tar"));
        assert!(refused(&gzip(&tar_of(&[file("bin/run", b"x")]))).contains("no module.json"));
    }

    #[test]
    fn manifest_problems_are_named() {
        let with = |m: &str| {
            gzip(&tar_of(&[
                file("module.json", m.as_bytes()),
                file("bin/run", b"x"),
            ]))
        };
        assert!(refused(&with("{nope")).contains("module.json is not valid"));
        assert!(refused(&with(&MANIFEST.replace("demo", "Bad Name"))).contains("name"));
        assert!(refused(&with(&MANIFEST.replace("1.0.0", "one"))).contains("version"));
        assert!(refused(&with(&MANIFEST.replace("bin/run", "bin/missing"))).contains("bin/missing"));
    }

    #[test]
    fn entries_that_escape_are_refused() {
        let cases = [
            (
                Raw {
                    name: "../evil",
                    kind: tar::EntryType::Regular,
                    link: "",
                    data: b"x",
                },
                "../evil",
            ),
            (
                Raw {
                    name: "/etc/evil",
                    kind: tar::EntryType::Regular,
                    link: "",
                    data: b"x",
                },
                "/etc/evil",
            ),
            (
                Raw {
                    name: "pw",
                    kind: tar::EntryType::Symlink,
                    link: "/etc/passwd",
                    data: b"",
                },
                "/etc/passwd",
            ),
            (
                Raw {
                    name: "hl",
                    kind: tar::EntryType::Link,
                    link: "../../etc/passwd",
                    data: b"",
                },
                "hard link",
            ),
            (
                Raw {
                    name: "dev",
                    kind: tar::EntryType::Char,
                    link: "",
                    data: b"",
                },
                "device files",
            ),
            (
                Raw {
                    name: "blk",
                    kind: tar::EntryType::Block,
                    link: "",
                    data: b"",
                },
                "device files",
            ),
            (
                Raw {
                    name: "fifo",
                    kind: tar::EntryType::Fifo,
                    link: "",
                    data: b"",
                },
                "FIFOs",
            ),
        ];
        for (entry, expected) in cases {
            let name = entry.name.to_string();
            let bytes = bundle(vec![entry]);
            let message = refused(&bytes);
            assert!(message.contains(expected), "{name}: {message}");
            let dir = tempfile::tempdir().expect("tempdir");
            let root = dir.path().join("root");
            fs::create_dir(&root).expect("mkdir");
            assert!(unpack(bytes.as_slice(), &root).is_err(), "{name} unpacked");
            assert!(!dir.path().join("evil").exists(), "{name} escaped the root");
        }
    }

    #[test]
    fn entries_that_would_not_unpack_are_refused() {
        let link = |name: &'static str, kind, target: &'static str| Raw {
            name,
            kind,
            link: target,
            data: b"",
        };
        let cases = [
            (vec![file("a", b"x"), file("a", b"y")], "appears twice"),
            (vec![file("a", b"x"), file("a/b", b"y")], "not a directory"),
            (
                vec![link("s", tar::EntryType::Symlink, "bin"), file("s/x", b"y")],
                "not a directory",
            ),
            (
                vec![
                    link("h", tar::EntryType::Link, "later"),
                    file("later", b"x"),
                ],
                "not a regular file earlier",
            ),
            (
                vec![link("h", tar::EntryType::Link, "module.json/.")],
                "not a regular file earlier",
            ),
        ];
        for (entries, expected) in cases {
            let message = refused(&bundle(entries));
            assert!(message.contains(expected), "{message}");
        }
        let fine = bundle(vec![
            link("h", tar::EntryType::Link, "module.json"),
            file("d/x", b"1"),
            Raw {
                name: "d",
                kind: tar::EntryType::Directory,
                link: "",
                data: b"",
            },
        ]);
        assert!(
            inspect(fine.as_slice()).is_ok(),
            "a link to an earlier file and a repeated directory pass"
        );
    }

    #[test]
    fn packing_is_deterministic_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("bin")).expect("mkdir");
        fs::write(dir.path().join("module.json"), MANIFEST).expect("write");
        fs::write(dir.path().join("bin/run"), "#!/bin/sh\necho hi\n").expect("write");
        let a = pack_dir(dir.path()).expect("pack");
        let b = pack_dir(dir.path()).expect("pack");
        assert_eq!(digest(&a), digest(&b));
        assert_eq!(inspect(a.as_slice()).expect("valid").name, "demo");
        assert!(digest(&a).starts_with("sha256:") && digest(&a).len() == 7 + 64);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A path from parts that matter to the rules: `..`, `.`, empty
        /// parts, absolute paths and the names a module holds.
        fn path() -> impl Strategy<Value = String> {
            let part =
                prop::sample::select(vec!["a", "b", "..", ".", "", "bin", "run", "module.json"]);
            (any::<bool>(), prop::collection::vec(part, 1..4)).prop_map(|(absolute, parts)| {
                let joined = parts.join("/");
                if absolute {
                    format!("/{joined}")
                } else {
                    joined
                }
            })
        }

        fn kind() -> impl Strategy<Value = tar::EntryType> {
            prop::sample::select(vec![
                tar::EntryType::Regular,
                tar::EntryType::Directory,
                tar::EntryType::Symlink,
                tar::EntryType::Link,
                tar::EntryType::Char,
                tar::EntryType::Fifo,
            ])
        }

        fn entries() -> impl Strategy<Value = Vec<(String, tar::EntryType, String, Vec<u8>)>> {
            prop::collection::vec(
                (
                    path(),
                    kind(),
                    path(),
                    prop::collection::vec(any::<u8>(), 0..16),
                ),
                0..6,
            )
        }

        /// `path` with `.` and `..` resolved without touching the disk.
        fn lexical(path: &Path) -> PathBuf {
            let mut out = PathBuf::new();
            for c in path.components() {
                match c {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => out.push(other),
                }
            }
            out
        }

        /// Nothing beside `root` in `parent`, and every symlink under `root`
        /// points inside it.
        fn assert_contained(parent: &Path, root: &Path) {
            let beside: Vec<_> = fs::read_dir(parent)
                .expect("read parent")
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(
                beside,
                vec![std::ffi::OsString::from("root")],
                "something escaped the root"
            );
            let mut stack = vec![root.to_path_buf()];
            while let Some(dir) = stack.pop() {
                for entry in fs::read_dir(&dir).expect("read dir").flatten() {
                    let path = entry.path();
                    let meta = fs::symlink_metadata(&path).expect("metadata");
                    if meta.file_type().is_symlink() {
                        let target = fs::read_link(&path).expect("read link");
                        let resolved = lexical(&dir.join(&target));
                        assert!(
                            resolved.starts_with(root),
                            "{} points outside the root: {}",
                            path.display(),
                            target.display()
                        );
                    } else if meta.is_dir() {
                        stack.push(path);
                    } else {
                        assert!(
                            meta.is_file(),
                            "{} is neither file, directory nor link",
                            path.display()
                        );
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Whatever the archive holds, nothing lands outside the root,
            /// and nothing the validator refuses is ever unpacked.
            #[test]
            fn unpacking_never_escapes_and_agrees_with_the_validator(extra in entries()) {
                let raws: Vec<Raw<'_>> = extra
                    .iter()
                    .map(|(name, kind, link, data)| Raw { name, kind: *kind, link, data })
                    .collect();
                let bytes = bundle(raws);
                let accepted = inspect(bytes.as_slice());
                let dir = tempfile::tempdir().expect("tempdir");
                let root = dir.path().join("root");
                fs::create_dir(&root).expect("mkdir");
                let unpacked = unpack(bytes.as_slice(), &root);
                prop_assert_eq!(
                    accepted.is_ok(),
                    unpacked.is_ok(),
                    "inspect: {:?}, unpack: {:?}",
                    accepted.err(),
                    unpacked.err()
                );
                assert_contained(dir.path(), &root);
            }

            /// Arbitrary bytes, and a valid bundle with bytes changed or cut
            /// off, are refused with an error or accepted whole; never a panic.
            #[test]
            fn damaged_bundles_never_panic(
                noise in prop::collection::vec(any::<u8>(), 0..512),
                flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
                cut in any::<prop::sample::Index>(),
            ) {
                let _ = inspect(noise.as_slice());
                let mut damaged = bundle(Vec::new());
                for (at, byte) in flips {
                    let i = at.index(damaged.len());
                    damaged[i] ^= byte;
                }
                let _ = inspect(damaged.as_slice());
                let len = cut.index(damaged.len());
                let _ = inspect(&damaged[..len]);
            }
        }
    }
}
