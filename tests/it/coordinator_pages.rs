//! The coordinator's pages as a browser and its followers use them: the job page live in
//! headless Chromium (colours, arrival times, the failed step, search), the job list, big
//! logs read in bounded pieces, and many followers beside an agent's appends.

use crate::coordinator_rig::*;
use crate::harness::{chromium, with_browser};

use bosun::protocol::{EventBatch, FinalStatus, JobEvent};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::process::Command;
use std::time::{Duration, Instant};

/// The browser tests need Chromium from their first line: without it they are skipped whole,
/// never run up to a wait for a page no browser opened.
fn no_chromium() -> bool {
    let absent = chromium().is_none();
    if absent {
        eprintln!("skipped: no chromium installed (scripts/test.sh installs it on Debian)");
    }
    absent
}

/// Optional: the job page in a real headless browser (Debian's `chromium`), if installed: the
/// server-rendered log is there, and the inline script follows the job live (new log text,
/// a new step section, the final status) over server-sent events.
#[tokio::test]
async fn job_page_follows_the_job_live_in_headless_chromium() {
    if no_chromium() {
        return;
    }
    let chromium = chromium().expect("chromium is installed");
    let mut s = fresh_with(&[], true);
    let a = register(&s, "a1").await;
    let id = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    a.log(&id, 0, b"hello <world>\n").await;
    let url = format!("{}/jobs/{id}", s.base);
    // Virtual time stands still while a request is open, so chromium dumps the DOM only after
    // the job ended (the stream closes) plus the budget: after the live updates landed.
    let browser = tokio::task::spawn_blocking(move || {
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=2000",
                "--dump-dom",
                &url,
            ])
            .output()
    });
    // What follows must reach the page live: wait until its script opened the stream.
    let log = s.log.take().expect("server log");
    tokio::task::spawn_blocking(move || loop {
        let line = log
            .recv_timeout(Duration::from_secs(30))
            .expect("the page never opened its live stream");
        if line.contains("live stream opened") {
            break;
        }
    })
    .await
    .expect("join");
    a.log(&id, 14, b"LIVE <tail>\n").await;
    let step = JobEvent::StepStarted {
        step: 1,
        name: "Run tests".into(),
        log_offset: 26,
        commit_sha: None,
    };
    let batch = EventBatch {
        first_seq: 0,
        events: vec![step],
    };
    a.post(
        &format!("/jobs/{id}/events"),
        serde_json::to_value(batch).expect("json"),
    )
    .await;
    a.log(&id, 26, b"in the step\n").await;
    let all = b"hello <world>\nLIVE <tail>\nin the step\n";
    assert_eq!(a.finish(&id, FinalStatus::Success, all).await.status(), 200);
    let out = tokio::time::timeout(Duration::from_secs(60), browser)
        .await
        .expect("chromium did not finish within 60 s")
        .expect("join")
        .expect("chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    // Live lines are rendered by the coordinator (pages/live.rs): a committed part and a
    // tail, stamped with the time their first byte arrived.
    assert!(
        dom.contains("></a>hello &lt;world&gt;\n</span><span class=\"l\" id=\"L2\" data-t=\""),
        "{dom}"
    );
    assert!(
        dom.contains("<a href=\"#L2\" data-n=\"2\" tabindex=\"-1\"></a><span class=\"lc\">LIVE &lt;tail&gt;</span><span class=\"lt\"></span>\n</span></pre>"),
        "{dom}"
    );
    assert!(
        dom.contains("<span class=\"name\">Run tests</span>"),
        "{dom}"
    );
    assert!(
        dom.contains("<a href=\"#L3\" data-n=\"3\" tabindex=\"-1\"></a><span class=\"lc\">in the step</span><span class=\"lt\"></span>\n</span></pre>"),
        "{dom}"
    );
    assert!(
        dom.contains("id=\"status\" data-status=\"success\"><span class=\"badge st-success\">"),
        "{dom}"
    );
}

