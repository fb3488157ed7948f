//! Test timings for `circleci tests split --split-by=timings`: what `store_test_results`
//! measured in a job's earlier runs, kept per project and job name in the local store and
//! handed to the job's in-job command as a file at start.

use crate::runtime::cmd::split::{format_timings, parse_timings, Timing};
use crate::store::LocalStore;
use std::collections::HashMap;

/// The stored timings of job `job`, as the in-job command reads them; `None` if no earlier
/// run stored any. Read once per run, when its specs are made: the nodes of a parallel job
/// must all split by the same timings, and a fast node stores its own before a slow one
/// starts.
pub(super) fn for_job(store: &LocalStore, job: &str) -> Option<String> {
    std::fs::read_to_string(store.timings_path(job))
        .ok()
        .filter(|t| !t.is_empty())
}

/// Merge a run's test case times into the job's timings: a test measured now replaces its
/// older time, tests not run now keep theirs (the nodes of a parallel job each store their
/// own share). Written to a temporary file and renamed, so a reader never sees half of it.
pub(super) fn record(store: &LocalStore, job: &str, cases: Vec<Timing>) -> std::io::Result<usize> {
    if cases.is_empty() {
        return Ok(0);
    }
    let path = store.timings_path(job);
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("timings path has no directory"))?;
    std::fs::create_dir_all(dir)?;
    // The nodes of a parallel job store their results at the same time: one at a time here.
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| std::io::Error::from(e))?;
    let mut merged: Vec<Timing> = std::fs::read_to_string(&path)
        .map(|t| parse_timings(&t))
        .unwrap_or_default();
    let mut index: HashMap<(String, String, String), usize> = merged
        .iter()
        .enumerate()
        .map(|(i, t)| ((t.file.clone(), t.classname.clone(), t.name.clone()), i))
        .collect();
    let n = cases.len();
    for c in cases {
        let key = (c.file.clone(), c.classname.clone(), c.name.clone());
        match index.get(&key) {
            Some(&i) => merged[i] = c,
            None => {
                index.insert(key, merged.len());
                merged.push(c);
            }
        }
    }
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), format_timings(&merged))?;
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(file: &str, name: &str, s: f64) -> Timing {
        Timing {
            file: file.into(),
            classname: "C".into(),
            name: name.into(),
            seconds: s,
        }
    }

    #[test]
    fn runs_merge_newest_time_wins_others_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            LocalStore::open(dir.path(), crate::store::ProjectScope::new("p")).expect("store");
        record(&store, "test", vec![t("a", "1", 1.0), t("b", "2", 2.0)]).expect("record");
        record(&store, "test", vec![t("a", "1", 3.0), t("c", "3", 4.0)]).expect("record");
        let text = std::fs::read_to_string(store.timings_path("test")).expect("read");
        let got = parse_timings(&text);
        assert_eq!(
            got,
            vec![t("a", "1", 3.0), t("b", "2", 2.0), t("c", "3", 4.0)]
        );
        // Another job's name has none.
        assert!(!store.timings_path("lint").exists());
    }
}
