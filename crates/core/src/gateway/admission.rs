//! Which new connections the gateway takes: the counts behind its pre-authentication limits,
//! kept apart from sockets and clocks so that the rules can be tested on their own.
//!
//! A connection is a *startup* from its accept until it logs in, and a *session* after. Only
//! startups meet the per-source cap and the random early drop (OpenSSH's
//! `PerSourceMaxStartups` and `MaxStartups start:rate:full`); every connection counts towards
//! the overall cap. The time a startup may take is not decided here: the server closes one
//! that has not logged in within `GatewayConfig::login_grace`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

/// The limits the gateway runs with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Limits {
    /// Startups one source may have at once.
    pub per_source: usize,
    /// Past this many startups in all, a new connection is dropped with probability `rate`…
    pub start: usize,
    /// … (between 0 and 1) …
    pub rate: f64,
    /// … rising linearly to every new connection at this many.
    pub full: usize,
    /// Connections in all, logged in or not.
    pub total: usize,
}

/// What the gateway uses.
pub(super) const LIMITS: Limits = Limits {
    // A developer opens one connection per `ssh`/`scp` command and a handful at once at most;
    // ten leaves room for parallel copies while one address alone stays far from `start`.
    per_source: 10,
    // Past two sources at their cap, new connections start to be dropped at random: a flood
    // from many addresses then still lets some logins through instead of none. `rate` and
    // `full` are OpenSSH's defaults (`MaxStartups 10:30:100`).
    start: 20,
    rate: 0.3,
    full: 100,
    // What the gateway has always taken in all (the file descriptors of a default
    // `ulimit -n` of 1024 leave room for it, the Docker connections and the sessions' execs).
    total: 256,
};

/// Where a connection comes from, for the per-source cap: an IPv4 address, or an IPv6 /64
/// (one host commonly holds a whole /64, so counting its single addresses would cap nothing).
/// An IPv4 client of a dual-stack listener (`::ffff:a.b.c.d`) counts as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Source(IpAddr);

impl Source {
    pub(super) fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !u128::from(u64::MAX);
                    Source(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    #[error("the gateway has as many connections as it takes")]
    Full,
    #[error("too many connections not logged in from this source")]
    PerSource,
    #[error("too many connections not logged in")]
    Startups,
    #[error("dropped at random among too many connections not logged in")]
    EarlyDrop,
}

impl Refusal {
    /// The line the client is sent before the connection is closed (RFC 4253 lets a server
    /// send lines before its version; `ssh -v` shows them).
    pub(super) fn line(self) -> &'static str {
        match self {
            Refusal::PerSource => {
                "bosun SSH gateway: too many connections not logged in from your address; close idle ones or try again later\r\n"
            }
            Refusal::Full | Refusal::Startups | Refusal::EarlyDrop => {
                "bosun SSH gateway: too busy; try again in a few seconds\r\n"
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    Admit,
    Refuse(Refusal),
}

/// The counts: startups per source and in all, sessions in all.
#[derive(Debug)]
pub(super) struct Admission {
    limits: Limits,
    per_source: HashMap<Source, usize>,
    startups: usize,
    sessions: usize,
}

impl Admission {
    pub(super) fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            per_source: HashMap::new(),
            startups: 0,
            sessions: 0,
        }
    }

    /// Whether to take a new connection from `ip`; `random` is uniform in [0, 1) and decides
    /// the early drop. A connection taken counts as a startup until [`Self::authenticated`]
    /// or [`Self::closed`].
    pub(super) fn admit(&mut self, ip: IpAddr, random: f64) -> Decision {
        let l = &self.limits;
        let source = Source::of(ip);
        let refusal = if self.startups + self.sessions >= l.total {
            Some(Refusal::Full)
        } else if self.per_source.get(&source).copied().unwrap_or(0) >= l.per_source {
            Some(Refusal::PerSource)
        } else if self.startups >= l.full {
            Some(Refusal::Startups)
        } else if random < self.drop_probability() {
            Some(Refusal::EarlyDrop)
        } else {
            None
        };
        if let Some(r) = refusal {
            return Decision::Refuse(r);
        }
        self.startups += 1;
        *self.per_source.entry(source).or_insert(0) += 1;
        Decision::Admit
    }

    /// The chance that a new connection is dropped at the current count of startups.
    fn drop_probability(&self) -> f64 {
        let l = &self.limits;
        if self.startups < l.start {
            0.0
        } else if self.startups >= l.full {
            1.0
        } else {
            // start < startups < full here, so the divisor is not zero.
            let past = (self.startups - l.start) as f64 / (l.full - l.start) as f64;
            l.rate + (1.0 - l.rate) * past
        }
    }

    /// A startup from `ip` logged in: it becomes a session.
    pub(super) fn authenticated(&mut self, ip: IpAddr) {
        self.startup_ended(Source::of(ip));
        self.sessions += 1;
    }

    /// A connection from `ip` ended, a session if it had logged in, else a startup.
    pub(super) fn closed(&mut self, ip: IpAddr, authenticated: bool) {
        if authenticated {
            debug_assert!(self.sessions > 0, "a session closed that was never counted");
            self.sessions = self.sessions.saturating_sub(1);
        } else {
            self.startup_ended(Source::of(ip));
        }
    }

