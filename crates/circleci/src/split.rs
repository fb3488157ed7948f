//! `circleci tests split`: which of the given tests this node runs.
//!
//! - `name`: sorted by name, dealt out in turn (node `i` gets the `i`-th, `i+total`-th, …);
//! - `filesize` / `timings`: the longest first, each to the node with the least so far
//!   (greedy list scheduling, CircleCI's documented approach: "each container gets a roughly
//!   equal share of the time"). Its bound: no node gets more than the mean plus the largest
//!   single weight.
//!
//! Timings come from the JUnit results the same job stored in earlier runs, written by the
//! agent into the job's runtime directory as `timings.tsv` (`file\tclassname\tname\tseconds`).

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimingsType {
    Filename,
    Classname,
    Testname,
    /// Filename when the names look like files (contain `/` or `.` plus an extension), else
    /// classname.
    Autodetect,
}

impl TimingsType {
    pub fn parse(s: &str) -> Option<TimingsType> {
        Some(match s {
            "filename" => TimingsType::Filename,
            "classname" => TimingsType::Classname,
            "testname" => TimingsType::Testname,
            "autodetect" => TimingsType::Autodetect,
            _ => return None,
        })
    }
}

/// One stored test case's time.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub file: String,
    pub classname: String,
    pub name: String,
    pub seconds: f64,
}

/// `file\tclassname\tname\tseconds` lines; malformed lines are skipped.
pub fn parse_timings(text: &str) -> Vec<Timing> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (file, classname, name, secs) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let seconds: f64 = secs.trim().parse().ok()?;
            (seconds.is_finite() && seconds >= 0.0).then(|| Timing {
                file: file.to_owned(),
                classname: classname.to_owned(),
                name: name.to_owned(),
                seconds,
            })
        })
        .collect()
}

/// The inverse of [`parse_timings`] (tabs and newlines in names become spaces).
pub fn format_timings(timings: &[Timing]) -> String {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    let mut out = String::new();
    for t in timings {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            clean(&t.file),
            clean(&t.classname),
            clean(&t.name),
            t.seconds
        ));
    }
    out
}

/// `./a/b.rb` and `a/b.rb` are the same file.
pub fn normalize_file(name: &str) -> &str {
    let mut s = name;
    while let Some(r) = s.strip_prefix("./") {
        s = r;
    }
    s
}

/// Total seconds per key of the chosen type.
pub fn timing_table(timings: &[Timing], kind: TimingsType) -> HashMap<String, f64> {
    let mut table: HashMap<String, f64> = HashMap::new();
    for t in timings {
        let key = match kind {
            TimingsType::Filename | TimingsType::Autodetect => normalize_file(&t.file).to_owned(),
            TimingsType::Classname => t.classname.clone(),
            TimingsType::Testname => t.name.clone(),
        };
        if key.is_empty() {
            continue;
        }
        *table.entry(key).or_insert(0.0) += t.seconds;
    }
    table
}

/// Node `index` of `total` by name: sorted, dealt out in turn.
pub fn split_by_name(tests: &[String], index: usize, total: usize) -> Vec<String> {
    let mut sorted: Vec<&String> = tests.iter().collect();
    sorted.sort();
    sorted.dedup();
    sorted
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % total.max(1) == index)
        .map(|(_, t)| t.clone())
        .collect()
}

/// Every node's share by weight: the heaviest first, each to the lightest node so far (ties:
/// by name, then the lowest node). Deterministic, so every node computes the same split.
pub fn split_by_weight(weighted: &[(String, f64)], total: usize) -> Vec<Vec<String>> {
    let total = total.max(1);
    let mut items: Vec<&(String, f64)> = weighted.iter().collect();
    items.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    items.dedup_by(|a, b| a.0 == b.0);
    let mut loads = vec![0.0f64; total];
    let mut nodes: Vec<Vec<String>> = vec![Vec::new(); total];
    for (name, w) in items {
        let mut best = 0;
        for (i, l) in loads.iter().enumerate() {
            if *l < loads[best] {
                best = i;
            }
        }
        loads[best] += w;
        nodes[best].push(name.clone());
    }
    for n in &mut nodes {
        n.sort();
    }
    nodes
}

/// What `tests split --split-by=timings` decided, and what it should tell the user.
pub struct TimingSplit {
    pub tests: Vec<String>,
    pub notices: Vec<String>,
}