/// Issue 18: live text renders through the coordinator's ANSI renderer — colours show live,
/// also when an escape is cut across two appends or the page loaded mid-line and mid-colour,
/// and progress lines collapse; each line can show the time its first byte arrived.
#[tokio::test]
async fn live_lines_are_coloured_and_lines_show_their_arrival_time_on_demand() {
    if no_chromium() {
        return;
    }
    let mut s = fresh_with(&[], true);
    let a = register(&s, "a1").await;
    let id = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    let first: &[u8] = b"start\npartial \x1b[32mgre";
    a.log(&id, 0, first).await;
    let url = format!("{}/jobs/{id}", s.base);
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<()>();
    let (sent_tx, sent_rx) = std::sync::mpsc::channel::<()>();
    let browser = tokio::spawn(with_browser(120, move |b| {
        b.open(&url);
        let _ = opened_tx.send(());
        let _ = sent_rx.recv_timeout(Duration::from_secs(60));
        b.wait_for("document.querySelectorAll('#log .l').length === 4 && !document.querySelector('#log .lt:not(:empty)')");
        let lines = b.eval("[...document.querySelectorAll('#log .l')].map(l => l.textContent)");
        let colours = b.eval(
            "[...document.querySelectorAll('#log .l span[class^=f]')].map(e => [e.className, e.textContent])",
        );
        let escapes = b.eval("document.getElementById('log').textContent.includes('\\x1b')");
        let hidden = b.eval("getComputedStyle(document.querySelector('#L1'), '::before').content");
        b.eval("document.getElementById('ts-toggle').click()");
        let shown = b.eval(
            "[document.getElementById('log').className, location.search, \
              document.getElementById('ts-toggle').getAttribute('aria-pressed'), \
              [...document.querySelectorAll('#log .l')].map(l => l.dataset.t || ''), \
              getComputedStyle(document.querySelector('#L3'), '::before').content]",
        );
        (lines, colours, escapes, hidden, shown)
    }));
    let log = s.log.take().expect("server log");
    tokio::task::spawn_blocking(move || {
        let _ = opened_rx.recv_timeout(Duration::from_secs(60));
        loop {
            let line = log
                .recv_timeout(Duration::from_secs(30))
                .expect("the page never opened its live stream");
            if line.contains("live stream opened") {
                break;
            }
        }
    })
    .await
    .expect("join");
    // A new second: the lines from here on arrived later than the first ones.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pieces: [&[u8]; 3] = [
        b"en\x1b[0m end\nplain \x1b[3",
        b"1mred\x1b[0m\n  0%\r 50%",
        b"\r100%\n",
    ];
    let mut all = first.to_vec();
    for p in pieces {
        a.log(&id, all.len() as u64, p).await;
        all.extend_from_slice(p);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = sent_tx.send(());
    let (lines, colours, escapes, hidden, shown) =
        browser.await.expect("join").expect("chromium is installed");
    assert_eq!(
        lines,
        json!(["start\n", "partial green end\n", "plain red\n", "100%\n"]),
        "{colours}"
    );
    assert_eq!(colours, json!([["f2", "green"], ["f1", "red"]]));
    assert_eq!(escapes, json!(false));
    assert_eq!(hidden, json!("none"), "no times before the toggle");
    let times = shown[3].as_array().expect("times");
    assert_eq!(shown[0], json!("ts"));
    assert_eq!(shown[1], json!("?timestamps=1"));
    assert_eq!(shown[2], json!("true"));
    assert!(
        times.iter().all(|t| {
            let t = t.as_str().unwrap_or("");
            t.len() == 8 && t.bytes().filter(|b| *b == b':').count() == 2
        }),
        "{shown}"
    );
    assert_ne!(times[0], times[2], "{shown}");
    assert_eq!(
        shown[4],
        json!(format!("\"{}\"", times[2].as_str().unwrap_or("")))
    );
    // Without the script: `?timestamps=1` renders every line's time.
    assert_eq!(
        a.finish(&id, FinalStatus::Success, &all).await.status(),
        200
    );
    let page = get_text(&format!("{}/jobs/{id}?timestamps=1", s.base)).await;
    assert!(page.contains("<div id=\"log\" class=\"ts\">"), "{page}");
    assert_eq!(
        page.matches("<span class=\"l\" id=\"L").count(),
        4,
        "{page}"
    );
    assert_eq!(page.matches("\" data-t=\"").count(), 4, "{page}");
    assert!(
        page.contains("<span class=\"f2\">green</span> end"),
        "{page}"
    );
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Issue 12 item 7: the job page and live streams read a big log in bounded pieces (the page
/// shows the tail; older parts on demand), so ten browsers following a 100 MiB log from its
/// start do not each hold it in memory.
#[tokio::test]
async fn ten_followers_of_a_100_mib_log_keep_the_coordinator_small() {
    let s = fresh(&[]);
    let a = register(&s, "a1").await;
    let id = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    let line =
        b"0123456789 bosun big log line abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n";
    let chunk: Vec<u8> = line.iter().copied().cycle().take(8 << 20).collect();
    let mut offset = 0u64;
    for _ in 0..12 {
        let (st, end) = a.log(&id, offset, &chunk).await;
        assert_eq!(st, 200);
        offset = end;
    }
    let (st, _) = a.log(&id, offset, b"THE-TAIL-MARKER\n").await;
    assert_eq!(st, 200);
    let before = peak_rss_kib(s.child.id());
    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut r = client()
            .get(format!("{}/jobs/{id}/stream?offset=0&seq=0", s.base))
            .send()
            .await
            .expect("stream");
        // Each follower reads a little, then stalls like a slow browser.
        let _ = tokio::time::timeout(Duration::from_secs(10), r.chunk()).await;
        streams.push(r);
    }
    let page = get_text(&format!("{}/jobs/{id}", s.base)).await;
    assert!(page.contains("THE-TAIL-MARKER"), "the page shows the tail");
    assert!(page.len() < 2 << 20, "the page is {} bytes", page.len());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = peak_rss_kib(s.child.id());
    eprintln!("coordinator peak RSS {before} KiB after the upload, {peak} KiB with 10 followers");
    assert!(
        peak < 150 * 1024,
        "peak RSS {peak} KiB with 10 followers of a 96 MiB log"
    );
    drop(streams);
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // state is field 3 of stat, i.e. index 0 here; utime 14 → 11, stime 15 → 12.
    n(11) + n(12)
}

/// `n` appends of `size` bytes to job `id` from `offset`; returns the new offset and the time.
async fn appends(a: &Agent, id: &str, offset: u64, n: usize, size: usize) -> (u64, Duration) {
    let chunk = vec![b'x'; size - 1]
        .into_iter()
        .chain([b'\n'])
        .collect::<Vec<u8>>();
    let mut off = offset;
    let t0 = Instant::now();
    for _ in 0..n {
        let (st, end) = a.log(id, off, &chunk).await;
        assert_eq!(st, 200);
        off = end;
    }
    (off, t0.elapsed())
}

/// `n` browsers following job `id` live, each reading everything it is sent.
async fn followers(base: &str, id: &str, n: usize) -> Vec<tokio::task::JoinHandle<u64>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut r = client()
            .get(format!("{base}/jobs/{id}/stream?offset=0&seq=0"))
            .send()
            .await
            .expect("stream");
        assert_eq!(r.status(), 200);
        // Connected and served once before the measurement starts.
        let _ = tokio::time::timeout(Duration::from_secs(10), r.chunk()).await;
        out.push(tokio::spawn(async move {
            let mut got = 0u64;
            while let Ok(Some(c)) = r.chunk().await {
                got += c.len() as u64;
            }
            got
        }));
    }
    out
}

