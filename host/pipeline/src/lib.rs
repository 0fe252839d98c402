//! weft-pipeline (being written).