    fn startup_ended(&mut self, source: Source) {
        debug_assert!(self.startups > 0, "a startup ended that was never counted");
        self.startups = self.startups.saturating_sub(1);
        if let Some(n) = self.per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        (self.startups, self.sessions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    const A: &str = "192.0.2.1";
    const B: &str = "192.0.2.2";

    /// No early drop unless the test asks for it: `random` just below 1 only loses at `full`.
    const LUCKY: f64 = 0.999_999;

    fn limits() -> Limits {
        Limits {
            per_source: 3,
            start: 4,
            rate: 0.3,
            full: 8,
            total: 12,
        }
    }

    #[test]
    fn one_source_is_capped_and_others_still_get_in() {
        let mut a = Admission::new(limits());
        for _ in 0..3 {
            assert_eq!(a.admit(ip(A), LUCKY), Decision::Admit);
        }
        for _ in 0..100 {
            assert_eq!(a.admit(ip(A), LUCKY), Decision::Refuse(Refusal::PerSource));
        }
        assert_eq!(a.admit(ip(B), LUCKY), Decision::Admit);
        assert_eq!(a.counts(), (4, 0));
        // A closed startup frees its source's place.
        a.closed(ip(A), false);
        assert_eq!(a.admit(ip(A), LUCKY), Decision::Admit);
    }

    #[test]
    fn a_logged_in_connection_leaves_the_startup_counts_but_not_the_total() {
        let mut a = Admission::new(limits());
        for _ in 0..3 {
            assert_eq!(a.admit(ip(A), LUCKY), Decision::Admit);
            a.authenticated(ip(A));
        }
        assert_eq!(a.counts(), (0, 3));
        // Three sessions from A do not hold back its next logins, nor anybody's.
        for _ in 0..3 {
            assert_eq!(a.admit(ip(A), 0.0), Decision::Admit);
        }
        assert_eq!(a.counts(), (3, 3));
        a.closed(ip(A), true);
        assert_eq!(a.counts(), (3, 2));

        // The total counts sessions as well.
        let mut a = Admission::new(Limits {
            total: 4,
            ..limits()
        });
        for n in 0..4 {
            let from = format!("198.51.100.{n}");
            assert_eq!(a.admit(ip(&from), LUCKY), Decision::Admit);
            a.authenticated(ip(&from));
        }
        assert_eq!(a.admit(ip(B), LUCKY), Decision::Refuse(Refusal::Full));
        a.closed(ip("198.51.100.0"), true);
        assert_eq!(a.admit(ip(B), LUCKY), Decision::Admit);
    }

    #[test]
    fn past_start_new_connections_are_dropped_at_a_rate_rising_to_all_at_full() {
        let mut a = Admission::new(limits());
        // Below `start`, even the unluckiest draw gets in.
        for n in 0..4 {
            assert_eq!(
                a.admit(ip(&format!("198.51.100.{n}")), 0.0),
                Decision::Admit
            );
        }
        // At `start` the chance is `rate`, then it rises by (1 - rate) / (full - start) a
        // startup: 0.3, 0.475, 0.65, 0.825 for 4, 5, 6, 7 startups.
        for (n, p) in [(4, 0.3), (5, 0.475), (6, 0.65), (7, 0.825)] {
            assert_eq!(a.counts().0, n);
            let from = ip(&format!("203.0.113.{n}"));
            assert_eq!(
                a.admit(from, p - 0.001),
                Decision::Refuse(Refusal::EarlyDrop),
                "{n}"
            );
            assert_eq!(a.admit(from, p + 0.001), Decision::Admit, "{n}");
        }
        // At `full`, nothing gets in however lucky.
        assert_eq!(a.admit(ip(B), LUCKY), Decision::Refuse(Refusal::Startups));
        a.closed(ip("198.51.100.0"), false);
        assert_eq!(a.admit(ip(B), LUCKY), Decision::Admit);
    }

    #[test]
    fn the_drop_rate_holds_over_many_draws() {
        // At `start` with rate 0.3, about 30% of a uniform spread of draws are dropped.
        let mut a = Admission::new(limits());
        for n in 0..4 {
            a.admit(ip(&format!("198.51.100.{n}")), LUCKY);
        }
        let mut dropped = 0;
        for i in 0..1000 {
            let r = f64::from(i) / 1000.0;
            match a.admit(ip(B), r) {
                Decision::Refuse(Refusal::EarlyDrop) => dropped += 1,
                Decision::Admit => a.closed(ip(B), false),
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(dropped, 300);
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let mut a = Admission::new(limits());
        for from in [
            "2001:db8:1:2::1",
            "2001:db8:1:2::2",
            "2001:db8:1:2:ffff:ffff:ffff:ffff",
        ] {
            assert_eq!(a.admit(ip(from), LUCKY), Decision::Admit);
        }
        assert_eq!(
            a.admit(ip("2001:db8:1:2:abcd::9"), LUCKY),
            Decision::Refuse(Refusal::PerSource)
        );
        assert_eq!(a.admit(ip("2001:db8:1:3::1"), LUCKY), Decision::Admit);

        assert_eq!(Source::of(ip("::ffff:192.0.2.1")), Source::of(ip(A)));
        a.closed(ip("2001:db8:1:2::77"), false);
        assert_eq!(a.admit(ip("2001:db8:1:2::5"), LUCKY), Decision::Admit);
    }
}