/// Issue 12 item 10: live-page followers are woken by their own job's changes only, and read
/// off the writer's lock, so many of them do not slow an agent's log appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_do_not_slow_an_agents_log_appends() {
    const FOLLOWERS: usize = 50;
    // Enough for the CPU ticks (10 ms each) to outweigh the server's own periodic work.
    const APPENDS: usize = 1000;
    // Small appends, as a step printing line by line makes: what followers cost then is their
    // wake-ups and queries, not the bytes they are sent (those cost the same either way).
    const SIZE: usize = 256;
    // This agent sends no heartbeats: a lease long enough for 3,000 appends on a busy machine
    // (the default 30 s lapsed in CI, and appends then get 403).
    let s = fresh(&["--lease-secs", "600"]);
    let a = register(&s, "a1").await;
    let watched = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    let busy = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    let (wo, _) = appends(&a, &watched, 0, 1, SIZE).await;
    let (mut off, _) = appends(&a, &busy, 0, 20, SIZE).await; // warm up

    // No followers, then followers of another job (they must not even wake), in turns: the
    // best of three of each, so that a burst of the machine's other load in one phase is not
    // taken for the followers' cost.
    let (mut alone, mut cpu_alone) = (Duration::MAX, u64::MAX);
    let (mut beside, mut cpu_beside) = (Duration::MAX, u64::MAX);
    for _ in 0..3 {
        let c0 = cpu_ticks(s.child.id());
        let (o, took) = appends(&a, &busy, off, APPENDS, SIZE).await;
        off = o;
        cpu_alone = cpu_alone.min(cpu_ticks(s.child.id()) - c0);
        alone = alone.min(took);

        let others = followers(&s.base, &watched, FOLLOWERS).await;
        let c0 = cpu_ticks(s.child.id());
        let (o, took) = appends(&a, &busy, off, APPENDS, SIZE).await;
        off = o;
        cpu_beside = cpu_beside.min(cpu_ticks(s.child.id()) - c0);
        beside = beside.min(took);
        for f in others {
            f.abort();
        }
    }
    let others = followers(&s.base, &watched, FOLLOWERS).await;
    // What those followers cost with no append at all: each looks at its job once a second
    // (changes another process made are not notified), so a phase that a loaded machine
    // makes longer costs that much more, appends or not.
    let idle_for = Duration::from_secs(2);
    let c0 = cpu_ticks(s.child.id());
    tokio::time::sleep(idle_for).await;
    let idle_rate = (cpu_ticks(s.child.id()) - c0) as f64 / idle_for.as_secs_f64();

    // Followers of this job: each append reaches them all, without holding the writer up.
    let same = followers(&s.base, &busy, FOLLOWERS).await;
    let c0 = cpu_ticks(s.child.id());
    let (_, followed) = appends(&a, &busy, off, APPENDS, SIZE).await;
    let cpu_followed = cpu_ticks(s.child.id()) - c0;
    eprintln!(
        "{APPENDS} appends of {SIZE} B: alone {alone:?} ({cpu_alone} ticks), with {FOLLOWERS} \
         followers of another job {beside:?} ({cpu_beside} ticks), of this job {followed:?} \
         ({cpu_followed} ticks)"
    );
    // The followers did get the log (the watched job's first append, the busy job's bytes).
    a.finish(&busy, FinalStatus::Success, &[]).await;
    let _ = wo;
    for f in others {
        f.abort();
    }
    let ratio_beside = beside.as_secs_f64() / alone.as_secs_f64();
    let ratio_followed = followed.as_secs_f64() / alone.as_secs_f64();
    // Alone, the two measure the same (90–99 ticks beside against 93–110 alone, three runs);
    // in a full suite run the other tests' load once made it 120 against 74. Before one
    // notifier per job, followers of another job cost several times the appends' own CPU:
    // twice is still far below that.
    // Three times, not two: in full-suite runs on two cores the phase with 50 open streams
    // beside took twice as long as the one without and cost up to 2.5 times its CPU (231
    // against 92 ticks); a follower woken per append re-queried its job each time, which
    // cost many times more.
    let idle_share = (idle_rate * beside.as_secs_f64()).ceil() as u64;
    assert!(
        cpu_beside <= cpu_alone * 3 + 10 + idle_share,
        "followers of another job cost the coordinator CPU: {cpu_beside} ticks vs {cpu_alone} \
         ({idle_share} of them their once-a-second look, {idle_rate:.1} ticks/s idle)"
    );
    // Wall-clock ratios, so loose: the suite runs tests side by side on two cores (3.7x was
    // seen for this job's followers, 3.3x for another job's, under that load; the CPU
    // ticks above are the steady check). Before one notifier per job they were 8.9x
    // (another job's followers) and 18x (this job's): these bounds still catch that.
    assert!(
        ratio_beside < 5.0,
        "followers of another job slowed appends {ratio_beside:.2}x"
    );
    assert!(
        ratio_followed < 8.0,
        "{FOLLOWERS} followers slowed appends {ratio_followed:.2}x"
    );
    for f in same {
        f.abort();
    }
}

