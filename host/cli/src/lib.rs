//! The `weft` program as a library: the command line, its config resolution
//! and the bundled plugins, shared with the end-to-end tests.

pub mod cli;
pub mod config;
pub mod plugin;
pub mod plugin_dir;
pub mod scaffold;

/// The bundled plugins, compiled by `build.rs` from `plugins/`.
pub mod bundled {
    include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

    /// The plugin bytes bundled under `name`.
    pub fn get(name: &str) -> Option<&'static [u8]> {
        BUNDLED.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }
}
