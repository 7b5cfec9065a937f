//! The CPU fast path (ndarray): fused row loops over host memory (`host`), matrix products
//! over strided views (`matmul`), the `StatKernels` roles for `NdArray` (`ndarray`), and
//! independent passes side by side on the cores (`concurrent`). Measurements: README.md here.

pub mod concurrent;
pub mod host;
mod matmul;
mod ndarray;

#[cfg(test)]
mod tests;
