//! Kernels for per-source statistics, each with a reference in plain burn tensor ops.
//!
//! `reference` runs on every backend. `cube` (features `wgpu` / `cuda`) holds the CubeCL
//! kernels written so far, `segment_row_dot`, `segment_sum`, `segment_accumulate` and
//! `multi_dot`, tested against the references on wgpu (lavapipe in CI). Not written yet: the
//! fused per-source cross-entropy; mixtrain's single-pass statistics call the reference on
//! every backend until the kernels are dispatched from it.

#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;
pub mod reference;
