//! `whereabouts`: the admin CLI (see the crate doc of `admin`).

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = admin::Cli::parse();
    match admin::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("whereabouts: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
