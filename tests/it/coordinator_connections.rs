//! The coordinator's connections under abuse, as a real process on loopback: requests that
//! stall half way (slow loris), many stalled or idle connections from one address against the
//! per-address cap, and bursts of complete requests that must not be taken for stalls.

use crate::coordinator_rig::*;

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Issue 12 item 8: connections that send half a request and stall (slow loris) are timed
/// out and never take the whole file-descriptor budget: a normal request still gets in. The
/// stalled connections come from ten addresses, each under the per-address cap (issue 26),
/// so it is the connection limit and the header timeout that are at work here.
#[tokio::test]
async fn a_slow_loris_batch_does_not_stop_a_normal_request() {
    let s = fresh_limited(&[], false, Some(256));
    let addr = server_addr(&s);
    let mut loris = Vec::new();
    for i in 0..300 {
        let from = format!("127.0.0.{}", 10 + i % 10);
        let Ok(Ok(mut c)) =
            tokio::time::timeout(Duration::from_secs(2), connect_from(&from, &addr)).await
        else {
            continue;
        };
        let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
        loris.push(c);
    }
    assert!(loris.len() > 250, "only {} connections opened", loris.len());
    let t0 = Instant::now();
    let r = client()
        .get(format!("{}/", s.base))
        .timeout(Duration::from_secs(40))
        .send()
        .await
        .expect("a normal request is answered despite the slow loris batch");
    assert_eq!(r.status(), 200);
    eprintln!(
        "answered after {:?} with {} loris connections",
        t0.elapsed(),
        loris.len()
    );
    drop(loris);
}

/// `host:port` of the server (it listens on 127.0.0.1; any 127.0.0.0/8 source reaches it).
fn server_addr(s: &Server) -> std::net::SocketAddr {
    s.base
        .trim_start_matches("http://")
        .parse()
        .expect("the server's address")
}

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(
    from: &str,
    addr: &std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(std::net::SocketAddr::new(
        from.parse().expect("a loopback address"),
        0,
    ))?;
    sock.connect(*addr).await
}

