//! Connections waiting for a request's headers, counted per client address.
//!
//! The global connection limit alone let one address take every slot with connections that
//! never finish their headers: later callers, from anywhere, waited in the listen backlog
//! until the header timeout freed a slot. Counting those connections per address lets the
//! accept loop close a new connection at once when its address already has
//! [`PerAddress::cap`] of them, so other addresses, and that address's connections that are
//! in a request, are served.
//!
//! A connection counts from its accept (the TLS handshake included) until its first
//! request's headers are in, and again whenever it waits between keep-alive requests. The
//! idle wait counts because otherwise the cap costs a client one request per connection to
//! get around: send a complete request, then hold the connection idle (or trickle the next
//! request's headers) for as long as the header timeout allows. So when a request ends and
//! its address already has the cap of waiting connections, the connection is closed rather
//! than kept alive ([`Connection::close_requested`]); a request in progress is never cut.
//!
//! The count lags behind the accept loop: a burst of connections from one address (a reverse
//! proxy, agents behind one NAT) can be accepted faster than their tasks read the headers
//! already sent. So a plain-HTTP connection past the cap whose complete headers are already
//! buffered (see [`headers_complete`]) is let in: it is not stalled, it leaves the count as
//! soon as its task runs, and it is closed after that request unless a place is free by
//! then. Over TLS the headers cannot be seen before the handshake, so there the cap is
//! strict.
//!
//! IPv6 clients are counted per /64, the block one host usually gets, since a host can pick
//! any address inside it; an IPv4-mapped IPv6 peer counts as its IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

/// The per-address counts of connections waiting for request headers.
#[derive(Debug)]
pub struct PerAddress {
    cap: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// What one client address is counted under: IPv4 as is, IPv6 by its /64.
pub fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// How many bytes of a new connection's buffered input are looked at for its headers: a
/// request line and the headers of an agent or a browser fit well inside.
pub const PEEK_BYTES: usize = 4096;

/// Whether `peeked`, the start of a connection's input, holds a request's complete headers.
pub fn headers_complete(peeked: &[u8]) -> bool {
    peeked.windows(4).any(|w| w == b"\r\n\r\n")
}

impl PerAddress {
    /// At most `cap` waiting connections per address when a new one is accepted; 0: no cap.
    pub fn new(cap: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            cap,
            counts: Mutex::new(HashMap::new()),
        })
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // A panic elsewhere while holding the lock leaves consistent counts (each change is
        // one increment or decrement), so the map stays usable.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection from `ip`: counted, or `None` when its address already has `cap`
    /// waiting connections (the caller closes it).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Waiting> {
        let key = key(ip);
        let mut counts = self.counts();
        let n = counts.entry(key).or_insert(0);
        if self.cap != 0 && *n >= self.cap {
            return None;
        }
        *n += 1;
        drop(counts);
        Some(Waiting {
            table: self.clone(),
            key,
        })
    }

    /// A new connection from `ip` let in past the cap because its complete headers are
    /// already buffered: counted anyway, until its request begins.
    pub fn hold(self: &Arc<Self>, ip: IpAddr) -> Waiting {
        let key = key(ip);
        *self.counts().entry(key).or_insert(0) += 1;
        Waiting {
            table: self.clone(),
            key,
        }
    }

    /// Connections from `ip`'s address waiting now.
    pub fn waiting(&self, ip: IpAddr) -> usize {
        self.counts().get(&key(ip)).copied().unwrap_or(0)
    }

    /// Addresses with a waiting connection (an address whose count drops to 0 is forgotten,
    /// so this never exceeds the open connections).
    pub fn addresses(&self) -> usize {
        self.counts().len()
    }
}

