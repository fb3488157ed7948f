//! Builds the in-job `circleci` command (the workspace member `crates/circleci`, std only) as
//! a static executable for the agent to put into every job container: static glibc
//! (`crt-static`), so it runs on glibc, musl and busybox-only images alike. Its own cargo
//! invocation, with the workspace's `circleci` profile and a target directory under OUT_DIR;
//! offline and locked (it has no dependencies, and the workspace's Cargo.lock holds it).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let circleci = manifest_dir.join("../circleci");
    println!("cargo:rerun-if-changed={}", circleci.display());
    // The workspace manifest holds the `circleci` profile.
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../../Cargo.toml").display()
    );
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let target_dir = out.join("cmd-target");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--profile",
        "circleci",
        "--offline",
        "--locked",
        "--quiet",
    ])
    .args(["--package", "bosun-circleci", "--bin", "circleci"])
    .arg("--manifest-path")
    .arg(circleci.join("Cargo.toml"))
    .args(["--target", &target])
    .arg("--target-dir")
    .arg(&target_dir);
    // Nothing of the outer build leaks in (its flags, wrappers, target directory).
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_") && k != "CARGO_HOME"
            || k.starts_with("RUSTC_")
            || k == "RUSTFLAGS"
            || k == "RUSTDOCFLAGS"
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");
    let status = cmd.status().expect("running cargo for the in-job command");
    assert!(
        status.success(),
        "building the in-job command (crates/circleci) failed"
    );
    let built = target_dir.join(&target).join("circleci").join("circleci");
    std::fs::copy(&built, out.join("circleci")).expect("copying the in-job command");
}
