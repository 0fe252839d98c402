//! `weft`: clickstream analytics through WebAssembly component plugins.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weft::cli::main()
}
