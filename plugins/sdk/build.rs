//! Writes the `__generate!` macro that plugin crates expand: it runs
//! `wit_bindgen::generate!` for one role's world inside the plugin crate (so a
//! component carries exactly one world), pointing at the WIT shipped with this
//! crate and reusing the SDK's import bindings and types.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let wit = manifest
        .join("wit")
        .canonicalize()
        .expect("plugins/sdk/wit links to the WIT package");
    println!("cargo:rerun-if-changed={}", wit.display());
    let wit = wit.display().to_string().replace('\\', "/");
    let arm = |world: &str| {
        format!(
            r#"({world}) => {{
        $crate::__wit_bindgen::generate!({{
            path: "{wit}",
            world: "weft:plugin/{world}@0.2.0",
            runtime_path: "weft_plugin::__wit_bindgen::rt",
            with: {{
                "weft:plugin/types@0.2.0": weft_plugin::bindings::weft::plugin::types,
                "weft:plugin/state@0.2.0": weft_plugin::bindings::weft::plugin::state,
                "weft:plugin/log@0.2.0": weft_plugin::bindings::weft::plugin::log,
            }},
        }});
    }};"#
        )
    };
    let source = format!(
        "#[doc(hidden)]\n#[macro_export]\nmacro_rules! __generate {{\n    {}\n    {}\n}}\n",
        arm("metric"),
        arm("stage")
    );
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("generate.rs");
    fs::write(out, source).expect("write generate.rs");
}