/// One counted waiting connection; dropping it uncounts it.
#[derive(Debug)]
pub struct Waiting {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut counts = self.table.counts();
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// One admitted connection's place in the count: waiting while no request is in progress.
#[derive(Debug)]
pub struct Connection {
    table: Arc<PerAddress>,
    ip: IpAddr,
    state: Mutex<State>,
    close: CancellationToken,
}

#[derive(Debug)]
struct State {
    in_progress: usize,
    waiting: Option<Waiting>,
}

impl Connection {
    /// The connection admitted as `first` (see [`PerAddress::admit`]) from `ip`.
    pub fn new(first: Waiting, ip: IpAddr) -> Arc<Connection> {
        Arc::new(Connection {
            table: first.table.clone(),
            ip,
            state: Mutex::new(State {
                in_progress: 0,
                waiting: Some(first),
            }),
            close: CancellationToken::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request's headers are in: the connection stops counting until the returned guard
    /// (held until the response is sent) is dropped.
    pub fn request(self: &Arc<Self>) -> InRequest {
        let released = {
            let mut s = self.state();
            s.in_progress += 1;
            s.waiting.take()
        };
        // Uncounted outside our own lock: Waiting's drop takes the table's.
        drop(released);
        InRequest { conn: self.clone() }
    }

    /// Whether the connection counts as waiting now.
    pub fn is_waiting(&self) -> bool {
        self.state().waiting.is_some()
    }

    /// Cancelled when the connection's request ended with its address at the cap: it should
    /// close instead of waiting for another request.
    pub fn close_requested(&self) -> &CancellationToken {
        &self.close
    }
}

/// A request in progress on a [`Connection`]; when the last one ends the connection waits
/// (and counts) again if its address is under the cap, else it is asked to close.
#[derive(Debug)]
pub struct InRequest {
    conn: Arc<Connection>,
}

impl Drop for InRequest {
    fn drop(&mut self) {
        let mut s = self.conn.state();
        s.in_progress = s.in_progress.saturating_sub(1);
        if s.in_progress == 0 && s.waiting.is_none() && !self.conn.close.is_cancelled() {
            match self.conn.table.admit(self.conn.ip) {
                Some(w) => s.waiting = Some(w),
                None => self.conn.close.cancel(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn past_the_cap_an_address_is_refused_and_others_are_not() {
        let t = PerAddress::new(2);
        let a = ip("192.0.2.1");
        let first = t.admit(a).expect("first");
        let _second = t.admit(a).expect("second");
        assert!(
            t.admit(a).is_none(),
            "a third waiting connection is refused"
        );
        assert_eq!(t.waiting(a), 2, "a refusal is not counted");
        let _other = t.admit(ip("192.0.2.2")).expect("another address is let in");
        drop(first);
        assert_eq!(t.waiting(a), 1);
        let _again = t.admit(a).expect("a slot freed by a closed connection");
        assert!(t.admit(a).is_none());
    }

    #[test]
    fn counts_drop_to_nothing_and_the_address_is_forgotten() {
        let t = PerAddress::new(3);
        let a = ip("192.0.2.1");
        let guards: Vec<_> = (0..3).map(|_| t.admit(a).expect("admit")).collect();
        assert!(t.admit(a).is_none());
        assert_eq!(t.addresses(), 1);
        drop(guards);
        assert_eq!(t.waiting(a), 0);
        assert_eq!(
            t.addresses(),
            0,
            "no entry left for an address with no connection"
        );
    }

    #[test]
    fn a_cap_of_zero_counts_without_refusing() {
        let t = PerAddress::new(0);
        let a = ip("192.0.2.1");
        let guards: Vec<_> = (0..1000).map(|_| t.admit(a).expect("no cap")).collect();
        assert_eq!(t.waiting(a), 1000);
        drop(guards);
        assert_eq!(t.addresses(), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let t = PerAddress::new(1);
        let _g = t.admit(ip("2001:db8:1:2::1")).expect("admit");
        assert!(
            t.admit(ip("2001:db8:1:2:ffff::9")).is_none(),
            "another address in the same /64 shares the count"
        );
        assert!(t.admit(ip("2001:db8:1:3::1")).is_some(), "another /64");
        let _v4 = t.admit(ip("192.0.2.7")).expect("admit");
        assert!(
            t.admit(ip("::ffff:192.0.2.7")).is_none(),
            "an IPv4-mapped peer counts as its IPv4 address"
        );
    }

    #[test]
    fn complete_headers_are_told_from_a_stall() {
        assert!(headers_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(headers_complete(
            b"POST /api HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"a\": 1"
        ));
        assert!(!headers_complete(b""));
        assert!(!headers_complete(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "));
        assert!(!headers_complete(b"GET / HTTP/1.1\r\n"));
        // A TLS ClientHello is not plain-HTTP headers.
        assert!(!headers_complete(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
    }

    #[test]
    fn a_connection_stops_counting_during_a_request_and_counts_again_after() {
        let t = PerAddress::new(1);
        let a = ip("192.0.2.1");
        let conn = Connection::new(t.admit(a).expect("admit"), a);
        assert!(conn.is_waiting());
        assert!(
            t.admit(a).is_none(),
            "the connection waiting for headers fills the cap"
        );

        let req = conn.request();
        assert!(!conn.is_waiting());
        assert_eq!(t.waiting(a), 0, "its headers are in: no longer waiting");
        let busy = Connection::new(t.admit(a).expect("the slot is free"), a);
        let busy_req = busy.request();

        drop(req);
        assert!(
            conn.is_waiting(),
            "between keep-alive requests it waits again"
        );
        assert!(!conn.close_requested().is_cancelled());
        assert_eq!(t.waiting(a), 1, "counted again, at the cap");
        assert!(t.admit(a).is_none());

        // Its request over with the address at the cap: asked to close, not counted.
        drop(busy_req);
        assert!(!busy.is_waiting());
        assert!(busy.close_requested().is_cancelled());
        assert_eq!(t.waiting(a), 1);

        drop(conn);
        assert_eq!(t.waiting(a), 0, "closed connections uncount");
        drop(busy);
        assert_eq!(t.addresses(), 0);
    }

    #[test]
    fn a_connection_let_in_past_the_cap_is_closed_after_its_request() {
        let t = PerAddress::new(1);
        let a = ip("192.0.2.1");
        let _waiting = t.admit(a).expect("admit");
        let extra = Connection::new(t.hold(a), a);
        assert_eq!(t.waiting(a), 2, "held past the cap");
        let req = extra.request();
        assert_eq!(t.waiting(a), 1);
        drop(req);
        assert!(extra.close_requested().is_cancelled());
        assert_eq!(t.waiting(a), 1);
        // Never re-counted once asked to close, however its later requests end.
        drop(extra.request());
        assert_eq!(t.waiting(a), 1);
    }

    #[test]
    fn overlapping_requests_count_once_the_last_ends() {
        let t = PerAddress::new(4);
        let a = ip("192.0.2.1");
        let conn = Connection::new(t.admit(a).expect("admit"), a);
        let first = conn.request();
        let second = conn.request();
        drop(first);
        assert_eq!(t.waiting(a), 0, "a request is still in progress");
        drop(second);
        assert_eq!(t.waiting(a), 1);
        // A request guard that outlives the connection's other handles (a response body
        // may outlive the service) leaves nothing counted once it goes.
        let late = conn.request();
        drop(conn);
        assert_eq!(t.waiting(a), 0);
        drop(late);
        assert_eq!(t.waiting(a), 0, "the last handle closed the connection");
        assert_eq!(t.addresses(), 0);
    }
}