async fn events(a: &Agent, id: &str, first_seq: u64, events: Vec<JobEvent>) {
    let r = a
        .post(
            &format!("/jobs/{id}/events"),
            serde_json::to_value(EventBatch { first_seq, events }).expect("json"),
        )
        .await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

fn step_started(step: u32, name: &str, at: usize, sha: Option<&str>) -> JobEvent {
    JobEvent::StepStarted {
        step,
        name: name.into(),
        log_offset: at as u64,
        commit_sha: sha.map(str::to_owned),
    }
}

fn step_finished(step: u32, name: &str, ok: bool, at: usize) -> JobEvent {
    JobEvent::StepFinished {
        step,
        name: name.into(),
        status: if ok {
            bosun::protocol::StepStatus::Success
        } else {
            bosun::protocol::StepStatus::Failed
        },
        exit_code: Some(if ok { 0 } else { 1 }),
        duration_ms: 2300,
        log_offset: at as u64,
    }
}

/// Issue 18: a failed job's page in Chromium opens on its failed step (scrolled into view),
/// renders colours without escape bytes, collapses progress lines, keeps hostile output as
/// text, expands and collapses steps from the keyboard, and its search finds a line. The same
/// page reads without JavaScript, carries no inline script or style, and shows the commit the
/// agent checked out, linked to Bitbucket.
#[tokio::test]
async fn a_failed_jobs_page_opens_on_its_failure_with_colours_and_search_in_chromium() {
    if no_chromium() {
        return;
    }
    let s = fresh(&[]);
    let a = register(&s, "builder-7").await;
    let id = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let mut log = Vec::new();
    log.extend_from_slice(b"    Checked out 0123456789ab\n");
    let s1 = log.len();
    log.extend_from_slice(b"\n==> Step 1: Install\n");
    for i in 0..=10 {
        log.extend_from_slice(format!("downloading {}%\r", i * 10).as_bytes());
    }
    log.extend_from_slice(b"\n\x1b[32minstalled\x1b[0m\n");
    let e1 = log.len();
    log.extend_from_slice(b"\n==> Step 2: Run tests\n");
    for i in 0..300 {
        log.extend_from_slice(format!("ok {i} test_case_{i}\n").as_bytes());
    }
    log.extend_from_slice(b"\x1b[1;31mFAIL\x1b[0m: test_widget <img src=x onerror=alert(1)>\n");
    log.extend_from_slice(b"\x1b]0;<script>document.title='pwned'</script>\x07after osc\n");
    let e2 = log.len();
    log.extend_from_slice(b"\n==> Step 3: Upload results\nuploaded\n");
    let e3 = log.len();
    assert_eq!(a.log(&id, 0, &log).await.0, 200);
    events(
        &a,
        &id,
        0,
        vec![
            step_started(1, "Install", s1, Some(sha)),
            step_finished(1, "Install", true, e1),
            step_started(2, "Run tests", e1, None),
            step_finished(2, "Run tests", false, e2),
            step_started(3, "Upload results", e2, None),
            step_finished(3, "Upload results", true, e3),
        ],
    )
    .await;
    assert_eq!(a.finish(&id, FinalStatus::Failed, &log).await.status(), 200);

    // Without JavaScript: the HTML alone carries the steps, the open failure and the log.
    let url = format!("{}/jobs/{id}", s.base);
    let html = get_text(&url).await;
    assert!(
        html.contains(
            "<details class=\"step\" id=\"step-2\" data-step=\"2\" data-status=\"failed\" open>"
        ),
        "{html}"
    );
    assert!(html.contains("test_widget &lt;img src=x onerror=alert(1)&gt;"));
    assert!(!html.contains("<img"), "job output became markup");
    assert!(
        !html.contains("style=") && !html.contains("<style"),
        "inline style"
    );
    assert!(
        !html.contains("<script>") && html.matches("<script").count() == 1,
        "one script, from a file"
    );
    assert!(
        html.contains(&format!(
            "<a href=\"https://bitbucket.org/acme/widget/commits/{sha}\"><code title=\"{sha}\">{sha}</code></a>"
        )),
        "{html}"
    );
    let raw = client()
        .get(format!("{url}/log.txt"))
        .send()
        .await
        .expect("raw");
    assert!(raw
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("attachment")));
    assert_eq!(raw.bytes().await.expect("raw body").as_ref(), &log[..]);
    // The assets: digest-named, compressed, cached for a year.
    let css = html
        .split("href=\"/assets/")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("stylesheet link")
        .to_owned();
    let r = client()
        .get(format!("{}/assets/{css}", s.base))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("css");
    assert_eq!(r.status(), 200);
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(h("content-encoding"), "gzip");
    assert!(
        h("cache-control").contains("immutable"),
        "{}",
        h("cache-control")
    );
    // The index shows the short commit, linked.
    let index = get_text(&s.base).await;
    assert!(
        index.contains(&format!("<code title=\"{sha}\">{}</code>", &sha[..12])),
        "{index}"
    );

    let found = with_browser(90, move |b| {
        b.open(&url);
        let failed_open = b.eval("document.getElementById('step-2').open");
        let others_closed =
            b.eval("!document.getElementById('step-1').open && !document.getElementById('step-3').open");
        // The last line of the failed step (its failure) is on screen. `open` returns once
        // the document is interactive; the scroll may land a frame later (seen once with
        // four Chromiums at once), so it gets up to 5 s.
        let in_view_expr = "(() => { const ls = document.querySelectorAll('#step-2 .l'); \
              const r = ls[ls.length - 3].getBoundingClientRect(); \
              return scrollY > 0 && r.top >= 0 && r.bottom <= innerHeight; })()";
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut in_view = b.eval(in_view_expr);
        while in_view != json!(true) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            in_view = b.eval(in_view_expr);
        }
        let focused = b.eval("document.activeElement === document.querySelector('#step-2 summary')");
        // A coloured, bold line: classes, a computed colour other than the log's, no ESC.
        let colour = b.eval(
            "(() => { const f = [...document.querySelectorAll('#step-2 .f1.bo')]\
                .find(e => e.textContent === 'FAIL'); \
              if (!f) return null; \
              return [getComputedStyle(f).color, getComputedStyle(f.closest('pre')).color, \
                      getComputedStyle(f).fontWeight]; })()",
        );
        let text = b.eval("[...document.querySelectorAll('pre.log')].map(p => p.textContent).join('')");
        let no_markup = b.eval(
            "document.querySelectorAll('pre.log img, pre.log script').length === 0 \
             && document.title.indexOf('pwned') < 0",
        );
        // Keyboard: Tab from the failed step's summary reaches step 3's; Enter opens it,
        // Enter again closes it.
        b.eval("document.querySelector('#step-3 summary').focus()");
        b.key("Enter", 13, "\r");
        let opened = b.eval("document.getElementById('step-3').open");
        b.key("Enter", 13, "\r");
        let closed = b.eval("!document.getElementById('step-3').open");
        // Search: type, press Enter: the matching line is current, its step open, in view.
        b.eval("document.getElementById('step-2').open = false");
        b.eval("document.getElementById('q').focus()");
        b.type_text("test_widget");
        b.key("Enter", 13, "\r");
        b.wait_for("document.querySelector('.l.cur')");
        // Past the typing delay: the search typed before Enter must not run again after it
        // and clear the line Enter showed.
        b.eval("new Promise(r => setTimeout(r, 300))");
        let hit = b.eval(
            "(() => { const c = document.querySelector('.l.cur'); \
              const r = c.getBoundingClientRect(); \
              return [c.textContent, c.closest('details').open, r.top >= 0 && r.bottom <= innerHeight, \
                      document.getElementById('q-status').textContent]; })()",
        );
        // A link to a line opens its step and shows it.
        b.eval("document.getElementById('step-1').open = false; location.hash = '#L3'");
        b.wait_for("document.getElementById('step-1').open");
        (failed_open, others_closed, in_view, focused, colour, text, no_markup, opened, closed, hit)
    })
    .await;
    let (
        failed_open,
        others_closed,
        in_view,
        focused,
        colour,
        text,
        no_markup,
        opened,
        closed,
        hit,
    ) = found.expect("chromium is installed");
    assert_eq!(failed_open, json!(true));
    assert_eq!(others_closed, json!(true));
    assert_eq!(in_view, json!(true), "the failure is scrolled into view");
    assert_eq!(
        focused,
        json!(true),
        "keyboard focus starts on the failed step"
    );
    let colour = colour.as_array().expect("the FAIL span exists").clone();
    assert_ne!(colour[0], colour[1], "FAIL has its own colour: {colour:?}");
    assert_eq!(colour[2], json!("700"));
    let text = text.as_str().expect("text");
    assert!(
        !text.contains('\u{1b}'),
        "escape bytes in the DOM: {text:?}"
    );
    assert!(text.contains("downloading 100%\n"), "{text}");
    assert!(
        !text.contains("downloading 50%"),
        "progress lines collapse: {text}"
    );
    assert!(text.contains("FAIL: test_widget <img src=x onerror=alert(1)>\n"));
    assert!(text.contains("after osc\n") && !text.contains("pwned"));
    assert_eq!(no_markup, json!(true));
    assert_eq!((opened, closed), (json!(true), json!(true)));
    assert_eq!(
        hit[0].as_str().map(|t| t.contains("FAIL: test_widget")),
        Some(true),
        "{hit}"
    );
    assert_eq!(hit[1], json!(true), "{hit}");
    assert_eq!(hit[2], json!(true), "{hit}");
    assert_eq!(hit[3], json!("line 1 of 1 matching lines"), "{hit}");
}

