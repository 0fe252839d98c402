//! The `weft` program, built inside the test package so that `cargo test`
//! builds it for the end-to-end tests (a binary of another package is not).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weft::cli::main()
}
