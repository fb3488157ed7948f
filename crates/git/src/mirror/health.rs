//! What a killed fetch leaves in a mirror, and the fast check that a mirror is whole.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Remove what an interrupted libgit2 fetch leaves: lock files of refs and config (every
/// later fetch would fail on them), the indexer's temporary pack (`pack_git2_*`) and an
/// index whose pack was never renamed into place (libgit2 renames the `.idx` first). Only
/// called under the mirror's lock: nobody else is writing these files.
pub(super) fn clean_leftovers(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                // Objects hold no lock files; their fan-out directories are many.
                if !path.ends_with("objects") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|x| x == "lock") {
                remove(&path);
            }
        }
    }
    let pack_dir = dir.join("objects/pack");
    let Ok(entries) = std::fs::read_dir(&pack_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        match pack_name(&name) {
            None => remove(&e.path()),
            Some((stem, "idx")) if !pack_dir.join(format!("{stem}.pack")).exists() => {
                remove(&e.path())
            }
            Some(_) => {}
        }
    }
}

fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed what an interrupted fetch left"),
        Err(e) => tracing::warn!(path = %path.display(), "cannot remove: {e}"),
    }
}

/// `pack-<40 hex>.<ext>` → (`pack-<hex>`, ext).
fn pack_name(name: &str) -> Option<(&str, &str)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let hex = stem.strip_prefix("pack-")?;
    (hex.len() == 40 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some((stem, ext))
}

/// Fast (no object is inflated): the repository opens, every pack is whole (its trailing
/// checksum is the one its index recorded: a truncated or overwritten end shows), and
/// every ref names an object the mirror has.
pub(super) fn check(dir: &Path) -> Result<git2::Repository, String> {
    let repo =
        git2::Repository::open_bare(dir).map_err(|e| format!("does not open: {}", e.message()))?;
    let pack_dir = dir.join("objects/pack");
    if let Ok(entries) = std::fs::read_dir(&pack_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((stem, "pack")) = pack_name(&name) else {
                continue;
            };
            let idx = pack_dir.join(format!("{stem}.idx"));
            check_pack(&e.path(), &idx).map_err(|why| format!("{name}: {why}"))?;
        }
    }
    let odb = repo
        .odb()
        .map_err(|e| format!("object database: {}", e.message()))?;
    let refs = repo
        .references()
        .map_err(|e| format!("refs: {}", e.message()))?;
    for r in refs {
        let r = r.map_err(|e| format!("refs: {}", e.message()))?;
        if let Some(oid) = r.target() {
            if !odb.exists(oid) {
                return Err(format!(
                    "{} names {oid}, which is missing",
                    r.name().unwrap_or("a ref")
                ));
            }
        }
    }
    drop(odb);
    Ok(repo)
}

/// A version-2 index ends with the pack's checksum then its own; a pack ends with its
/// checksum.
fn check_pack(pack: &Path, idx: &Path) -> Result<(), String> {
    let tail = |p: &Path, back: i64| -> Result<[u8; 20], String> {
        let mut f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let len = f.metadata().map_err(|e| e.to_string())?.len();
        if len < 32 + back.unsigned_abs() {
            return Err(format!("{} is truncated ({len} bytes)", p.display()));
        }
        f.seek(SeekFrom::End(back)).map_err(|e| e.to_string())?;
        let mut sum = [0u8; 20];
        f.read_exact(&mut sum).map_err(|e| e.to_string())?;
        Ok(sum)
    };
    let in_pack = tail(pack, -20)?;
    let in_idx = tail(idx, -40)?;
    if in_pack != in_idx {
        return Err("the pack's checksum is not the one its index recorded".into());
    }
    Ok(())
}
