//! `weft`: clickstream analytics through WebAssembly component plugins.

fn main() -> anyhow::Result<()> {
    weft::cli::main()
}
