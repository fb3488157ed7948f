//! A job's Docker engine, for real: `bosun execute` runs jobs whose steps use the real docker
//! CLI against the agent's proxy of the real engine. The job can build, run, exec, use
//! volumes and networks; it cannot see or touch another job's or the host's objects, cannot
//! reach the host, and leaves nothing labelled behind, however it ends.

use crate::harness::{docker, ensure_images, image, new_run_id, Project};
use std::process::Command;
use std::time::Duration;

/// Everything (containers, volumes, networks, images) labelled `bosun.job=<job>`.
fn labelled(job: &str) -> Vec<String> {
    let f = format!("label=bosun.job={job}");
    let mut all = Vec::new();
    for args in [
        vec!["ps", "-aq", "--filter", &f],
        vec!["volume", "ls", "-q", "--filter", &f],
        vec!["network", "ls", "-q", "--filter", &f],
        vec!["images", "-aq", "--filter", &f],
    ] {
        let out = Command::new("docker").args(&args).output().expect("docker");
        all.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(|s| format!("{} {s}", args[0])),
        );
    }
    all
}

/// A container of "another job" (labelled as the proxy labels), running while the test does.
struct Foreign(String);

impl Foreign {
    fn start(job: &str) -> Foreign {
        let name = format!("foreign-{}", new_run_id());
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &format!("bosun.job={job}"),
            "--label",
            "bosun.kind=engine",
            &image("base"),
            "sleep",
            "300",
        ]);
        Foreign(name)
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

fn remote_docker_job(steps: &str) -> Project {
    Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker:\n      - image: {img}\n        user: circleci\n    steps:\n      - setup_remote_docker:\n          docker_layer_caching: true\n{steps}",
        img = image("docker")
    ))
}

#[test]
fn a_job_builds_runs_and_sees_only_its_own_objects() {
    ensure_images();
    let other = Foreign::start("some-other-job");
    let base = image("base");
    let p = remote_docker_job(&format!(
        r#"      - run:
          name: build and run
          command: |
            mkdir ctx && printf 'FROM {base}\nRUN echo built > /built\n' > ctx/Dockerfile
            docker build -q -t app:1 ctx
            docker volume create data
            docker run --rm -v data:/data app:1 sh -c 'cat /built > /data/out'
            docker run --rm -v data:/data app:1 cat /data/out
            docker network create jobnet
            docker run -d --name web --network jobnet app:1 sleep 300
            docker exec web cat /built
            echo through-exec-stdin | docker exec -i web cat
            echo through-attach-stdin | docker run -i --rm app:1 cat
            docker cp ctx/Dockerfile web:/tmp/Dockerfile && docker cp web:/built ./got && cat got
            docker exec web cat /tmp/Dockerfile | grep -q FROM
            timeout 5 docker logs -f web || true
            echo "ps: $(docker ps --format '{{{{.Names}}}}' | tr '\n' ' ')"
      - run:
          name: foreign objects do not exist
          command: |
            docker inspect {other} 2>&1 || echo "inspect failed"
            docker kill {other} 2>&1 || echo "kill failed"
            docker rm {other} 2>&1 || echo "rm failed"
            docker exec {other} true 2>&1 || echo "exec failed"
            docker tag {base} stolen 2>&1 || echo "tag failed"
            docker rmi {base} 2>&1 || echo "rmi failed"
"#,
        other = other.0
    ));
    let out = p.execute(&[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let s = &out.stdout;
    assert!(
        s.contains("layer cache: layers of the images already on the agent's engine are reused; the images this job builds are removed at its end"),
        "{s}"
    );
    assert!(s.matches("built").count() >= 2, "{s}");
    // stdin reaches `exec -i` and `run -i` through the hijacked (upgraded) connections.
    assert!(s.contains("through-exec-stdin"), "{s}");
    assert!(s.contains("through-attach-stdin"), "{s}");
    assert!(
        s.contains("ps: web "),
        "docker ps shows exactly the job's container: {s}"
    );
    assert!(!s.contains(&format!("ps: web {}", other.0)), "{s}");
    assert!(s.contains(&format!("No such object: {}", other.0)), "{s}");
    assert!(
        s.contains(&format!("No such container: {}", other.0)),
        "{s}"
    );
    for failed in [
        "inspect failed",
        "rm failed",
        "exec failed",
        "tag failed",
        "rmi failed",
    ] {
        assert!(s.contains(failed), "{failed}: {s}");
    }
    // The other job's container is untouched, and the job left nothing behind.
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &other.0]),
        "true"
    );
    assert!(labelled(&p.job_id).is_empty(), "{:?}", labelled(&p.job_id));
}

