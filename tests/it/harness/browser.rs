//! Headless Chromium driven over the DevTools protocol (`--remote-debugging-pipe`), for the
//! pages' tests: [`with_browser`] runs a closure with a [`Browser`] on a blocking thread;
//! `open`, `eval`, `wait_for`, `click`, `key`, `type_text` act as a person at the page would.
//! Tests skip their browser part when no Chromium is installed (Debian's `chromium`).

use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's `chromium` (or another name for it), if installed.
pub fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Headless Chromium driven over `--remote-debugging-pipe` (DevTools protocol messages,
/// NUL-terminated JSON, on fds 3 and 4): no WebSocket client needed. Blocking; every call
/// gives up after 30 s. Screenshots are never taken: tests assert on the DOM.
pub struct Browser {
    child: Child,
    to: std::fs::File,
    from: BufReader<std::fs::File>,
    next: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors, which we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

impl Browser {
    pub fn launch(bin: &str) -> Browser {
        use std::io::Write as _;
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().expect("profile dir");
        let (cmd_r, cmd_w) = pipe(); // we write commands, chromium reads fd 3
        let (out_r, out_w) = pipe(); // chromium writes fd 4, we read
        let (r3, w4) = (cmd_r.as_raw_fd(), out_w.as_raw_fd());
        let mut cmd = Command::new(bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-pipe",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only dup2/fcntl (async-signal-safe) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for (fd, target) in [(r3, 3), (w4, 4)] {
                    if fd == target {
                        libc::fcntl(fd, libc::F_SETFD, 0);
                    } else if libc::dup2(fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        drop((cmd_r, out_w));
        let mut b = Browser {
            child,
            to: std::fs::File::from(cmd_w),
            from: BufReader::new(std::fs::File::from(out_r)),
            next: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}), false);
        let target_id = target["targetId"].as_str().expect("target").to_owned();
        let att = b.call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
            false,
        );
        b.session = att["sessionId"].as_str().expect("session").to_owned();
        let _ = b.to.flush();
        b
    }

    pub fn call(
        &mut self,
        method: &str,
        params: serde_json::Value,
        in_page: bool,
    ) -> serde_json::Value {
        match self.try_call(method, params, in_page) {
            Ok(v) => v,
            Err(v) => panic!("{method}: {v}"),
        }
    }

    /// As [`Browser::call`], the DevTools error returned instead of a panic.
    fn try_call(
        &mut self,
        method: &str,
        params: serde_json::Value,
        in_page: bool,
    ) -> Result<serde_json::Value, serde_json::Value> {
        use std::io::Write as _;
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if in_page {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        loop {
            let mut buf = Vec::new();
            let n = self
                .from
                .read_until(0, &mut buf)
                .expect("read from chromium");
            assert!(n > 0, "chromium closed its pipe");
            buf.pop();
            let v: serde_json::Value = serde_json::from_slice(&buf).expect("devtools json");
            if v["id"].as_u64() == Some(id) {
                if v.get("error").is_some() {
                    return Err(v);
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Evaluate `expr` in the page (promises awaited) and return its value.
    pub fn eval(&mut self, expr: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            true,
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Poll `expr` until it is true (30 s at most). A page in the middle of a navigation
    /// answers "Inspected target navigated or closed" (DevTools error -32000) instead of a
    /// value: that is "not yet", not a failure.
    pub fn wait_for(&mut self, expr: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.try_call(
                "Runtime.evaluate",
                json!({"expression": format!("!!({expr})"), "returnByValue": true, "awaitPromise": true}),
                true,
            );
            match r {
                Ok(r) if r["result"]["value"] == json!(true) => return,
                Ok(r) => assert!(
                    r.get("exceptionDetails").is_none()
                        || r.to_string().contains("Execution context was destroyed"),
                    "{expr}: {r}"
                ),
                Err(e) => assert_eq!(e["error"]["code"], json!(-32000), "{expr}: {e}"),
            }
            assert!(Instant::now() < deadline, "timed out waiting for {expr}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Load `url` and wait until its deferred script ran (DOMContentLoaded).
    pub fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}), true);
        self.wait_for(&format!(
            "location.href === {} && document.readyState !== 'loading'",
            json!(url)
        ));
    }

    /// A real key press (keyboard navigation): Enter, Tab, …
    pub fn key(&mut self, key: &str, code: u32, text: &str) {
        for t in ["keyDown", "keyUp"] {
            let mut p = json!({"type": t, "key": key, "code": key, "windowsVirtualKeyCode": code});
            if t == "keyDown" && !text.is_empty() {
                p["text"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", p, true);
        }
    }

    pub fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text}), true);
    }

    /// A real mouse click (press and release) in the middle of the element `selector`,
    /// scrolled into view first; panics when there is no such element or it is not shown.
    pub fn click(&mut self, selector: &str) {
        let at = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return r.width > 0 && r.height > 0 ? [r.x + r.width / 2, r.y + r.height / 2] : null; }})()",
            sel = json!(selector)
        ));
        let (Some(x), Some(y)) = (at[0].as_f64(), at[1].as_f64()) else {
            panic!("nothing shown to click at {selector}");
        };
        for t in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": t, "x": x, "y": y, "button": "left", "clickCount": 1}),
                true,
            );
        }
    }
}

/// Run `f` with a browser on a blocking thread, within `secs`.
pub async fn with_browser<T: Send + 'static>(
    secs: u64,
    f: impl FnOnce(&mut Browser) -> T + Send + 'static,
) -> Option<T> {
    let Some(bin) = chromium() else {
        eprintln!("skipped: no chromium installed");
        return None;
    };
    let run = tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch(bin);
        f(&mut b)
    });
    Some(
        tokio::time::timeout(Duration::from_secs(secs), run)
            .await
            .expect("the browser part timed out")
            .expect("the browser part panicked"),
    )
}
