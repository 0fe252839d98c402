//! Host bindings of the `weft:plugin` worlds. The `metric` world generates
//! the shared types and imports; the `stage` world reuses them, so one
//! [`Batch`] value can be passed to plugins of either role.

mod metric {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "weft:plugin/metric@0.2.0",
        // A state read that fails traps the call: it must never look like
        // an absent value.
        imports: {
            "weft:plugin/state.get": trappable,
            "weft:plugin/state.scan": trappable,
        },
    });
}

mod stage {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "weft:plugin/stage@0.2.0",
        with: {
            "weft:plugin/types": super::metric::weft::plugin::types,
            "weft:plugin/state": super::metric::weft::plugin::state,
            "weft:plugin/log": super::metric::weft::plugin::log,
        },
    });
}

pub use metric::weft::plugin::log::{Host as LogHost, Level};
pub use metric::weft::plugin::state::{Entry, Host as StateHost};
pub use metric::weft::plugin::types::{Batch, Event, Host as TypesHost, Prop, StageOutput};
pub use metric::{Metric as MetricWorld, MetricPre};
pub use stage::{Stage as StageWorld, StagePre};