/// Issue 18: the job list filters by project, branch and status through its plain GET form
/// (in Chromium: pick, submit, read the rows), pages with "Older jobs", and a running row
/// turns into its final status by itself.
#[tokio::test]
async fn the_job_list_filters_pages_and_follows_running_rows_in_chromium() {
    if no_chromium() {
        return;
    }
    let s = fresh(&[]);
    let a = register(&s, "builder-1").await;
    let mut ids = Vec::new();
    for (r, status) in [
        ("main", FinalStatus::Success),
        ("feature/x", FinalStatus::Failed),
        ("refs/tags/v1.0", FinalStatus::Success),
    ] {
        let id = cli(
            &s.data,
            &[
                "enqueue",
                "--project",
                "acme/widget",
                "--ref",
                r,
                "--job",
                "build",
            ],
        );
        a.claim_job(5).await;
        a.log(&id, 0, b"x\n").await;
        assert_eq!(a.finish(&id, status, b"x\n").await.status(), 200);
        ids.push(id);
    }
    // One still running.
    let running = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    a.log(&running, 0, b"x\n").await;
    // Paging: 55 queued jobs push the first ones to the second page.
    for _ in 0..55 {
        cli(
            &s.data,
            &[
                "enqueue",
                "--project",
                "acme/widget",
                "--ref",
                "main",
                "--job",
                "later",
            ],
        );
    }
    let page1 = get_text(&s.base).await;
    assert!(page1.contains("rel=\"next\">Older jobs</a>"), "{page1}");
    assert!(!page1.contains(&format!(">#{}</a>", ids[0])));
    let older = page1
        .split("<a href=\"")
        .filter_map(|p| p.split_once("\" rel=\"next\""))
        .map(|(h, _)| h.replace("&amp;", "&"))
        .next()
        .expect("older link");
    let page2 = get_text(&format!("{}{older}", s.base)).await;
    assert!(page2.contains(&format!(">#{}</a>", ids[0])), "{page2}");
    // Branch filter without a browser: the tag's job only.
    let tags = get_text(&format!("{}/?branch=v1.0", s.base)).await;
    assert_eq!(tags.matches("<tr data-status=").count(), 1, "{tags}");
    assert!(
        tags.contains("<span class=\"ref\">tag</span> v1.0"),
        "{tags}"
    );

    let base = s.base.clone();
    let (filtered, live_before) = with_browser(90, move |b| {
        b.open(&format!("{base}/"));
        // The status filter, as a user would: choose "failed", submit the form.
        b.eval(
            "document.querySelector('select[name=status]').value = 'failed'; \
             document.querySelector('form.filters').requestSubmit()",
        );
        b.wait_for(
            "location.search.includes('status=failed') && document.readyState === 'complete'",
        );
        let filtered = b.eval(
            "[...document.querySelectorAll('#jobs tbody tr')].map(r => \
               [r.dataset.status, r.cells[2].textContent, r.cells[5].textContent.trim()])",
        );
        b.open(&format!("{base}/?status=running"));
        let live_before =
            b.eval("document.querySelectorAll('#jobs tbody tr[data-status=running]').length");
        (filtered, live_before)
    })
    .await
    .expect("chromium is installed");
    assert_eq!(
        filtered,
        json!([["failed", "branch feature/x", "✗ failed"]]),
        "only the failed job, with an icon and a word"
    );
    assert_eq!(live_before, json!(1));

    // Live: the running row becomes success on an open page, no reload.
    let base = s.base.clone();
    // (The 55 later jobs are newer: the running one is on the page of older jobs.)
    let url = format!("{base}/?before={}", running.parse::<u64>().expect("id") + 1);
    let run2 = running.clone();
    let watch = tokio::task::spawn(with_browser(90, move |b| {
        b.open(&url);
        b.wait_for(&format!(
            "document.querySelector('a[href=\"/jobs/{run2}\"]')"
        ));
        let t0 = Instant::now();
        b.wait_for(&format!(
            "document.querySelector('a[href=\"/jobs/{run2}\"]').closest('tr').dataset.status === 'success'"
        ));
        t0.elapsed()
    }));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        a.finish(&running, FinalStatus::Success, b"x\n")
            .await
            .status(),
        200
    );
    let took = watch.await.expect("join").expect("chromium is installed");
    eprintln!("the running row turned success {took:?} after the page opened");
    assert!(took < Duration::from_secs(15));
}

