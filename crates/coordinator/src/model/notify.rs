//! Which e-mail a finished pipeline triggers for an address, by the events it asked for
//! (`project notify add --on failed,fixed,default-branch`, CircleCI's choices). No I/O: the
//! sender (not built yet) asks this for each address of the project.

use bosun_protocol::PipelineState;

/// What an address asked to hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct On {
    /// A pipeline failed (or errored: its config did not compile).
    pub failed: bool,
    /// The first success after a failure on the same branch.
    pub fixed: bool,
    /// Every finished pipeline on the project's default branch.
    pub default_branch: bool,
}

/// The mail one address gets for a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mail {
    Failed,
    Fixed,
    /// A pipeline of the default branch ended in `state` (none of the above applied).
    Finished(PipelineState),
}

fn failed(s: PipelineState) -> bool {
    matches!(s, PipelineState::Failed | PipelineState::Errored)
}

/// The mail for a pipeline that ended in `state`, the branch's previous ended pipeline having
/// ended in `previous`; `None` while it has not ended or nothing was asked for. At most one
/// mail per address and pipeline: failed/fixed say more than the default branch's.
pub fn mail(
    on: On,
    state: PipelineState,
    previous: Option<PipelineState>,
    default_branch: bool,
) -> Option<Mail> {
    if !crate::model::advance::pipeline_final(state) || state == PipelineState::Created {
        return None;
    }
    if on.failed && failed(state) {
        return Some(Mail::Failed);
    }
    if on.fixed && state == PipelineState::Success && previous.is_some_and(failed) {
        return Some(Mail::Fixed);
    }
    (on.default_branch && default_branch).then_some(Mail::Finished(state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use PipelineState as S;

    const ALL: On = On {
        failed: true,
        fixed: true,
        default_branch: true,
    };

    #[test]
    fn failed_fixed_and_the_default_branch() {
        let f = On {
            failed: true,
            fixed: true,
            default_branch: false,
        };
        assert_eq!(mail(f, S::Failed, None, false), Some(Mail::Failed));
        assert_eq!(
            mail(f, S::Errored, Some(S::Success), true),
            Some(Mail::Failed)
        );
        assert_eq!(
            mail(f, S::Success, Some(S::Failed), false),
            Some(Mail::Fixed)
        );
        assert_eq!(
            mail(f, S::Success, Some(S::Errored), false),
            Some(Mail::Fixed)
        );
        assert_eq!(
            mail(f, S::Success, Some(S::Success), true),
            None,
            "still fine"
        );
        assert_eq!(mail(f, S::Success, None, true), None, "first build");
        assert_eq!(mail(f, S::Canceled, Some(S::Failed), false), None);
        assert_eq!(
            mail(ALL, S::Success, Some(S::Success), true),
            Some(Mail::Finished(S::Success))
        );
        assert_eq!(mail(ALL, S::Success, Some(S::Success), false), None);
        assert_eq!(
            mail(ALL, S::Success, Some(S::Failed), true),
            Some(Mail::Fixed)
        );
    }

    #[test]
    fn nothing_before_the_end_or_when_nothing_was_asked() {
        for s in [S::Created, S::Running, S::OnHold] {
            assert_eq!(mail(ALL, s, Some(S::Failed), true), None, "{s:?}");
        }
        assert_eq!(mail(On::default(), S::Failed, None, true), None);
    }
}
