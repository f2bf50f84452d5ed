//! The `presence` binary: see `presence::cli`.

// glibc's malloc spent a third of presence's time under load; mimalloc
// does not contend across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    presence::cli::main(std::env::args()).await
}
