//! The `presence` binary: see `presence::cli`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    presence::cli::main(std::env::args()).await
}
