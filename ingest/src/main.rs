//! The `ingest` binary: see `ingest::cli`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ingest::cli::main(std::env::args()).await
}
