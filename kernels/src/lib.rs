//! Kernels for per-source statistics, each with a reference in plain burn tensor ops.
//!
//! - `roles`: what a backend provides, by role (`SourceStats`, `FusedOps`, `ExecPolicy`;
//!   `StatKernels` is all three), with the references as defaults.
//! - `reference`: plain tensor ops on every backend; they define what the others compute.
//! - `cube` (features `wgpu` / `cuda`): the CubeCL kernels — `segment_row_dot` and its gather
//!   form, `segment_accumulate` (per-source weight gradients), the fused cross-entropy
//!   (forward and backward); `segment_sum`, `multi_dot` and the fused per-source cross-entropy
//!   are measured by `benches/kernels.rs` only.
//! - `cpu`: the CPU fast path for ndarray (host loops, matrix products, concurrent passes).
//! - `autodiff`: the roles for `Autodiff<B>`, each fused op one tracked op over `B`'s.

mod autodiff;
pub mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;
pub mod reference;
mod roles;

pub use roles::{ExecPolicy, FusedOps, KernelImpl, SourceStats, StatKernels};
