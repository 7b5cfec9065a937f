//! Kernels for per-source statistics, each with a reference in plain burn tensor ops.
//!
//! `reference` runs on every backend. `cube` (features `wgpu` / `cuda`) holds the CubeCL
//! kernels, `segment_row_dot`, `segment_sum`, `segment_accumulate`, `multi_dot` and the fused
//! `per_source_cross_entropy` (forward only), tested against the references on wgpu (lavapipe
//! in CI). mixtrain's single-pass statistics call the references on every backend until the
//! kernels are dispatched from it.

#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;
pub mod reference;
