//! Kernels for per-source statistics, each with a reference in plain burn tensor ops.
//!
//! `reference` runs on every backend and defines what the kernels compute. `cube` (features
//! `wgpu` / `cuda`) holds the CubeCL kernels: `segment_row_dot` and its gather form,
//! `segment_sum`, `segment_accumulate`, `multi_dot` and the fused per-source cross-entropy
//! (forward and backward). `host` holds fused row loops (cross-entropy, causal softmax) for the
//! CPU. `StatKernels` picks between them by backend type, so mixtrain's training path runs the
//! kernels on CubeCL backends, the host loops on ndarray and the references elsewhere.

mod backward;
pub mod concurrent;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;
pub mod host;
mod ndarray_backend;
pub mod reference;
mod stat_kernels;

pub use stat_kernels::{KernelImpl, StatKernels};
