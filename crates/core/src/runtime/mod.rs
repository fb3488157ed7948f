//! What CircleCI puts around a job's steps, on the agent's side: the in-job `circleci`
//! command ([`cmd`]: the `bosun-circleci` crate, also built into a static executable by
//! `build.rs`) and the files the agent hands it.

pub use bosun_circleci as cmd;

/// The static in-job `circleci` executable (see `build.rs`).
pub static CIRCLECI_EXECUTABLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/circleci"));

/// Hand back to the kernel the pages of `bytes`, data in the binary's read-only segment that
/// this process is done with for now: the in-job executable, once a job's setup archive holds
/// its copy. Otherwise its pages stay mapped (and counted in the agent's RSS) from the first
/// job on, though the agent reads them once a job. `MADV_PAGEOUT` never changes what the bytes
/// read (a page mapped by another process, the coordinator running the same binary, stays
/// where it is); the next job reads them back from the page cache or the file. Only the pages
/// wholly inside `bytes` are named. An error (a kernel before 5.4) leaves things as they were.
pub fn page_out(bytes: &'static [u8]) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let (lo, hi, _) = whole_pages(bytes)?;
        if hi > lo {
            // SAFETY: [lo, hi) lies inside a `'static` byte slice, so it is mapped for the
            // life of the process; MADV_PAGEOUT is advice that keeps every byte's value (a
            // file page is read back, an anonymous one swapped or left alone).
            let rc = unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_PAGEOUT) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// The first and end addresses of the pages wholly inside `bytes` (equal when there are
/// none), and the page size.
#[cfg(target_os = "linux")]
fn whole_pages(bytes: &[u8]) -> std::io::Result<(usize, usize, usize)> {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .map_err(|_| std::io::Error::other("no page size"))?;
    let start = bytes.as_ptr() as usize;
    let lo = start.div_ceil(page) * page;
    Ok((lo, ((start + bytes.len()) / page * page).max(lo), page))
}

#[cfg(all(test, target_os = "linux"))]
mod pages {
    /// Two MiB of read-only data in this test binary, read by no other test.
    static DATA: [u8; 2 << 20] = [7; 2 << 20];

    /// How many of `bytes`' whole pages this process has mapped (`/proc/self/pagemap`: bit 63
    /// of a page's entry; the page cache may still hold the others).
    fn mapped(bytes: &'static [u8]) -> usize {
        use std::os::unix::fs::FileExt;
        let (lo, hi, page) = super::whole_pages(bytes).expect("page size");
        let mut entries = vec![0u8; (hi - lo) / page * 8];
        let pagemap = std::fs::File::open("/proc/self/pagemap").expect("pagemap");
        pagemap
            .read_exact_at(&mut entries, (lo / page * 8) as u64)
            .expect("read pagemap");
        entries.chunks_exact(8).filter(|e| e[7] & 0x80 != 0).count()
    }

    #[test]
    fn paged_out_data_leaves_memory_and_reads_back_the_same() {
        let data: &'static [u8] = &DATA;
        // black_box: the sum must really read every page.
        let sum: u64 = data
            .iter()
            .map(|&b| u64::from(std::hint::black_box(b)))
            .sum();
        assert_eq!(sum, 7 * (2 << 20));
        let before = mapped(data);
        assert!(
            before >= 500,
            "only {before} pages mapped after reading them all"
        );
        super::page_out(data).expect("madvise(MADV_PAGEOUT)");
        let after = mapped(data);
        assert!(after < before / 4, "{after} of {before} pages still mapped");
        let again: u64 = data
            .iter()
            .map(|&b| u64::from(std::hint::black_box(b)))
            .sum();
        assert_eq!(again, sum);
    }
}

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
