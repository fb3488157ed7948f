//! Status badges: which status a branch's badge shows, and who may see it. No I/O: the store
//! finds the newest pipeline in one of the [`SHOWN`] states, these rules say what it means.

use bosun_protocol::PipelineState;

/// What a badge says (the word is the status; its colour only repeats it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadgeStatus {
    Passing,
    Failing,
    Canceled,
    OnHold,
    NoBuilds,
}

impl BadgeStatus {
    /// The word on the badge.
    pub fn word(self) -> &'static str {
        match self {
            BadgeStatus::Passing => "passing",
            BadgeStatus::Failing => "failing",
            BadgeStatus::Canceled => "canceled",
            BadgeStatus::OnHold => "on hold",
            BadgeStatus::NoBuilds => "no builds",
        }
    }

    /// The colour of the status half (shields.io's palette).
    pub fn colour(self) -> &'static str {
        match self {
            BadgeStatus::Passing => "#44cc11",
            BadgeStatus::Failing => "#e05d44",
            BadgeStatus::Canceled => "#9f9f9f",
            BadgeStatus::OnHold => "#dfb317",
            BadgeStatus::NoBuilds => "#9f9f9f",
        }
    }
}

/// The pipeline states a badge may show: the ones nothing is running in. A pipeline still
/// `created` or `running` is skipped, so a badge does not flicker while a build runs; one
/// `on_hold` waits for a person and is shown as such.
pub const SHOWN: [PipelineState; 5] = [
    PipelineState::Success,
    PipelineState::Failed,
    PipelineState::Errored,
    PipelineState::Canceled,
    PipelineState::OnHold,
];

/// The badge of a branch whose newest shown pipeline is `newest` (`None`: there is none).
pub fn status(newest: Option<PipelineState>) -> BadgeStatus {
    match newest {
        None => BadgeStatus::NoBuilds,
        Some(PipelineState::Success) => BadgeStatus::Passing,
        // A config that did not compile is a broken build as far as the README is concerned.
        Some(PipelineState::Failed | PipelineState::Errored) => BadgeStatus::Failing,
        Some(PipelineState::Canceled) => BadgeStatus::Canceled,
        Some(PipelineState::OnHold) => BadgeStatus::OnHold,
        // Not in SHOWN; should a store hand one over anyway, say nothing about it.
        Some(PipelineState::Created | PipelineState::Running) => BadgeStatus::NoBuilds,
    }
}

/// The look of a badge (`?style=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadgeStyle {
    /// shields.io's default `flat`-with-gradient look.
    Shield,
    FlatSquare,
}

impl BadgeStyle {
    /// `?style=`: absent is `shield`; anything else unknown is `None` (a 400 naming the
    /// choices).
    pub fn parse(s: Option<&str>) -> Option<BadgeStyle> {
        match s {
            None | Some("shield") | Some("flat") => Some(BadgeStyle::Shield),
            Some("flat-square") => Some(BadgeStyle::FlatSquare),
            Some(_) => None,
        }
    }
}

/// Whether a badge request may be answered: a public project's always; a private one's
/// only with a token whose digest is the project's (`None`: no token made yet, so none
/// passes).
pub fn may_see(public: bool, token_digest: Option<&str>, given_digest: Option<&str>) -> bool {
    if public {
        return true;
    }
    match (token_digest, given_digest) {
        (Some(want), Some(got)) => constant_time_eq(want.as_bytes(), got.as_bytes()),
        _ => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_settled_state_has_its_word_and_running_ones_are_not_shown() {
        assert_eq!(status(None).word(), "no builds");
        assert_eq!(status(Some(PipelineState::Success)).word(), "passing");
        assert_eq!(status(Some(PipelineState::Failed)).word(), "failing");
        assert_eq!(status(Some(PipelineState::Errored)).word(), "failing");
        assert_eq!(status(Some(PipelineState::Canceled)).word(), "canceled");
        assert_eq!(status(Some(PipelineState::OnHold)).word(), "on hold");
        assert!(!SHOWN.contains(&PipelineState::Running));
        assert!(!SHOWN.contains(&PipelineState::Created));
        for s in SHOWN {
            assert_ne!(status(Some(s)), BadgeStatus::NoBuilds, "{s:?}");
        }
    }

    #[test]
    fn a_private_badge_needs_the_projects_token() {
        assert!(may_see(true, None, None));
        assert!(!may_see(false, None, None));
        assert!(!may_see(false, None, Some("abc")), "no token made yet");
        assert!(!may_see(false, Some("abc"), None));
        assert!(!may_see(false, Some("abc"), Some("abd")));
        assert!(!may_see(false, Some("abc"), Some("ab")));
        assert!(may_see(false, Some("abc"), Some("abc")));
    }

    #[test]
    fn styles() {
        assert_eq!(BadgeStyle::parse(None), Some(BadgeStyle::Shield));
        assert_eq!(BadgeStyle::parse(Some("shield")), Some(BadgeStyle::Shield));
        assert_eq!(
            BadgeStyle::parse(Some("flat-square")),
            Some(BadgeStyle::FlatSquare)
        );
        assert_eq!(BadgeStyle::parse(Some("<script>")), None);
    }
}
