//! weft-state (being written).
