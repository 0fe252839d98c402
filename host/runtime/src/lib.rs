//! weft-runtime (being written).
