//! End-to-end tests of weft.
