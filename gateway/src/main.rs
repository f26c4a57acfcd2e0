//! `gateway`: Keel's single binary.
//!
//! ```text
//! gateway [--config FILE] [serve [--addr ADDR] [--only DOMAIN...]]   (serve is the default)
//! gateway [--config FILE] migrate
//! gateway [--config FILE] admin grant-admin EMAIL | revoke-admin EMAIL
//! ```

use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};
use gateway::{DOMAIN_NAMES, GatewayConfig, GatewayError};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: faster per allocation on the request path, and it
/// returns freed memory to the system more readily.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "gateway", version, about = "Keel: an open-source backend for AI products")]
struct Cli {
    /// A TOML config file; `KEEL_*` environment variables override it (`KEEL_HTTP__ADDR`).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API until SIGTERM or SIGINT (the default command).
    Serve(ServeArgs),
    /// Run the background workers of every in-process domain (no API routes), until SIGTERM.
    Worker(WorkerArgs),
    /// Apply the pending database migrations of every in-process domain, then exit.
    Migrate,
    /// Inspect and retry background jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Operator commands, run where the domain's database is.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Debug, Default, Args)]
struct WorkerArgs {
    /// The address of its health, readiness and metrics routes; overrides `http.addr`.
    #[arg(long, value_name = "ADDR")]
    addr: Option<String>,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Queue depth per domain, queue and state, and the oldest ready job's age.
    Stats,
    /// Jobs waiting for a retry (`failed`), failed for good (`discarded`) or cancelled.
    List {
        #[arg(long, value_parser = PossibleValuesParser::new(DOMAIN_NAMES))]
        domain: String,
        #[arg(long, value_parser = ["failed", "discarded", "cancelled"], default_value = "discarded")]
        state: String,
        /// The `next_after` of the previous page.
        #[arg(long)]
        after: Option<String>,
    },
    /// Put a discarded or cancelled job back in its queue.
    Retry {
        #[arg(long, value_parser = PossibleValuesParser::new(DOMAIN_NAMES))]
        domain: String,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Make an existing account a platform administrator (e.g. to grant billing credit).
    GrantAdmin { email: String },
    /// Take platform administration away from an account.
    RevokeAdmin { email: String },
}

#[derive(Debug, Default, Args)]
struct ServeArgs {
    /// The address to listen on; overrides `http.addr` and `KEEL_HTTP__ADDR` (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    addr: Option<String>,
    /// Serve only these domains' routes (with the health routes); default: every domain.
    #[arg(long, value_name = "DOMAIN", num_args = 1.., value_delimiter = ',', value_parser = PossibleValuesParser::new(DOMAIN_NAMES))]
    only: Vec<String>,
}

fn main() -> ExitCode {
    // Usage errors exit with 2, `--help` and `--version` with 0.
    let cli = Cli::parse();
    if matches!(cli.command, None | Some(Command::Serve(_) | Command::Worker(_))) {
        purge_at_once();
    }
    let mut config = match GatewayConfig::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return fail(&e.to_string()),
    };
    let telemetry = match shared::telemetry::init(&config.telemetry) {
        Ok(telemetry) => telemetry,
        Err(e) => return fail(&format!("cannot set up logging: {e}")),
    };
    huge_pages(config.http.transparent_huge_pages);
    let command = cli.command.unwrap_or_else(|| Command::Serve(ServeArgs::default()));
    if let Command::Serve(ServeArgs { addr: Some(addr), .. }) | Command::Worker(WorkerArgs { addr: Some(addr) }) =
        &command
    {
        config.http.addr.clone_from(addr);
    }
    let result = actix_web::rt::System::new().block_on(run(command, config));
    if let Err(e) = telemetry.shutdown() {
        tracing::warn!(error = %e, "traces not flushed");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logging is set up by now: one line, in the configured format, says why.
            tracing::error!(error = %e, "gateway failed");
            ExitCode::FAILURE
        }
    }
}

/// The variable that sets how long mimalloc keeps freed pages before it gives them back.
const PURGE_DELAY: &str = "MIMALLOC_PURGE_DELAY";

