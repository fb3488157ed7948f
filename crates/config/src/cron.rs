//! Cron expressions as CircleCI takes them for schedules (`triggers: - schedule: cron:` and
//! scheduled pipelines): five fields — minute, hour, day of month, month, day of week — in
//! UTC. Parsed by `croner` (a maintained cron crate), with seconds and years refused so that
//! a six-field expression is an error rather than read one field off; `@daily`-style
//! nicknames are refused too (POSIX `crontab` has none). A day of month and a day of week both
//! restricted match either (POSIX), croner's default.

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};

/// A parsed five-field expression.
#[derive(Debug, Clone)]
pub struct Cron {
    text: String,
    cron: croner::Cron,
}

impl PartialEq for Cron {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// Why an expression was refused (without the expression: the caller names it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(pub String);

/// What an expression looks like, for error hints.
pub const CRON_HINT: &str =
    "five fields in UTC: minute hour day-of-month month day-of-week, e.g. \"0 4 * * *\" (04:00 every day)";

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, CronError> {
        let text = text.trim();
        if text.contains('@') {
            return Err(CronError(
                "nicknames such as @daily are not cron fields; write the five fields".into(),
            ));
        }
        let fields = text.split_whitespace().count();
        if fields != 5 {
            return Err(CronError(format!(
                "{fields} field{}; a schedule's cron has exactly five",
                if fields == 1 { "" } else { "s" }
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| CronError(e.to_string()))?;
        Ok(Cron {
            text: text.to_owned(),
            cron,
        })
    }

    /// The expression as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The latest time the expression names at or before `ms` (milliseconds since the
    /// epoch, UTC); `None` when there is none (an expression for a day that never comes).
    pub fn latest_at_or_before(&self, ms: i64) -> Option<i64> {
        let t = DateTime::<Utc>::from_timestamp_millis(ms)?;
        self.cron
            .find_previous_occurrence(&t, true)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// The first time the expression names strictly after `ms`.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let t = DateTime::<Utc>::from_timestamp_millis(ms)?;
        self.cron
            .find_next_occurrence(&t, false)
            .ok()
            .map(|t| t.timestamp_millis())
    }
}

/// `ms` as `2026-12-07T15:04:00Z`, for messages and listings.
pub fn format_utc(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07T15:04:30Z.
    const T: i64 = 1_796_655_870_000;

    #[test]
    fn five_fields_parse_and_find_occurrences_in_utc() {
        assert_eq!(format_utc(T), "2026-12-07T15:04:30Z");
        let every = Cron::parse("* * * * *").expect("parse");
        assert_eq!(
            every.latest_at_or_before(T).map(format_utc).as_deref(),
            Some("2026-12-07T15:04:00Z")
        );
        // A time on the tick is its own latest tick.
        assert_eq!(every.latest_at_or_before(T - 30_000), Some(T - 30_000));
        assert_eq!(
            every.next_after(T - 30_000).map(format_utc).as_deref(),
            Some("2026-12-07T15:05:00Z")
        );
        let nightly = Cron::parse(" 21 4 * * * ").expect("parse");
        assert_eq!(nightly.as_str(), "21 4 * * *");
        assert_eq!(
            nightly.latest_at_or_before(T).map(format_utc).as_deref(),
            Some("2026-12-07T04:21:00Z")
        );
        // Monday 13:00 (2026-12-07 is a Monday); day names as Vixie cron takes them.
        for e in ["0 13 * * 1", "0 13 * * MON"] {
            let monday = Cron::parse(e).expect("parse");
            assert_eq!(
                monday.latest_at_or_before(T).map(format_utc).as_deref(),
                Some("2026-12-07T13:00:00Z"),
                "{e}"
            );
        }
        let steps = Cron::parse("*/15 0-6 1,15 * *").expect("parse");
        assert_eq!(
            steps.next_after(T).map(format_utc).as_deref(),
            Some("2026-12-15T00:00:00Z")
        );
    }

    #[test]
    fn anything_but_five_valid_fields_is_refused_with_the_reason() {
        for (e, want) in [
            ("0 0 * * * *", "6 fields"),
            ("0 * * *", "4 fields"),
            ("", "0 fields"),
            ("@daily", "nicknames"),
            ("61 * * * *", ""),
            ("* 24 * * *", ""),
            ("* * * 13 *", ""),
            ("x * * * *", ""),
            ("*/0 * * * *", ""),
        ] {
            let err = Cron::parse(e).expect_err(e);
            assert!(err.0.contains(want), "{e}: {err}");
            assert!(!err.0.is_empty(), "{e}");
        }
    }
}