/// `GET path` on a kept-alive connection; the response's status line once its whole body
/// is read.
async fn get_on(c: &mut tokio::net::TcpStream, path: &str) -> std::io::Result<String> {
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return Ok(head.lines().next().unwrap_or_default().to_string());
            }
        }
        let n = c.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed after {} bytes", got.len()),
            ));
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// Whether `c`, sending part of a request's headers, is closed by the server within
/// `within` without an answer.
async fn stall_is_closed(c: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let _ = c
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, c.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Whether `c` is answered one request, then closed by the server within `within` (not
/// kept alive).
async fn answered_then_closed(c: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let answered = tokio::time::timeout(within, get_on(c, "/healthz")).await;
    if !matches!(&answered, Ok(Ok(status)) if status.starts_with("HTTP/1.1 200")) {
        eprintln!("not answered: {answered:?}");
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, c.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Issue 26: 300 connections from one address that never send their request headers would
/// fill the connection limit (192 under RLIMIT_NOFILE 256) and leave everyone else waiting
/// in the backlog until the header timeout. Past the per-address cap (32) new ones from that
/// address are closed at once, so another address, and that address's connection already
/// in use, are answered at once; once the stalled connections close the address is served
/// again.
#[tokio::test]
async fn stalled_connections_from_one_address_do_not_hold_up_others() {
    let s = fresh_limited(&[], false, Some(256));
    let addr = server_addr(&s);
    let mut early = connect_from("127.0.0.1", &addr).await.expect("connect");
    let first = get_on(&mut early, "/healthz")
        .await
        .expect("a first request");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    let mut stalled = Vec::new();
    for _ in 0..300 {
        let Ok(Ok(mut c)) =
            tokio::time::timeout(Duration::from_secs(2), connect_from("127.0.0.1", &addr)).await
        else {
            continue;
        };
        let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
        stalled.push(c);
    }
    assert!(
        stalled.len() > 250,
        "only {} connections opened",
        stalled.len()
    );

    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(40))
        .build()
        .expect("client");
    let t0 = Instant::now();
    let r = other
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .expect("another address is answered");
    let took = t0.elapsed();
    eprintln!(
        "127.0.0.2 answered after {took:?} with {} stalled connections from 127.0.0.1",
        stalled.len()
    );
    assert_eq!(r.status(), 200);
    assert!(
        took < Duration::from_secs(2),
        "another address waited {took:?} behind one address's stalled connections"
    );

    let t1 = Instant::now();
    let again = tokio::time::timeout(Duration::from_secs(5), get_on(&mut early, "/healthz"))
        .await
        .expect("the established connection is answered in time")
        .expect("the established connection is answered");
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    let took = t1.elapsed();
    eprintln!("127.0.0.1's established connection answered after {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    let mut refused = connect_from("127.0.0.1", &addr)
        .await
        .expect("the kernel takes the connection");
    assert!(
        stall_is_closed(&mut refused, Duration::from_secs(5)).await,
        "a new stalling connection past the cap is closed at once"
    );

    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = connect_from("127.0.0.1", &addr).await.expect("connect");
        match tokio::time::timeout(Duration::from_secs(2), get_on(&mut c, "/healthz")).await {
            Ok(Ok(status)) if status.starts_with("HTTP/1.1 200") => break,
            other => assert!(
                Instant::now() < deadline,
                "127.0.0.1 is not served again after its stalled connections closed: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 26: the per-address count lags behind the accept loop, so a burst of 100 complete
/// requests from one address (a reverse proxy, agents behind one NAT), sent before the server
/// reads any, is not taken for stalled connections: every one is answered.
#[tokio::test]
async fn a_burst_of_complete_requests_from_one_address_is_answered() {
    let s = fresh(&[]);
    let addr = server_addr(&s);
    let mut burst = Vec::new();
    for _ in 0..100 {
        let mut c = connect_from("127.0.0.5", &addr).await.expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write a request");
        burst.push(c);
    }
    let mut answered = 0;
    for c in &mut burst {
        let mut buf = [0u8; 16];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
            answered += usize::from(buf[..n].starts_with(b"HTTP/1.1 200"));
        }
    }
    assert_eq!(
        answered, 100,
        "only {answered} of 100 complete requests answered"
    );
}

/// Issue 26: a connection idle between keep-alive requests counts as waiting too, or the
/// cap would cost one request per connection to get around. 32 such connections from one
/// address (after one request each) stay open and served; a 33rd that stalls is closed at
/// once, and one that sends a whole request is answered, then closed instead of kept idle.
#[tokio::test]
async fn idle_keep_alive_connections_count_toward_the_per_address_cap() {
    let s = fresh(&[]);
    let addr = server_addr(&s);
    let mut idle = Vec::new();
    for _ in 0..32 {
        let mut c = connect_from("127.0.0.3", &addr).await.expect("connect");
        let status = get_on(&mut c, "/healthz").await.expect("a request");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        idle.push(c);
    }
    let mut extra = connect_from("127.0.0.3", &addr).await.expect("connect");
    assert!(
        stall_is_closed(&mut extra, Duration::from_secs(5)).await,
        "a 33rd connection stalling while 32 idle ones are open is closed"
    );
    for _ in 0..3 {
        let mut whole = connect_from("127.0.0.3", &addr).await.expect("connect");
        assert!(
            answered_then_closed(&mut whole, Duration::from_secs(5)).await,
            "a 33rd connection with a whole request is answered, then not kept alive"
        );
    }
    for c in &mut idle[..2] {
        for _ in 0..2 {
            let status = get_on(c, "/healthz")
                .await
                .expect("an idle connection is still served and kept alive");
            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        }
    }
    let mut c = connect_from("127.0.0.4", &addr).await.expect("connect");
    let status = get_on(&mut c, "/healthz").await.expect("another address");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}
