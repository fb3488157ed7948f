//! Command-line surface. Thin: parse, call the library's front doors, print, exit.

use bosun::execute::{self, ExecuteArgs};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

use bosun::execute::EXIT_SETUP;

#[derive(Parser)]
#[command(
    name = "bosun",
    version,
    about = "Runs .circleci/config.yml jobs in clean Docker containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one job of .circleci/config.yml in a fresh container.
    ///
    /// Exit codes: 0 the job succeeded; 1 a step failed or timed out; 2 the job could not run
    /// (bad config, Docker engine unreachable, checkout refused, image missing);
    /// 130 canceled (Ctrl-C / SIGTERM).
    #[command(
        after_help = "Exit codes:\n  0    the job succeeded\n  1    a step failed or timed out\n  2    the job could not run: bad config, engine unreachable, checkout refused, image missing\n  130  canceled by SIGINT/SIGTERM (the container is removed first)"
    )]
    Execute(Box<ExecuteArgs>),
    /// Run the long-lived agent: register with a coordinator, claim jobs, run them, stream
    /// their logs back. First SIGTERM drains, second cancels the running jobs; SIGHUP reloads.
    Agent(bosun::agent::AgentArgs),
    /// Fetch a repository (with submodules) as a job's checkout would, into DEST.
    Checkout(Box<execute::CheckoutArgs>),
    /// Compile .circleci/config.yml offline: `process` prints it expanded, `validate` checks it.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Orb tools: `pack` an orb's source tree into one file, as `circleci orb pack` does.
    #[command(subcommand)]
    Orb(OrbCommand),
    /// Print the SSH host keys a server presents, as known_hosts lines with SHA256 fingerprints.
    Keyscan {
        /// HOST or HOST:PORT (port 22 by default).
        target: String,
        /// Name to write in the lines, for port 22 (default: HOST and its port); e.g. the real
        /// name when scanning a mapped address.
        #[arg(long)]
        name: Option<String>,
        /// Seconds to wait for each handshake.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// The repository mirror cache: `ls` lists the mirrors, `prune` removes the least
    /// recently used beyond the budget (or all with --all). For an agent's cache, run as its
    /// user with --cache-dir /var/cache/bosun.
    Cache {
        #[command(flatten)]
        cache: execute::CacheArgs,
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// The reference coordinator: queue jobs, lease them to agents, keep their logs.
    #[cfg(feature = "coordinator")]
    #[command(subcommand)]
    Coordinator(Box<bosun::coordinator::Command>),
    /// The reference coordinator: not built into this binary (an agent-only build).
    #[cfg(not(feature = "coordinator"))]
    #[command(disable_help_flag = true)]
    Coordinator {
        /// Whatever was asked of it; refused as a whole.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Each mirror: size, last use, repository (least recently used first).
    Ls,
    /// Remove least recently used mirrors until the cache fits its budget; mirrors in use
    /// are left alone.
    Prune {
        /// Remove every mirror not in use.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the compiled config (parameters substituted, commands and executors inlined,
    /// matrices expanded, anchors resolved) as YAML. Exit 2 with every error found.
    Process(ConfigArgs),
    /// Exit 0 if the config compiles; otherwise print every error found and exit 2.
    Validate(ConfigArgs),
}

#[derive(Subcommand)]
enum OrbCommand {
    /// Print the packed orb made from SRC_DIR (the directory holding `@orb.yml`, usually an
    /// orb repository's `src/`): `bosun orb pack src > orb.yml`. Vendor the result as
    /// `ORB_DIR/<namespace>/<name>@<version>.yml` for `--orb-dir ORB_DIR`.
    Pack {
        /// The orb's source directory.
        src_dir: std::path::PathBuf,
    },
}

fn orb_command(cmd: OrbCommand) -> ExitCode {
    match cmd {
        OrbCommand::Pack { src_dir } => match bosun::config::orb_pack::pack(&src_dir) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_SETUP)
            }
        },
    }
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// The config file.
    #[arg(default_value = ".circleci/config.yml")]
    file: std::path::PathBuf,
    #[command(flatten)]
    compile: bosun::execute::CompileArgs,
}

