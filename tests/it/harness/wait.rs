//! Polling: the processes and containers the tests watch do not say when they are done, so
//! the tests look again until they are, or give up after a while.

use std::time::{Duration, Instant};

/// Calls `f` every `every` until it returns `Some`, for at most `within`; `None` if it never did.
pub fn poll<T>(within: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(every);
    }
    None
}

/// Waits until `f` holds, looking every 50 ms; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
