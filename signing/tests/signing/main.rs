//! Tests of the trust layer through its public API, one module per area.
// Tests panic on what they did not expect; that is their report.
#![allow(clippy::unwrap_used)]

mod archive;
mod attestation;
mod common;
mod durable;
mod fuzz_seeds;
mod roots;
mod versions;
