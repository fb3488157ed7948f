//! A live log stream of a private project is asked again, while it is open, whether its
//! reader may still read it (docs/people.md): read taken away on Bitbucket closes it within
//! `--permissions-refresh`, as a reload would be refused.

use crate::coordinator_rig::*;
use crate::people::{http, login_http, setup_with};
use std::time::{Duration, Instant};

#[tokio::test]
async fn an_open_live_stream_closes_when_read_is_taken_away() {
    let t = setup_with(&["--permissions-refresh", "2s"]);
    let base = t.s.base.clone();
    let job = enqueue(&t.s.data, &[]);
    let a = register(&t.s, "a1").await;
    a.claim_job(5).await;
    a.log(&job, 0, b"PRIVATE-LOG-LINE\n").await;
    let reader = login_http(&base, &t.api, "reader").await;
    let mut body = http()
        .get(format!("{base}/jobs/{job}/stream"))
        .header("cookie", format!("bosun_session={reader}"))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("stream");
    assert_eq!(body.status(), 200);
    let mut seen = String::new();
    // The running job's stream stays open while the reader may read it.
    let open_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < open_until {
        match tokio::time::timeout(Duration::from_millis(500), body.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(other) => panic!("the stream ended while readable: {other:?} after {seen}"),
            Err(_) => {}
        }
        // The agent keeps its lease.
        a.heartbeat(&[&job]).await;
    }
    assert!(seen.contains("PRIVATE-LOG-LINE"), "{seen}");

    t.api.set_permission("reader", "acme/widget", None);
    let taken = Instant::now();
    loop {
        assert!(
            taken.elapsed() < Duration::from_secs(8),
            "the stream is still open {:?} after read was taken away",
            taken.elapsed()
        );
        a.heartbeat(&[&job]).await;
        match tokio::time::timeout(Duration::from_millis(500), body.chunk()).await {
            Ok(Ok(None)) => break,
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(Err(e)) => panic!("{e}"),
        }
    }
    let r = http()
        .get(format!("{base}/jobs/{job}/stream"))
        .header("cookie", format!("bosun_session={reader}"))
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status(), 404, "a new stream is refused too");
}