#[test]
fn host_access_is_refused_naming_the_field() {
    ensure_images();
    let base = image("base");
    let mut steps = String::new();
    for (flags, field) in [
        ("--privileged", "HostConfig.Privileged"),
        ("-v /:/host", "HostConfig.Binds `/`"),
        ("--network host", "HostConfig.NetworkMode=host"),
        ("--pid host", "HostConfig.PidMode=host"),
        ("-v /var/run/docker.sock:/x", "docker.sock"),
        ("--cap-add SYS_ADMIN", "HostConfig.CapAdd"),
        ("--device /dev/null", "HostConfig.Devices"),
    ] {
        steps.push_str(&format!(
            "      - run: |\n          if docker run --rm {flags} {base} true 2>err; then echo 'RAN {flags}'; exit 1; fi\n          grep -F -q '{field}' err || {{ cat err; exit 1; }}\n"
        ));
    }
    steps.push_str(
        "      - run: (docker system df 2>&1 || true) | grep -q 'not allowed for a job'\n",
    );
    steps.push_str(
        "      - run: (docker swarm init 2>&1 || true) | grep -q 'swarm is not available'\n",
    );
    let p = remote_docker_job(&steps);
    let out = p.execute(&[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(labelled(&p.job_id).is_empty());
}

#[test]
fn a_machine_job_has_docker_without_the_step() {
    ensure_images();
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    machine: true\n    steps:\n      - run: docker run --rm {base} echo from-a-container\n      - run: docker run -d --name bg {base} sleep 300\n",
        base = image("base")
    ));
    let out = p.execute(&[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("from-a-container"), "{}", out.stdout);
    assert!(labelled(&p.job_id).is_empty(), "{:?}", labelled(&p.job_id));
}

#[test]
fn two_jobs_at_once_cannot_see_each_other() {
    ensure_images();
    let base = image("base");
    let a = remote_docker_job(&format!(
        "      - run: docker run -d --name a-thing {base} sleep 300 && echo a-ready && sleep 60\n"
    ));
    let running = a.spawn(&[]);
    running.wait_for_output("a-ready", Duration::from_secs(120));
    let b = remote_docker_job(
        "      - run: |\n          test -z \"$(docker ps -aq)\"\n          if docker inspect a-thing; then exit 1; fi\n          if docker logs a-thing; then exit 1; fi\n          echo b-done\n",
    );
    let out = b.execute(&[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    running.signal("INT");
    let a_out = running.finish(Duration::from_secs(60));
    assert_ne!(a_out.code, 0);
    assert!(labelled(&a.job_id).is_empty(), "{:?}", labelled(&a.job_id));
    assert!(labelled(&b.job_id).is_empty(), "{:?}", labelled(&b.job_id));
}

#[test]
fn a_failed_job_leaves_nothing_labelled() {
    ensure_images();
    let base = image("base");
    let p = remote_docker_job(&format!(
        "      - run: |\n          docker volume create v && docker network create n\n          printf 'FROM {base}\\nRUN true\\n' | docker build -q -t failing -\n          docker run -d -v v:/v --network n {base} sleep 300\n          exit 3\n"
    ));
    let out = p.execute(&[]);
    assert_ne!(out.code, 0);
    assert!(labelled(&p.job_id).is_empty(), "{:?}", labelled(&p.job_id));
}

/// What an agent killed mid-job left (the proxy's labels, this agent's id) goes in the
/// start-up sweep, volumes and built images included.
#[test]
fn the_start_up_sweep_removes_a_killed_agents_engine_objects() {
    ensure_images();
    let agent = format!("sweep-{}", new_run_id());
    let l = |k: &str, v: &str| format!("{k}={v}");
    let labels = [
        l("bosun.agent", &agent),
        l("bosun.job", "killed-job"),
        l("bosun.kind", "engine"),
    ];
    let mut flags = Vec::new();
    for x in &labels {
        flags.push("--label".to_owned());
        flags.push(x.clone());
    }
    let with = |args: &[&str]| {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let at = v.len() - 1;
        for f in flags.iter().rev() {
            v.insert(at, f.clone());
        }
        v
    };
    let run = |v: Vec<String>| {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        docker(&refs)
    };
    run(with(&["volume", "create", &format!("{agent}-v")]));
    run(with(&["network", "create", &format!("{agent}-n")]));
    let ctx = tempfile::tempdir().expect("tmp");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {}\nRUN true\n", image("base")),
    )
    .expect("write");
    run(with(&[
        "build",
        "-q",
        "-t",
        &format!("{agent}-img"),
        &ctx.path().display().to_string(),
    ]));
    run(with(&["create", &image("base")]));
    let f = format!("label=bosun.agent={agent}");
    let left = || {
        ["ps -aq", "volume ls -q", "network ls -q", "images -aq"]
            .iter()
            .flat_map(|c| {
                let mut a: Vec<&str> = c.split(' ').collect();
                a.extend(["--filter", &f]);
                docker(&a)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    assert!(left().len() >= 4);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ex = bosun::executor::DockerExecutor::connect()
            .await
            .expect("engine");
        bosun::job::sweep(&ex, &agent, false).await.expect("sweep");
    });
    assert!(left().is_empty(), "{:?}", left());
}
