//! `gateway`: Keel's single binary.
//!
//! ```text
//! gateway [--config FILE] [serve [--addr ADDR] [--only DOMAIN...]]   (serve is the default)
//! gateway [--config FILE] migrate
//! ```

use clap::{Args, Parser, Subcommand};
use gateway::{Domain, GatewayConfig, GatewayError};
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Apply the pending database migrations of every in-process domain, then exit.
    Migrate,
}

#[derive(Debug, Default, Args)]
struct ServeArgs {
    /// The address to listen on; overrides `http.addr` and `KEEL_HTTP__ADDR` (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    addr: Option<String>,
    /// Serve only these domains' routes (with the health routes); default: every domain.
    #[arg(long, value_name = "DOMAIN", num_args = 1.., value_delimiter = ',')]
    only: Vec<Domain>,
}

fn main() -> ExitCode {
    // Usage errors exit with 2, `--help` and `--version` with 0.
    let cli = Cli::parse();
    let mut config = match GatewayConfig::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return fail(&e.to_string()),
    };
    let telemetry = match shared::telemetry::init(&config.telemetry) {
        Ok(telemetry) => telemetry,
        Err(e) => return fail(&format!("cannot set up logging: {e}")),
    };
    let command = cli.command.unwrap_or_else(|| Command::Serve(ServeArgs::default()));
    if let Command::Serve(ServeArgs { addr: Some(addr), .. }) = &command {
        config.http.addr.clone_from(addr);
    }
    let result = actix_web::rt::System::new().block_on(run(command, config));
    if let Err(e) = telemetry.shutdown() {
        tracing::warn!(error = %e, "traces not flushed");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway failed");
            fail(&e.to_string())
        }
    }
}

async fn run(command: Command, config: GatewayConfig) -> Result<(), GatewayError> {
    match command {
        Command::Serve(args) => {
            let running = gateway::start(config, Some(args.only)).await?;
            running.wait().await?;
            tracing::info!("gateway stopped");
            Ok(())
        }
        Command::Migrate => {
            for (domain, applied) in gateway::compose::migrate(&config).await? {
                tracing::info!(domain = %domain, migrations.applied = applied, "migrations applied");
            }
            Ok(())
        }
    }
}

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
        assert_eq!(args.only, vec![Domain::Auth]);

        assert!(matches!(Cli::try_parse_from(["gateway", "migrate"]).unwrap().command, Some(Command::Migrate)));
    }

    #[test]
    fn an_unknown_domain_is_a_usage_error_with_exit_code_2() {
        let err = Cli::try_parse_from(["gateway", "serve", "--only", "billing"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("auth"), "the error lists the known domains: {err}");
    }
}