/// Makes mimalloc give freed pages back to the system at once, unless `MIMALLOC_PURGE_DELAY` is
/// set already (an operator's value wins).
///
/// By default mimalloc keeps them for a second, so under steady load a second's churn of request
/// buffers stays resident: chat at c=64 held 57–61 MiB, against 53–57 MiB without the delay, for
/// about 5% of the peak throughput and none at c=10 (bench/inference-results.md). mimalloc reads
/// the option from the environment when it starts, before `main`, and has no safe call to change
/// it; so the process replaces itself once (`exec`: same pid, arguments and environment, plus
/// the variable) before it has done anything else. Should that fail, it carries on as it is.
fn purge_at_once() {
    #[cfg(unix)]
    if std::env::var_os(PURGE_DELAY).is_none() {
        use std::os::unix::process::CommandExt;
        let Ok(exe) = std::env::current_exe() else { return };
        let mut args = std::env::args_os();
        let name = args.next().unwrap_or_else(|| exe.clone().into_os_string());
        let error = std::process::Command::new(&exe).arg0(name).args(args).env(PURGE_DELAY, "0").exec();
        eprintln!("gateway: could not restart with {PURGE_DELAY}=0 ({error}); freed memory is kept for a second");
    }
}

/// Unless allowed, asks the kernel to back no page of this process with a transparent huge page.
/// mimalloc advises huge pages on its arenas, so each 2 MiB region the heap touches at all
/// becomes resident whole: 74 MiB of RSS against 54 MiB without, at the same throughput
/// (bench/inference-results.md). Set before the server allocates anything of size; pages
/// faulted in from here on follow it.
fn huge_pages(allow: bool) {
    #[cfg(target_os = "linux")]
    if !allow && let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %e, "transparent huge pages could not be turned off");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = allow;
}

async fn run(command: Command, config: GatewayConfig) -> Result<(), GatewayError> {
    match command {
        Command::Serve(args) => {
            let running = gateway::start(config, Some(args.only)).await?;
            running.wait().await?;
            tracing::info!("gateway stopped");
            Ok(())
        }
        Command::Worker(_) => {
            let running = gateway::start_worker(config).await?;
            running.wait().await?;
            tracing::info!("worker stopped");
            Ok(())
        }
        Command::Jobs(command) => jobs_command(command, &config).await,
        Command::Admin(command) => {
            let (email, admin) = match command {
                AdminCommand::GrantAdmin { email } => (email, true),
                AdminCommand::RevokeAdmin { email } => (email, false),
            };
            let user = gateway::compose::set_platform_admin(&config, &email, admin).await?;
            tracing::info!(user.id = %user.id, platform_admin = admin, "done");
            Ok(())
        }
        Command::Migrate => {
            for (domain, applied) in gateway::compose::migrate_all(&config).await? {
                tracing::info!(domain, migrations.applied = applied, "migrations applied");
            }
            Ok(())
        }
    }
}

/// `gateway jobs …`: prints JSON on stdout.
async fn jobs_command(command: JobsCommand, config: &GatewayConfig) -> Result<(), GatewayError> {
    use gateway::jobs;
    let value = match command {
        JobsCommand::Stats => jobs::stats(jobs::all(config).await?).await?,
        JobsCommand::List { domain, state, after } => {
            let state = match state.as_str() {
                "failed" => shared::jobs::ListState::Failed,
                "cancelled" => shared::jobs::ListState::Cancelled,
                _ => shared::jobs::ListState::Discarded,
            };
            jobs::list(&jobs::domain(config, &domain).await?, state, after).await?
        }
        JobsCommand::Retry { domain, id } => {
            let id = id.parse().map_err(|_| GatewayError::Jobs(format!("{id:?} is not a job id")))?;
            jobs::retry(&jobs::domain(config, &domain).await?, id).await?
        }
    };
    #[allow(clippy::print_stdout)]
    {
        println!("{value:#}");
    }
    Ok(())
}

/// A failure before logging is set up: one line on stderr.
fn fail(message: &str) -> ExitCode {
    eprintln!("gateway: {message}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_is_the_default_and_takes_addr_and_only() {
        let cli = Cli::try_parse_from(["gateway"]).unwrap();
        assert!(cli.command.is_none());

        let cli =
            Cli::try_parse_from(["gateway", "--config", "k.toml", "serve", "--addr", "0.0.0.0:9", "--only", "auth"])
                .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("k.toml")));
        let Some(Command::Serve(args)) = cli.command else { panic!("expected serve") };
        assert_eq!(args.addr.as_deref(), Some("0.0.0.0:9"));
        assert_eq!(args.only, vec!["auth".to_owned()]);

        assert!(matches!(Cli::try_parse_from(["gateway", "migrate"]).unwrap().command, Some(Command::Migrate)));
    }

    #[test]
    fn an_unknown_domain_is_a_usage_error_with_exit_code_2() {
        let err = Cli::try_parse_from(["gateway", "serve", "--only", "payroll"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("auth"), "the error lists the known domains: {err}");
    }
}
