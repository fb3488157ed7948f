//! What CircleCI puts around a job's steps, on the agent's side: the in-job `circleci`
//! command ([`cmd`], also built into a static executable by `build.rs`) and the files the
//! agent hands it.

pub mod cmd;

/// The static in-job `circleci` executable (see `build.rs`).
pub static CIRCLECI_EXECUTABLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/circleci"));

#[cfg(test)]
mod props {
    use super::cmd::split::{
        split_by_name, split_by_timings, split_by_weight, Timing, TimingsType,
    };
    use proptest::prelude::*;

    fn every_test_once(nodes: &[Vec<String>], tests: &[String]) {
        let mut all: Vec<&String> = nodes.iter().flatten().collect();
        all.sort();
        let mut want: Vec<&String> = tests.iter().collect();
        want.sort();
        want.dedup();
        assert_eq!(all, want);
    }

    proptest! {
        #[test]
        fn a_split_covers_every_test_exactly_once(
            n in 0usize..200,
            total in 1usize..9,
            seed in any::<u64>(),
            with_timings in any::<bool>(),
        ) {
            let tests: Vec<String> = (0..n).map(|i| format!("spec/t{}_{i}_spec.rb", seed % 7)).collect();
            // Timings for some of them (every third), none for the rest.
            let timings: Vec<Timing> = tests
                .iter()
                .enumerate()
                .filter(|(i, _)| with_timings && i % 3 == 0)
                .map(|(i, t)| Timing {
                    file: t.clone(),
                    classname: String::new(),
                    name: String::new(),
                    seconds: ((seed >> (i % 60)) % 1000) as f64 / 10.0,
                })
                .collect();
            let by_name: Vec<Vec<String>> = (0..total).map(|i| split_by_name(&tests, i, total)).collect();
            every_test_once(&by_name, &tests);
            let by_time: Vec<Vec<String>> = (0..total)
                .map(|i| split_by_timings(&tests, &timings, TimingsType::Filename, None, i, total).tests)
                .collect();
            every_test_once(&by_time, &tests);
        }

        #[test]
        fn the_timing_split_is_within_the_greedy_bound(
            weights in proptest::collection::vec(0.0f64..600.0, 1..300),
            total in 1usize..9,
        ) {
            let weighted: Vec<(String, f64)> =
                weights.iter().enumerate().map(|(i, w)| (format!("t{i}"), *w)).collect();
            let nodes = split_by_weight(&weighted, total);
            let load = |n: &Vec<String>| -> f64 {
                n.iter().map(|t| weighted.iter().find(|(k, _)| k == t).map_or(0.0, |(_, w)| *w)).sum()
            };
            let sum: f64 = weights.iter().sum();
            let max_item = weights.iter().cloned().fold(0.0, f64::max);
            // Greedy list scheduling (longest first, to the least loaded): no node carries
            // more than the mean plus one test.
            for n in &nodes {
                prop_assert!(load(n) <= sum / total as f64 + max_item + 1e-6);
            }
        }
    }
}
