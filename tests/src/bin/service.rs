//! `whereabouts-service <ingest|presence|notifier> [flags]`: the services'
//! own command lines in one binary, for tests that run real processes. Each
//! runs on the same runtime flavour as its own binary.

// The same allocator as the services' own binaries.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        anyhow::bail!("usage: whereabouts-service <ingest|presence|notifier> [flags]");
    }
    let service = args.remove(1);
    let runtime = match service.as_str() {
        "ingest" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(async move {
        match service.as_str() {
            "ingest" => ingest::cli::main(args).await,
            "presence" => presence::cli::main(args).await,
            "notifier" => notifier::cli::main(args).await,
            other => anyhow::bail!("unknown service {other:?}"),
        }
    })
}
