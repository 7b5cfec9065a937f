//! Kernels for per-source statistics, each with a reference in plain burn tensor ops.
//!
//! Only the references exist so far; the CubeCL kernels (segment_row_dot, segment_accumulate,
//! multi_dot, fused per-source cross-entropy) come with the kernels work and are tested
//! against these functions.

pub mod reference;
