//! `weft`: clickstream analytics through WebAssembly component plugins.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    weft::cli::main()
}
