//! weft-http (being written).