/// Split by timings: known tests weigh their stored time, unknown ones `default` (or the mean
/// of the known ones); with no timing for any test, by name with a notice.
pub fn split_by_timings(
    tests: &[String],
    timings: &[Timing],
    kind: TimingsType,
    default: Option<f64>,
    index: usize,
    total: usize,
) -> TimingSplit {
    let kind = match kind {
        TimingsType::Autodetect => {
            if tests.iter().all(|t| looks_like_file(t)) {
                TimingsType::Filename
            } else {
                TimingsType::Classname
            }
        }
        k => k,
    };
    let table = timing_table(timings, kind);
    let key = |t: &str| -> String {
        if kind == TimingsType::Filename {
            normalize_file(t).to_owned()
        } else {
            t.to_owned()
        }
    };
    let known: Vec<f64> = tests
        .iter()
        .filter_map(|t| table.get(&key(t)).copied())
        .collect();
    let mut notices = Vec::new();
    if known.is_empty() {
        notices.push(
            "No timing found for any of the tests (no earlier run stored test results for this job); splitting by name"
                .to_owned(),
        );
        return TimingSplit {
            tests: split_by_name(tests, index, total),
            notices,
        };
    }
    let fallback = default.unwrap_or_else(|| known.iter().sum::<f64>() / known.len() as f64);
    let mut missing = 0usize;
    let weighted: Vec<(String, f64)> = tests
        .iter()
        .map(|t| {
            let w = table.get(&key(t)).copied().unwrap_or_else(|| {
                missing += 1;
                fallback
            });
            (t.clone(), w)
        })
        .collect();
    if missing > 0 {
        notices.push(format!(
            "No timing found for {missing} of {} tests; they count as {fallback:.3}s each",
            tests.len()
        ));
    }
    let mut nodes = split_by_weight(&weighted, total);
    let mine = if index < nodes.len() {
        std::mem::take(&mut nodes[index])
    } else {
        Vec::new()
    };
    TimingSplit {
        tests: mine,
        notices,
    }
}

fn looks_like_file(t: &str) -> bool {
    t.contains('/')
        || t.rsplit_once('.').is_some_and(|(_, ext)| {
            !ext.is_empty()
                && ext.len() <= 5
                && ext.chars().all(|c| c.is_ascii_alphanumeric())
                && !ext.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        })
}

/// `10s`, `1.5m`, `250ms`, `3` (seconds).
pub fn parse_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t/test_{i:03}.py")).collect()
    }

    #[test]
    fn name_split_deals_sorted_names_in_turn() {
        let t: Vec<String> = ["c", "a", "d", "b", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(split_by_name(&t, 0, 2), vec!["a", "c", "e"]);
        assert_eq!(split_by_name(&t, 1, 2), vec!["b", "d"]);
        assert!(split_by_name(&t, 3, 2).is_empty());
    }

    #[test]
    fn weights_go_heaviest_first_to_the_lightest_node() {
        let w: Vec<(String, f64)> = [("a", 5.0), ("b", 4.0), ("c", 3.0), ("d", 3.0), ("e", 1.0)]
            .iter()
            .map(|(n, w)| (n.to_string(), *w))
            .collect();
        let nodes = split_by_weight(&w, 2);
        // a(5) → 0; b(4) → 1; c(3) → 1 (7); d(3) → 0 (8); e(1) → 1 (8)
        assert_eq!(nodes[0], vec!["a", "d"]);
        assert_eq!(nodes[1], vec!["b", "c", "e"]);
    }

    #[test]
    fn timings_by_file_class_and_test_name() {
        let text = "./t/a.py\tA\tone\t2.5\nt/a.py\tA\ttwo\t0.5\nt/b.py\tB\tthree\t1\nbad line\n";
        let timings = parse_timings(text);
        assert_eq!(timings.len(), 3);
        let by_file = timing_table(&timings, TimingsType::Filename);
        assert_eq!(by_file.get("t/a.py"), Some(&3.0));
        let by_class = timing_table(&timings, TimingsType::Classname);
        assert_eq!(by_class.get("B"), Some(&1.0));
        let by_test = timing_table(&timings, TimingsType::Testname);
        assert_eq!(by_test.get("two"), Some(&0.5));
        assert_eq!(parse_timings(&format_timings(&timings)), timings);
    }

    #[test]
    fn no_timings_falls_back_to_name_with_a_notice() {
        let tests = names(10);
        let s = split_by_timings(&tests, &[], TimingsType::Filename, None, 1, 4);
        assert_eq!(s.tests, split_by_name(&tests, 1, 4));
        assert_eq!(s.notices.len(), 1);
    }

    #[test]
    fn unknown_tests_weigh_the_mean_of_the_known() {
        let tests = names(3);
        let timings = vec![Timing {
            file: tests[0].clone(),
            classname: String::new(),
            name: "x".into(),
            seconds: 9.0,
        }];
        let s0 = split_by_timings(&tests, &timings, TimingsType::Autodetect, None, 0, 2);
        let s1 = split_by_timings(&tests, &timings, TimingsType::Autodetect, None, 1, 2);
        // 9, 9, 9 on two nodes: one gets the known test alone… or two of them.
        assert_eq!(s0.tests.len() + s1.tests.len(), 3);
        assert!(s0.notices.iter().any(|n| n.contains("2 of 3")));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(10.0));
        assert_eq!(parse_duration("250ms"), Some(0.25));
        assert_eq!(parse_duration("2m"), Some(120.0));
        assert_eq!(parse_duration("3"), Some(3.0));
        assert_eq!(parse_duration("x"), None);
    }
}
