//! Plugins compiled natively, standing in for their components: the
//! benchmark harness measures the WASM tax by running the same plugin code
//! (the SDK builds it as a native library, `weft_plugin::native`) through the
//! same [`Plugin`](crate::Plugin) calls, state and pipeline.
//!
//! The instance is handed the batch as the SDK's own types (a copy, as a
//! component gets one in its linear memory) and its `state` and `log` calls
//! reach the same [`PluginCtx`] a component's imports do. Natively there is
//! no sandbox and no CPU or memory limit: this is for measuring, never for
//! running untrusted code.

use weft_plugin::native as sdk;

use crate::{
    Role,
    bindings::{Batch, Event, Level, LogHost, Prop, StageOutput, StateHost},
    plugin::PluginCtx,
};

/// A plugin crate's `native_plugin` (what the SDK's export macros define).
pub type Build = fn() -> sdk::Instance;

/// The role of what `build` makes.
pub(crate) fn role(build: Build) -> Role {
    match build() {
        sdk::Instance::Metric(_) => Role::Metric,
        sdk::Instance::Stage(_) => Role::Stage,
    }
}

impl sdk::Host for PluginCtx {
    // A failed read is kept by the host functions and fails the call when
    // it returns (the native build cannot trap): it sees an absent value.
    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        StateHost::get(self, key.to_vec()).ok().flatten()
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        StateHost::set(self, key.to_vec(), value.to_vec());
    }

    fn delete(&mut self, key: &[u8]) {
        StateHost::delete(self, key.to_vec());
    }

    fn scan(&mut self, prefix: &[u8], after: Option<&[u8]>, limit: u32) -> Vec<sdk::Entry> {
        StateHost::scan(self, prefix.to_vec(), after.map(<[u8]>::to_vec), limit)
            .unwrap_or_default()
            .into_iter()
            .map(|e| sdk::Entry {
                key: e.key,
                value: e.value,
            })
            .collect()
    }

    fn log(&mut self, level: sdk::Level, message: &str) {
        let level = match level {
            sdk::Level::Trace => Level::Trace,
            sdk::Level::Debug => Level::Debug,
            sdk::Level::Info => Level::Info,
            sdk::Level::Warn => Level::Warn,
            sdk::Level::Error => Level::Error,
        };
        LogHost::log(self, level, message.to_owned());
    }
}

/// The batch as the SDK's types.
pub(crate) fn batch(b: &Batch) -> sdk::Batch {
    use weft_plugin::bindings::weft::plugin::types as t;
    sdk::Batch {
        text: b.text.clone(),
        ends: b.ends.clone(),
        events: b
            .events
            .iter()
            .map(|e| t::Event {
                id: e.id,
                time: e.time,
                user: e.user,
                name: e.name,
                session: e.session,
                path: e.path,
                device: e.device,
                browser: e.browser,
                os: e.os,
                props_start: e.props_start,
                props_len: e.props_len,
            })
            .collect(),
        props: b
            .props
            .iter()
            .map(|p| t::Prop {
                key: p.key,
                value: p.value,
            })
            .collect(),
    }
}

/// A stage's output as the host's types.
pub(crate) fn output(o: sdk::StageOutput) -> StageOutput {
    StageOutput {
        text: o.text,
        ends: o.ends,
        events: o
            .events
            .into_iter()
            .map(|e| Event {
                id: e.id,
                time: e.time,
                user: e.user,
                name: e.name,
                session: e.session,
                path: e.path,
                device: e.device,
                browser: e.browser,
                os: e.os,
                props_start: e.props_start,
                props_len: e.props_len,
            })
            .collect(),
        props: o
            .props
            .into_iter()
            .map(|p| Prop {
                key: p.key,
                value: p.value,
            })
            .collect(),
    }
}
