//! The `notifier` binary: see `notifier::cli`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    notifier::cli::main(std::env::args()).await
}
