//! Loopback networking for the tests: a free port, and a plain HTTP GET written by hand (the
//! tests read the coordinator's pages and the agent's metrics exactly as sent, headers and
//! all, with no client library between).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

/// A loopback port nothing listens on right now (the OS picked it; it is free until someone
/// binds it, which is good enough for a process the test starts next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `GET PATH` on `addr` (`host:port`) over HTTP/1.1 with `Connection: close`, read to the end.
pub fn http_get(addr: &str, path: &str) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    HttpResponse { raw }
}

/// A response as [`http_get`] read it.
pub struct HttpResponse {
    raw: Vec<u8>,
}

impl HttpResponse {
    /// The status code (0 when the answer had no status line).
    pub fn status(&self) -> u16 {
        self.text()
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// The whole response, status line, headers and body, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// The status code and the body as text (empty when the response has no end of headers).
    pub fn status_and_body(&self) -> (u16, String) {
        let text = self.text();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (self.status(), body.to_owned())
    }

    /// The status line and headers, lower-cased, and the body's bytes; panics when the
    /// response has no end of headers.
    pub fn head_and_body(&self) -> (String, Vec<u8>) {
        let split = self
            .raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("headers");
        (
            String::from_utf8_lossy(&self.raw[..split]).to_ascii_lowercase(),
            self.raw[split + 4..].to_vec(),
        )
    }
}
