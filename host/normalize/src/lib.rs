//! weft-normalize (being written).