/// Issue 18: a 200 MiB log's page is interactive within 2 s in Chromium (navigation timing),
/// the coordinator stays small while serving it, the page holds only the tail and the failed
/// step, and older output loads on demand with the right line numbers.
#[tokio::test]
async fn a_200_mib_logs_page_is_interactive_within_2_s_in_chromium() {
    if no_chromium() {
        return;
    }
    let s = fresh(&[]);
    let a = register(&s, "a1").await;
    let id = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    // 200 MiB in 25 chunks: a failing step in the middle, a long last step.
    let line =
        b"0123456789 bosun \x1b[36mbig\x1b[0m log line abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ\n";
    let chunk: Vec<u8> = line.iter().copied().cycle().take(8 << 20).collect();
    assert_eq!(chunk.len() % line.len(), (8 << 20) % line.len());
    let mut offset = 0u64;
    let mut evs = Vec::new();
    let mut digest = Sha256::new();
    for i in 0..25u32 {
        if i % 5 == 0 {
            evs.push(step_started(
                i / 5 + 1,
                &format!("step {}", i / 5 + 1),
                offset as usize,
                None,
            ));
        }
        let mut c = chunk.clone();
        // Chunks end on a line boundary.
        let cut = c.len() - c.len() % line.len();
        c.truncate(cut);
        if i == 14 {
            c.extend_from_slice(b"\x1b[31mTHE-FAILURE\x1b[0m\n");
        }
        let (st, end) = a.log(&id, offset, &c).await;
        assert_eq!(st, 200);
        digest.update(&c);
        offset = end;
        if i % 5 == 4 {
            let n = i / 5 + 1;
            evs.push(step_finished(
                n,
                &format!("step {n}"),
                n != 3,
                offset as usize,
            ));
        }
    }
    events(&a, &id, 0, evs).await;
    let tail = b"THE-TAIL-MARKER\n";
    a.log(&id, offset, tail).await;
    digest.update(tail);
    let total = offset + tail.len() as u64;
    let r = a
        .post(
            &format!("/jobs/{id}/finish"),
            json!({"status": "failed", "log_bytes": total,
                   "log_sha256": digest.finalize().iter().map(|x| format!("{x:02x}")).collect::<String>()}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let before = peak_rss_kib(s.child.id());
    let t = Instant::now();
    let html = get_text(&format!("{}/jobs/{id}", s.base)).await;
    let server_ms = t.elapsed().as_millis();
    assert!(html.len() < 2 << 20, "the page is {} bytes", html.len());
    let url = format!("{}/jobs/{id}", s.base);
    let got = with_browser(120, move |b| {
        let mut runs = Vec::new();
        for _ in 0..3 {
            b.open("about:blank");
            b.open(&url);
            b.wait_for("document.readyState === 'complete'");
            runs.push(b.eval(
                "(() => { const n = performance.getEntriesByType('navigation')[0]; \
                  return [n.domInteractive, n.domContentLoadedEventEnd, n.loadEventEnd, \
                          document.querySelectorAll('.l').length, \
                          performance.memory ? performance.memory.usedJSHeapSize : 0]; })()",
            ));
        }
        let failure_open = b.eval(
            "(() => { const f = [...document.querySelectorAll('.f1')].find(e => e.textContent === 'THE-FAILURE'); \
              return !!f && f.closest('details').open && f.closest('details').id === 'step-3'; })()",
        );
        // Older output of the failed step on demand: numbered lines just before the shown ones.
        let first_before = b.eval("Number(document.querySelector('#step-3 .l').id.slice(1))");
        b.eval("document.querySelector('#step-3 button.load').click()");
        b.wait_for("document.querySelectorAll('#step-3 .l').length > 9000");
        let first_after = b.eval(
            "(() => { const ls = document.querySelectorAll('#step-3 .l'); \
              return [Number(ls[0].id.slice(1)), ls.length, \
                      Number(ls[1].id.slice(1)) - Number(ls[0].id.slice(1))]; })()",
        );
        (runs, failure_open, first_before, first_after)
    })
    .await
    .expect("chromium");
    let peak = peak_rss_kib(s.child.id());
    let (runs, failure_open, first_before, first_after) = got;
    eprintln!(
        "200 MiB log: page HTML {} KiB in {server_ms} ms; coordinator peak RSS {before} KiB before, \
         {peak} KiB after; chromium [domInteractive, DOMContentLoaded end, load end, lines, JS heap] \
         per run: {runs:?}",
        html.len() / 1024
    );
    // The best of the loads: what the page itself costs. The others carry the machine's
    // load — the first also the fresh browser's start-up — and the suite runs Docker-heavy
    // tests beside this one on 2 cores: seen 0.86 / 2.23 / 3.24 s in one CI run, 0.78–1.64 s
    // after a 2.08 s first load in another. A page that is slow by itself (the 200 MiB sent
    // whole, say) is slow in every load and still fails both bounds.
    let mut dcl: Vec<f64> = runs
        .iter()
        .map(|r| r[1].as_f64().expect("timing"))
        .collect();
    dcl.sort_by(f64::total_cmp);
    assert!(
        dcl[0] < 2000.0,
        "DOMContentLoaded after {dcl:?} ms: {runs:?}"
    );
    assert!(
        dcl.iter().all(|&d| d < 6000.0),
        "DOMContentLoaded after {dcl:?} ms: {runs:?}"
    );
    assert!(peak < 150 * 1024, "coordinator peak RSS {peak} KiB");
    assert_eq!(failure_open, json!(true));
    // Lines are numbered from the log's start: line n of the file is Ln.
    let per_line = line.len() as u64;
    let first_before = first_before.as_u64().expect("number");
    let first_after = first_after.as_array().expect("array").clone();
    assert!(first_after[0].as_u64().expect("n") < first_before);
    assert_eq!(first_after[2], json!(1));
    // Step 3 starts at 80 MiB - a little; its numbering follows the uploaded lines.
    let lines_per_chunk = (8u64 << 20) / per_line;
    assert!(first_before > 10 * lines_per_chunk, "{first_before}");
}
