//! `scp`, `sftp` and `rsync -e ssh` into a running job through the SSH gateway, with the real
//! OpenSSH clients, against images without an `sftp-server` (`bosun/base`) and without a shell
//! (`bosun/nobash` once its step has removed `/bin/sh`): the gateway's SFTP is the in-job
//! executable's, running as the step user.

use crate::harness::{self, ensure_images, image, KillOnDrop, Project};
use crate::ssh_gateway::{start, text, Gateway};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The options every client here takes (the gateway's host key is new each run).
fn client_opts(g: &Gateway) -> Vec<String> {
    let mut v: Vec<String> = [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    v.push(g.key.display().to_string());
    v
}

/// `scp -s` (SFTP, whatever this OpenSSH's default) with `args`.
fn scp(g: &Gateway, args: &[&str]) -> Output {
    Command::new("scp")
        .arg("-s")
        .args(client_opts(g))
        .args(["-P", &g.port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("scp")
}

/// `sftp -b -` with `batch` on its stdin, in `local_dir`.
fn sftp_batch(g: &Gateway, job: &str, local_dir: &Path, batch: &str) -> Output {
    let mut child = Command::new("sftp")
        .args(client_opts(g))
        .args(["-P", &g.port.to_string(), "-b", "-"])
        .arg(format!("{job}@127.0.0.1"))
        .current_dir(local_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sftp");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(batch.as_bytes())
        .expect("batch");
    child.wait_with_output().expect("sftp")
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        text(o),
        err(o)
    );
}

/// A refusal, for the reason the kernel gave the user.
fn assert_denied(o: &Output, what: &str) {
    assert!(!o.status.success(), "{what} was allowed: {}", text(o));
    assert!(err(o).contains("Permission denied"), "{what}: {}", err(o));
}

fn sha256(path: &Path) -> String {
    let o = harness::run(Command::new("sha256sum").arg(path));
    o.split_whitespace().next().expect("digest").to_owned()
}

/// `len` bytes that do not compress (xorshift), so the transfer really moves them.
fn write_noise(path: &Path, len: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = len;
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = left.min(8);
        f.write_all(&x.to_le_bytes()[..n]).expect("write");
        left -= n;
    }
    f.flush().expect("flush");
}

/// An SFTP packet: its length, `kind`, then `body`.
fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut p = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(kind);
    p.extend_from_slice(body);
    p
}

/// An SFTP `string`.
fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// `stream` sent to the job's `sftp` subsystem as it is; what came back.
fn raw_sftp(g: &Gateway, job: &str, stream: &[u8]) -> Output {
    let mut child = g
        .ssh(&g.key, job)
        .args(["-s", "sftp"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh -s sftp");
    let mut stdin = child.stdin.take().expect("stdin");
    // The server may end the session before it has read everything.
    let _ = stdin.write_all(stream);
    drop(stdin);
    child.wait_with_output().expect("ssh")
}

fn base_config() -> String {
    format!(
        "version: 2.1\njobs:\n  build:\n    docker:\n      - image: {}\n        user: circleci\n    steps:\n      - run: echo steps-done\n",
        image("base")
    )
}

/// Wait until the job's steps are done, a session holding it; that session.
fn hold(g: &Gateway, job: &str) -> KillOnDrop {
    let holder = KillOnDrop(g.ssh(&g.key, job).arg("sleep 600").spawn().expect("ssh"));
    g.run
        .wait_for_output("steps-done", Duration::from_secs(120));
    holder
}

#[test]
fn scp_sftp_and_rsync_move_files_as_the_non_root_step_user_in_an_image_without_sftp_server() {
    ensure_images();
    let p = Project::new(&base_config());
    let g = start(&p, &["--ssh-wait", "120s", "--ssh-grace", "1s"]);
    let job = p.job_id.as_str();
    let _holder = hold(&g, job);
    let local = g.dir.path();
    let remote = |path: &str| format!("{job}@127.0.0.1:{path}");
    let sh = |cmd: &str| {
        let o = g.run_as(&g.key, job, cmd);
        assert_ok(&o, cmd);
        text(&o)
    };

    // No sftp-server anywhere in the image: what answers is the gateway's.
    assert_eq!(
        sh("ls /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server /usr/lib/ssh/sftp-server /usr/libexec/sftp-server /usr/lib/sftp-server 2>/dev/null; command -v sftp-server; id -un; echo $HOME"),
        "circleci\n/home/circleci\n"
    );

    // Upload to the home directory (`JOB@host:`, as with sshd), and back.
    let up = local.join("up.txt");
    std::fs::write(&up, "uploaded over sftp\n").expect("write");
    assert_ok(
        &scp(&g, &[up.to_str().expect("utf-8"), &remote("")]),
        "scp up",
    );
    assert_eq!(
        sh("stat -c '%U:%G %a' ~/up.txt; cat ~/up.txt"),
        "circleci:circleci 644\nuploaded over sftp\n"
    );
    let back = local.join("back.txt");
    assert_ok(
        &scp(&g, &[&remote("up.txt"), back.to_str().expect("utf-8")]),
        "scp down",
    );
    assert_eq!(
        std::fs::read_to_string(&back).expect("read"),
        "uploaded over sftp\n"
    );
    // Into the working directory, by its path relative to home.
    assert_ok(
        &scp(&g, &[up.to_str().expect("utf-8"), &remote("project/")]),
        "scp into project/",
    );
    assert_eq!(sh("cat ~/project/up.txt"), "uploaded over sftp\n");

    eprintln!("[sftp] tree");
    // A tree with -r, modes and times kept with -p, both ways.
    let tree = local.join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).expect("mkdir");
    std::fs::write(tree.join("run.sh"), "#!/bin/sh\necho hi\n").expect("write");
    std::fs::write(tree.join("sub/secret"), "s3cret\n").expect("write");
    std::fs::write(tree.join("sub/deeper/leaf"), "leaf\n").expect("write");
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    mode(&tree.join("run.sh"), 0o751);
    mode(&tree.join("sub/secret"), 0o600);
    mode(&tree.join("sub"), 0o750);
    harness::run(
        Command::new("touch")
            .args(["-m", "-d", "@1600000000"])
            .arg(tree.join("sub/deeper/leaf")),
    );
    assert_ok(
        &scp(
            &g,
            &["-r", "-p", tree.to_str().expect("utf-8"), &remote("")],
        ),
        "scp -r -p up",
    );
    assert_eq!(
        sh("cd ~/tree && stat -c '%a %n' run.sh sub sub/secret && stat -c %Y sub/deeper/leaf && cat sub/deeper/leaf"),
        "751 run.sh\n750 sub\n600 sub/secret\n1600000000\nleaf\n"
    );
    let down = local.join("down");
    std::fs::create_dir(&down).expect("mkdir");
    assert_ok(
        &scp(
            &g,
            &["-r", "-p", &remote("tree"), down.to_str().expect("utf-8")],
        ),
        "scp -r -p down",
    );
    let got = down.join("tree");
    let meta = |p: &Path| std::fs::metadata(p).expect("stat");
    assert_eq!(
        meta(&got.join("run.sh")).permissions().mode() & 0o777,
        0o751
    );
    assert_eq!(
        meta(&got.join("sub/secret")).permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(got.join("sub/deeper/leaf")).expect("leaf"),
        "leaf\n"
    );
    let mtime = harness::run(
        Command::new("stat")
            .args(["-c", "%Y"])
            .arg(got.join("sub/deeper/leaf")),
    );
    assert_eq!(mtime.trim(), "1600000000");

    eprintln!("[sftp] refusals");
    // What circleci may not touch, it may not touch over SFTP either — the kernel says so,
    // symlinks to there included.
    assert_eq!(
        sh("ln -s /root/.profile ~/root-profile && ln -s /root ~/root-dir && stat -c '%a %U' /root"),
        "700 root\n"
    );
    // OpenSSH's scp and sftp look a download's path up first (a glob) and report any failure
    // there as "No such file"; the uploads show the server's answer.
    for (what, from) in [
        ("download from /root", "/root/.profile"),
        ("download through a symlink into /root", "root-profile"),
    ] {
        let o = scp(
            &g,
            &[&remote(from), local.join("x").to_str().expect("utf-8")],
        );
        assert!(!o.status.success(), "{what} was allowed");
    }
    for (what, to) in [
        ("upload into /root", "/root/planted"),
        ("upload through a symlink into /root", "root-dir/planted"),
        ("upload over /etc/passwd", "/etc/passwd"),
    ] {
        assert_denied(&scp(&g, &[up.to_str().expect("utf-8"), &remote(to)]), what);
    }
    // What the server answers, packet by packet: the kernel's EACCES, as SSH_FX_PERMISSION_DENIED.
    let mut stream = packet(1, &[0, 0, 0, 3]); // INIT, version 3
    for (id, path) in [
        (1u8, "/root/.profile"),
        (2, "root-profile"),
        (3, "root-dir/.profile"),
    ] {
        stream.extend(packet(17, &[&[0, 0, 0, id][..], &string(path)].concat()));
        // STAT
    }
    // OPEN /etc/passwd for writing (SSH_FXF_WRITE), no attributes.
    stream.extend(packet(
        3,
        &[
            &[0, 0, 0, 4][..],
            &string("/etc/passwd"),
            &[0, 0, 0, 2, 0, 0, 0, 0],
        ]
        .concat(),
    ));
    let o = raw_sftp(&g, job, &stream);
    for id in 1..=4u8 {
        let denied = [101u8, 0, 0, 0, id, 0, 0, 0, 3];
        assert!(
            o.stdout.windows(denied.len()).any(|w| w == denied),
            "request {id} not answered SSH_FX_PERMISSION_DENIED: {:?}",
            o.stdout
        );
    }
    assert!(!local.join("x").exists());
    assert_eq!(sh("grep -c circleci /etc/passwd"), "1\n");

    eprintln!("[sftp] batch");
    // sftp in batch mode: the commands a user types.
    let batch_dir = local.join("batch");
    std::fs::create_dir(&batch_dir).expect("mkdir");
    std::fs::write(batch_dir.join("local.txt"), "from sftp\n").expect("write");
    let o = sftp_batch(
        &g,
        job,
        &batch_dir,
        "mkdir work\ncd work\nput local.txt\nrename local.txt renamed.txt\nchmod 600 renamed.txt\nsymlink renamed.txt link.txt\nls -l\nget link.txt fetched.txt\nrm link.txt\npwd\n",
    );
    assert_ok(&o, "sftp -b");
    let out = text(&o);
    assert!(
        out.contains("Remote working directory: /home/circleci/work"),
        "{out}"
    );
    let listing = out
        .lines()
        .find(|l| l.ends_with("renamed.txt") && !l.starts_with("sftp>"))
        .unwrap_or_else(|| panic!("no renamed.txt in ls -l:\n{out}"));
    assert!(
        listing.starts_with("-rw-------") && listing.contains("circleci"),
        "{listing}"
    );
    assert_eq!(
        std::fs::read_to_string(batch_dir.join("fetched.txt")).expect("fetched"),
        "from sftp\n"
    );
    assert_eq!(
        sh("ls ~/work; stat -c %a ~/work/renamed.txt"),
        "renamed.txt\n600\n"
    );
    // A refused command fails the batch, with the kernel's reason (a download's lookup
    // failing reads "not found", as it does against OpenSSH's own server).
    let o = sftp_batch(&g, job, &batch_dir, "get /root/.profile stolen\n");
    assert!(!o.status.success(), "sftp get from /root: {}", text(&o));
    assert!(!batch_dir.join("stolen").exists());
    let o = sftp_batch(&g, job, &batch_dir, "put local.txt /root/planted\n");
    assert_denied(&o, "sftp put into /root");
    let o = sftp_batch(&g, job, &batch_dir, "ls /root\n");
    assert_denied(&o, "sftp ls /root");
    let o = sftp_batch(&g, job, &batch_dir, "mkdir /etc/planted\n");
    assert_denied(&o, "sftp mkdir in /etc");

    eprintln!("[sftp] large file");
    // A large file, byte for byte, both ways.
    let big = local.join("big.bin");
    write_noise(&big, 64 << 20);
    let digest = sha256(&big);
    let t = Instant::now();
    assert_ok(
        &scp(&g, &[big.to_str().expect("utf-8"), &remote("big.bin")]),
        "scp big up",
    );
    let up_secs = t.elapsed().as_secs_f64();
    assert_eq!(sh("sha256sum < ~/big.bin | cut -d' ' -f1").trim(), digest);
    let big_back = local.join("big.back");
    let t = Instant::now();
    assert_ok(
        &scp(&g, &[&remote("big.bin"), big_back.to_str().expect("utf-8")]),
        "scp big down",
    );
    let down_secs = t.elapsed().as_secs_f64();
    assert_eq!(sha256(&big_back), digest);
    // The same bytes through the gateway's plain channel (`ssh cat`), for a ratio in one run.
    let t = Instant::now();
    let o = g
        .ssh(&g.key, job)
        .arg("cat > ~/big.channel")
        .stdin(std::fs::File::open(&big).expect("open"))
        .output()
        .expect("ssh cat up");
    assert_ok(&o, "ssh cat up");
    let channel_up = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let o = g
        .ssh(&g.key, job)
        .arg("cat ~/big.channel")
        .stdout(std::fs::File::create(local.join("big.channel")).expect("create"))
        .output()
        .expect("ssh cat down");
    assert_ok(&o, "ssh cat down");
    let channel_down = t.elapsed().as_secs_f64();
    eprintln!(
        "[sftp] 64 MiB: scp (SFTP) up {up_secs:.2}s, down {down_secs:.2}s; ssh cat up {channel_up:.2}s, down {channel_down:.2}s; SFTP/channel throughput up {:.2}, down {:.2}",
        channel_up / up_secs,
        channel_down / down_secs
    );

    eprintln!("[sftp] rsync");
    // rsync over the gateway's exec (the image's own rsync on the far end), which starts in
    // the working directory as every `ssh JOB@host CMD` does.
    let ssh_cmd = format!("ssh -p {} {}", g.port, client_opts(&g).join(" "));
    let o = Command::new("rsync")
        .args(["-a", "-e", &ssh_cmd])
        .arg(format!("{}/", tree.display()))
        .arg(remote("rsynced/"))
        .stdin(Stdio::null())
        .output()
        .expect("rsync");
    assert_ok(&o, "rsync up");
    assert_eq!(
        sh("cd ~/project/rsynced && stat -c '%a %U %n' run.sh sub/secret && stat -c %Y sub/deeper/leaf"),
        "751 circleci run.sh\n600 circleci sub/secret\n1600000000\n"
    );
    sh("echo changed-in-the-job > ~/project/rsynced/sub/deeper/leaf");
    let rs_back = local.join("rsync-back");
    let o = Command::new("rsync")
        .args(["-a", "-e", &ssh_cmd])
        .arg(remote("rsynced/"))
        .arg(&rs_back)
        .stdin(Stdio::null())
        .output()
        .expect("rsync");
    assert_ok(&o, "rsync down");
    assert_eq!(
        std::fs::read_to_string(rs_back.join("sub/deeper/leaf")).expect("leaf"),
        "changed-in-the-job\n"
    );
}

#[test]
fn sftp_needs_no_shell_in_the_image() {
    ensure_images();
    // busybox only, and the step takes away /bin/sh: nothing is left to run a script with.
    let config = format!(
        "version: 2.1\njobs:\n  build:\n    docker:\n      - image: {}\n    steps:\n      - run: rm /bin/sh && echo steps-done\n",
        image("nobash")
    );
    let p = Project::new(&config);
    let g = start(&p, &["--ssh-wait", "120s", "--ssh-grace", "1s"]);
    let job = p.job_id.as_str();
    g.run
        .wait_for_output("steps-done", Duration::from_secs(120));
    let o = g.run_as(&g.key, job, "true");
    assert!(!o.status.success(), "a shell ran: {o:?}");

    let local = g.dir.path();
    let up = local.join("up.bin");
    write_noise(&up, 3 << 20);
    let remote = format!("{job}@127.0.0.1:/tmp/up.bin");
    assert_ok(&scp(&g, &[up.to_str().expect("utf-8"), &remote]), "scp up");
    let back = local.join("back.bin");
    assert_ok(
        &scp(&g, &[&remote, back.to_str().expect("utf-8")]),
        "scp down",
    );
    assert_eq!(sha256(&back), sha256(&up));
    let o = sftp_batch(&g, job, local, "cd /tmp\nls\nrm up.bin\nls\n");
    assert_ok(&o, "sftp -b");
    let listed = text(&o)
        .lines()
        .filter(|l| !l.starts_with("sftp>") && l.contains("up.bin"))
        .count();
    assert_eq!(listed, 1, "listed once, then removed:\n{}", text(&o));
}

#[test]
fn hostile_sftp_streams_end_their_own_session_and_nothing_else() {
    ensure_images();
    let p = Project::new(&base_config());
    let g = start(&p, &["--ssh-wait", "120s", "--ssh-grace", "1s"]);
    let job = p.job_id.as_str();
    let _holder = hold(&g, job);
    let init = [0u8, 0, 0, 5, 1, 0, 0, 0, 3];
    let mut huge = init.to_vec();
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 6, 0, 0, 0, 1]);
    let mut truncated = init.to_vec();
    // A STAT whose path claims 4 GiB, then a READ cut short, then the stream ends.
    truncated.extend_from_slice(&[0, 0, 0, 9, 17, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
    truncated.extend_from_slice(&[0, 0, 0, 40, 5, 0, 0]);
    let mut noise = Vec::new();
    let mut x: u32 = 0x1234_5678;
    for _ in 0..(256 << 10) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push((x >> 24) as u8);
    }
    for (what, stream) in [
        ("a 4 GiB packet", huge),
        ("malformed and truncated packets", truncated),
        ("random bytes", noise),
        ("nothing at all", Vec::new()),
    ] {
        let t = Instant::now();
        let o = raw_sftp(&g, job, &stream);
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{what}: took {:?}",
            t.elapsed()
        );
        eprintln!("[sftp] {what}: {:?}, stderr {:?}", o.status, err(&o));
        if what == "nothing at all" {
            assert_ok(&o, what);
        } else {
            assert!(!o.status.success(), "{what}: {o:?}");
        }
        if what == "malformed and truncated packets" {
            assert!(err(&o).contains("ended inside a packet"), "{}", err(&o));
            // The STAT was answered SSH_FX_BAD_MESSAGE before the cut READ ended the session.
            let bad = [101u8, 0, 0, 0, 1, 0, 0, 0, 5];
            assert!(
                o.stdout.windows(bad.len()).any(|w| w == bad),
                "{:?}",
                o.stdout
            );
        }
    }
    // The gateway, the job and SFTP itself are all still there.
    let up = g.dir.path().join("after.txt");
    std::fs::write(&up, "still serving\n").expect("write");
    assert_ok(
        &scp(
            &g,
            &[up.to_str().expect("utf-8"), &format!("{job}@127.0.0.1:")],
        ),
        "scp after the attacks",
    );
    assert_eq!(
        text(&g.run_as(&g.key, job, "cat ~/after.txt")),
        "still serving\n"
    );
    // Every session's server has ended (the pattern does not match the shell asking).
    let gone = harness::poll(Duration::from_secs(10), Duration::from_millis(200), || {
        let o = g.run_as(&g.key, job, "pgrep -c -f '__bosun-sft[p]' || true");
        (text(&o) == "0\n").then_some(())
    });
    assert!(gone.is_some(), "an SFTP server outlived its session");
}
