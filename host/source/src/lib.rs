//! weft-source (being written).
