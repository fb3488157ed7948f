//! One `run` step: its command line, environment and directory, its output streamed (and
//! coalesced under a flood), `no_output_timeout`, and stopping it (TERM, then KILL).

use super::bootstrap::{bin_dir, capture, scratch_dir};
use super::environment::expand_home;
use super::millis;
use super::step_sequence::{StepContext, StepControl};
use crate::config::{merge_env, RunStep, Step, StepKind};
use crate::executor::{ExecSpec, Executor, Output};
use crate::stream::{Event, StepStatus, StepSummary, Stream};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use std::time::{Duration, Instant};

/// `/bin/sh -c 'echo $$ > pidfile; PATH=…; exec "$@"' SHELL… SCRIPT`: a `docker exec` process leads
/// its own process group, so the pid it records is the group to signal on timeout or cancel;
/// `exec` keeps that pid for the real shell.
pub(super) fn step_command(
    job_id: &str,
    i: usize,
    run: &RunStep,
    has_bash: bool,
    job_shell: Option<&str>,
) -> Vec<String> {
    let scratch = scratch_dir(job_id);
    let shell = run
        .shell
        .as_deref()
        .or(job_shell)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            if has_bash {
                "/bin/bash -eo pipefail".to_owned()
            } else {
                "/bin/sh -eo pipefail".to_owned()
            }
        });
    let mut cmd = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        // The in-job `circleci` command comes first on PATH, whatever PATH the image or the
        // job set; bash sources `$BASH_ENV` (set in the step's environment) by itself.
        format!(
            "echo $$ > {scratch}/step-{i}.pid; PATH=\"{bin}${{PATH:+:$PATH}}\"; export PATH; exec \"$@\"",
            bin = bin_dir(job_id)
        ),
        "bosun-step".to_owned(),
    ];
    cmd.extend(shell.split_whitespace().map(str::to_owned));
    cmd.push(format!("{scratch}/step-{i}.sh"));
    cmd
}