fn config_command(cmd: ConfigCommand) -> ExitCode {
    let (args, process) = match cmd {
        ConfigCommand::Process(a) => (a, true),
        ConfigCommand::Validate(a) => (a, false),
    };
    let name = args.file.display().to_string();
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {name}: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let pipeline = match args.compile.pipeline() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let loader = args.compile.loader();
    let opts = args.compile.options(pipeline, loader.as_ref());
    match bosun::config::compile(&text, &name, &opts) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            if !process {
                // `process` says this in its output's header comments.
                for o in &c.orbs {
                    eprintln!(
                        "note: orb '{}' resolved to '{}' ({})",
                        o.reference, o.resolved, o.file
                    );
                }
            }
            if c.setup {
                eprintln!("note: {name} is a setup config (setup: true): its jobs generate the real config and continue the pipeline; compile that continuation config separately");
            }
            if process {
                print!("{}", c.to_yaml());
            } else {
                println!("Config file at \"{name}\" is valid.");
            }
            ExitCode::SUCCESS
        }
        Err(errs) => {
            for e in &errs {
                eprintln!("{e}");
            }
            eprintln!(
                "error: Config file \"{name}\" contains {} error(s).",
                errs.len()
            );
            ExitCode::from(EXIT_SETUP)
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Agent(args) = cli.command {
        // The agent sets up its own logging (journald, JSON).
        return ExitCode::from(bosun::agent::main(args));
    }
    init_tracing();
    match cli.command {
        Command::Agent(_) => unreachable!("handled above"),
        Command::Execute(args) => ExitCode::from(execute::run(*args)),
        Command::Checkout(args) => ExitCode::from(execute::checkout(*args)),
        Command::Config(cmd) => config_command(cmd),
        Command::Orb(cmd) => orb_command(cmd),
        #[cfg(feature = "coordinator")]
        Command::Coordinator(cmd) => ExitCode::from(bosun::coordinator::run(*cmd)),
        #[cfg(not(feature = "coordinator"))]
        Command::Coordinator { .. } => {
            eprintln!(
                "error: `bosun coordinator` is not built into this binary (it was built without \
                 the `coordinator` feature); use a bosun built with the default features"
            );
            ExitCode::from(EXIT_SETUP)
        }
        Command::Cache { cache, command } => cache_command(&cache, command),
        Command::Keyscan {
            target,
            name,
            timeout,
        } => match keyscan(&target, name.as_deref(), timeout) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(EXIT_SETUP)
            }
        },
    }
}

fn cache_command(args: &execute::CacheArgs, command: CacheCommand) -> ExitCode {
    let Some(mirrors) = execute::CacheArgs {
        no_mirror: false,
        ..args.clone()
    }
    .mirrors() else {
        eprintln!("error: no cache directory: pass --cache-dir or set BOSUN_CACHE_DIR");
        return ExitCode::from(EXIT_SETUP);
    };
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let result = match command {
        CacheCommand::Ls => mirrors.list().map(|list| {
            let total: u64 = list.iter().map(|m| m.bytes).sum();
            println!("{:>10}  {:<20}  REPOSITORY", "MIB", "LAST USED (UTC)");
            for m in &list {
                println!(
                    "{:>10.1}  {:<20}  {}",
                    mib(m.bytes),
                    bosun::time::iso_utc(
                        m.last_used
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_millis() as i64)
                            .unwrap_or(0)
                    ),
                    m.url
                );
            }
            println!(
                "{} mirror(s), {:.1} MiB of a {:.0} MiB budget in {}",
                list.len(),
                mib(total),
                mib(mirrors.budget()),
                mirrors.root().display()
            );
        }),
        CacheCommand::Prune { all } => mirrors
            .shrink_to(if all { 0 } else { mirrors.budget() })
            .map(|removed| {
                for m in &removed {
                    println!("removed {:.1} MiB  {}", mib(m.bytes), m.url);
                }
                println!("{} mirror(s) removed", removed.len());
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BOSUN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn keyscan(target: &str, name: Option<&str>, timeout: u64) -> anyhow::Result<String> {
    let (host, port) = match target.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .map_err(|_| anyhow::anyhow!("`{target}`: the port must be a number"))?,
        ),
        _ => (target, 22),
    };
    // With --name the lines are for the real host (the scan went to a mapped address).
    let line_port = if name.is_some() { 22 } else { port };
    let name = name.unwrap_or(host);
    let keys = bosun::ssh::keyscan(host, port, name, std::time::Duration::from_secs(timeout))?;
    if keys.is_empty() {
        anyhow::bail!("{host}:{port} presented no host key");
    }
    let mut out = String::new();
    for k in keys {
        out.push_str(&format!(
            "# {} {}\n{}\n",
            k.key_type,
            k.fingerprint,
            k.known_hosts_line(name, line_port)
        ));
    }
    Ok(out)
}
