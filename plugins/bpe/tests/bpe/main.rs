//! Tests of outpost-bpe through its public API, one module per area.
// Tests panic on what they did not expect; that is their report.
#![allow(clippy::unwrap_used)]

mod common;
mod decoder;
mod load;
mod smollm2;