/// The step's environment: the job's, the step's own `environment:`, then `--env` and the
/// project's settings over both.
fn step_env(ctx: &StepContext, run: &RunStep) -> Vec<String> {
    let mut env = ctx.base_env.clone();
    merge_env(&mut env, run.environment.clone());
    merge_env(&mut env, ctx.spec.context.env.clone());
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn step_workdir(ctx: &StepContext, run: &RunStep) -> String {
    match run.working_directory.as_deref() {
        None => ctx.workdir.clone(),
        Some(p) if p.starts_with('/') || p.starts_with('~') => expand_home(p, &ctx.user.home),
        Some(p) => format!("{}/{}", ctx.workdir.trim_end_matches('/'), p),
    }
}

/// Run step `i`, a `run` step, to its end: its output to the job's sink, its status back.
pub(super) async fn run_step(
    ctx: &StepContext,
    i: usize,
    step: &Step,
    control: &StepControl,
) -> StepSummary {
    let t0 = Instant::now();
    let summary = |status, exit_code| StepSummary {
        step: i,
        name: step.name.clone(),
        status,
        exit_code,
        duration_ms: millis(t0.elapsed()),
    };
    let StepKind::Run(run) = &step.kind else {
        // The step loop sends only `run` steps here.
        return summary(StepStatus::Failed, None);
    };
    let (executor, spec, sink) = (ctx.executor.as_ref(), &ctx.spec, ctx.sink.as_ref());
    let (container, cancel, runner) = (&ctx.container, &ctx.cancel, ctx.runner.as_ref());
    let exec_spec = ExecSpec {
        cmd: step_command(
            &spec.id,
            i,
            run,
            ctx.user.has_bash,
            spec.plan.shell.as_deref(),
        ),
        env: step_env(ctx, run),
        user: ctx.step_user.clone(),
        working_dir: Some(step_workdir(ctx, run)),
    };
    // Through the main process's runner when there is one (a fork, not an engine exec);
    // the engine's exec when not, or when the runner has broken.
    let started = match runner.filter(|r| r.broken().is_none()) {
        Some(r) => r.exec(exec_spec).await,
        None => executor.exec(container, exec_spec).await,
    };
    let mut exec = match started {
        Ok(e) => e,
        Err(e) => {
            sink.emit(&Event::Output {
                step: i,
                stream: Stream::Stderr,
                data: Bytes::from(format!("bosun: could not start the step: {e}\n")),
            });
            return summary(StepStatus::Failed, None);
        }
    };
    let mut interrupted: Option<StepStatus> = None;
    // An output item read ahead while coalescing (see below) and not yet handled.
    let mut peeked = None;
    loop {
        // In this order, not at random: a frame read ahead while coalescing goes before the
        // stream is polled again (the stream may have ended meanwhile, and a random pick of
        // its end lost that frame); a cancel goes before more output (a flood must not
        // starve it).
        let next = tokio::select! {
            biased;
            // `Some(None)`: the stream ended while coalescing.
            r = async { Ok(peeked.take().flatten()) }, if peeked.is_some() => r,
            () = cancel.cancelled(), if interrupted.is_none() => {
                interrupted = Some(StepStatus::Canceled);
                stop_step(executor, container, &spec.id, i, spec.context.kill_grace).await;
                continue;
            }
            r = tokio::time::timeout(run.no_output_timeout, exec.output.next()) => r,
        };
        match next {
            Ok(Some(Ok(out))) => {
                let (stream, data) = split_output(out);
                // Under a flood the engine hands over ~16 KiB frames; join those already
                // waiting (never waiting for more) so each sink sees one event per ~256 KiB
                // instead of per frame: masking, spooling and hashing pay per event.
                let mut joined: Option<Vec<u8>> = None;
                while joined.as_ref().map_or(data.len(), Vec::len) < COALESCE_BYTES {
                    match exec.output.next().now_or_never() {
                        None => break,
                        Some(Some(Ok(more))) if stream_of(&more) == stream => {
                            let (_, d2) = split_output(more);
                            joined
                                .get_or_insert_with(|| data.to_vec())
                                .extend_from_slice(&d2);
                        }
                        Some(item) => {
                            peeked = Some(item);
                            break;
                        }
                    }
                }
                sink.emit(&Event::Output {
                    step: i,
                    stream,
                    data: joined.map_or(data, Bytes::from),
                });
            }
            Ok(Some(Err(e))) => {
                sink.emit(&Event::Output {
                    step: i,
                    stream: Stream::Stderr,
                    data: Bytes::from(format!("bosun: lost the step's output: {e}\n")),
                });
                break;
            }
            Ok(None) => break,
            Err(_elapsed) => {
                if interrupted.is_some() {
                    // Already stopping and still silent after a whole timeout: give up on it.
                    break;
                }
                interrupted = Some(StepStatus::TimedOut);
                sink.emit(&Event::Output {
                    step: i,
                    stream: Stream::Stderr,
                    data: Bytes::from(format!(
                        "\nbosun: no output for {}; stopping the step (no_output_timeout)\n",
                        crate::stream::format_duration(millis(run.no_output_timeout))
                    )),
                });
                stop_step(executor, container, &spec.id, i, spec.context.kill_grace).await;
            }
        }
    }
    let code = exec.exit.await.ok().flatten();
    if control
        .stopped_by_job
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return summary(StepStatus::Stopped, code);
    }
    if let Some(status) = interrupted {
        return summary(status, code);
    }
    match code {
        Some(0) => summary(StepStatus::Success, code),
        _ => summary(StepStatus::Failed, code),
    }
}

/// TERM the step's process group, then KILL it after the grace period. Runs as root in the
/// container so it can reach whatever the step became (sudo, setuid).
pub(super) async fn stop_step(
    executor: &dyn Executor,
    container: &str,
    job_id: &str,
    i: usize,
    grace: Duration,
) {
    let pidfile = format!("{}/step-{i}.pid", scratch_dir(job_id));
    // dash wants `kill -s SIG -- -PGID`, busybox rejects the `--`: try both spellings.
    let script = format!(
        "p=$(cat {pidfile} 2>/dev/null) || exit 0; \
         sig() {{ kill -s \"$1\" -- \"-$p\" 2>/dev/null || kill -s \"$1\" \"-$p\" 2>/dev/null; }}; \
         sig TERM || exit 0; i=0; \
         while [ $i -lt {ticks} ] && sig 0; do sleep 0.1; i=$((i+1)); done; \
         sig KILL; exit 0",
        ticks = (grace.as_millis() / 100).max(1)
    );
    let _ = capture(
        executor,
        container,
        ExecSpec {
            cmd: vec!["/bin/sh".into(), "-c".into(), script],
            user: Some("0".into()),
            ..Default::default()
        },
    )
    .await;
}

/// Largest output event made by joining frames that were already waiting.
const COALESCE_BYTES: usize = 256 * 1024;

fn split_output(out: Output) -> (Stream, Bytes) {
    match out {
        Output::Stdout(b) => (Stream::Stdout, b),
        Output::Stderr(b) => (Stream::Stderr, b),
    }
}

fn stream_of(out: &Output) -> Stream {
    match out {
        Output::Stdout(_) => Stream::Stdout,
        Output::Stderr(_) => Stream::Stderr,
    }
}
