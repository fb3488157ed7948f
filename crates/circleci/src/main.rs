//! Entry point of the static in-job command; everything else is in the library (`lib.rs`).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(bosun_circleci::main(&args));
}
