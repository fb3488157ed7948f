//! Entry point of the static in-job command; everything else is in `mod.rs`.

#[path = "mod.rs"]
#[allow(dead_code)]
mod cmd;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(cmd::main(&args));
}
