//! `agent`: the client CLI. All logic lives in `agent_registry::cli`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = agent_registry::cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent: cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    match rt.block_on(agent_registry::cli::run(cli, &mut out)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
