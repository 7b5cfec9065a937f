//! CubeCL kernels (wgpu, cuda) for per-source statistics, each checked against its
//! plain-tensor reference in `reference.rs`.
//!
//! - `segment_row_dot` (the gather form with the identity index, and the gather form itself
//!   for embeddings) runs in two launches: one cube per token row computes w_t ⟨U_t, V_t⟩ with coalesced reads and a shared-memory tree
//!   reduction (an [N] buffer), then one cube per source sums its tokens' values the same way.
//!   No atomics (wgpu has no portable float atomics).
//! - `segment_accumulate` (per-source weight gradients, for TiKMiX-M's probed G_k) is tiled:
//!   TILE × TILE outputs per cube, tokens staged in shared memory TILE at a time. Embedding
//!   tables take burn's scatter-add on the device (`reference::segment_scatter_rows`).
//! - `multi_dot` makes one pass over the [k, p] buffer (k + k² partial sums per unit, then a
//!   small sum over the units).
//! - the fused cross-entropy: one cube per row for the forward (max and Σ exp by tree
//!   reductions, softmax never stored; logsumexp kept), one unit per element for the backward.
//!
//! Not vectorised (no `Line` loads): reads are coalesced across units instead. Grids larger
//! than the hardware's per-axis limit (65535 on wgpu) are spread over the axes. Correct for
//! any N, D, K, including K = 1, sources with no token and sizes not a multiple of a tile.
//!
//! Layout (burn's examples/custom-cubecl-kernel): `kernel` holds the device code, `forward`
//! the launchers of the kernels on the training path, `backend` the `StatKernels` impl for
//! `CubeBackend` (autodiff is generic over backends, in `crate::backward`), `bench_only` the
//! kernels that `benches/kernels.rs` measures but no mixer uses yet, and `tests` checks each
//! against its reference on wgpu or cuda.

use burn::tensor::{Shape, Tensor, TensorPrimitive};
use burn_cubecl::tensor::CubeTensor;
pub use burn_cubecl::CubeBackend;
use burn_cubecl::{element::BoolElement, CubeRuntime, FloatElement, IntElement};
/// The CUDA runtime (burn's `cuda` module keeps it private).
#[cfg(feature = "cuda")]
pub use cubecl::cuda::CudaRuntime;
use cubecl::prelude::ComputeClient;
use cubecl::server::CubeCountSelection;
use cubecl::CubeCount;

mod backend;
pub mod bench_only;
mod forward;
mod kernel;
#[cfg(test)]
mod tests;

pub use bench_only::{multi_dot, per_source_cross_entropy, segment_sum};
pub use forward::{
    cross_entropy_rows, cross_entropy_rows_backward, segment_accumulate, segment_gather_row_dot,
    segment_row_dot,
};

/// Units per cube of the segment reduction (a power of two).
pub(crate) const REDUCE_UNITS: u32 = 256;
/// Units per cube of the elementwise kernels (one unit per element).
pub(crate) const ROW_UNITS: u32 = 256;
/// Units per cube of the row-dot kernels (one cube per token row; rows are d_model or
/// d_ff long, so 64 units read each row in one to a few coalesced sweeps).
pub(crate) const ROW_DOT_UNITS: u32 = 64;
/// Side of segment_accumulate's output tiles (TILE × TILE units per cube).
pub(crate) const TILE: u32 = 16;

pub(crate) fn empty<R: CubeRuntime, F: FloatElement>(
    like: &CubeTensor<R>,
    len: usize,
) -> CubeTensor<R> {
    let buffer = like.client.empty(len * core::mem::size_of::<F>());
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::new([len]),
        buffer,
        F::dtype(),
    )
}

/// Enough cubes of `per_cube` units for `n` units, spread over the grid's axes within the
/// hardware's limits (wgpu allows 65535 per axis); kernels index by the axis-free
/// ABSOLUTE_POS / CUBE_POS and skip the spare ones.
pub(crate) fn cubes<R: CubeRuntime>(
    client: &ComputeClient<R>,
    n: usize,
    per_cube: u32,
) -> CubeCount {
    CubeCountSelection::new(client, (n.max(1) as u32).div_ceil(per_cube)).cube_count()
}

/// A kernel's output buffer as a burn tensor.
pub(crate) fn float<R, F, I, BT, const D: usize>(
    out: CubeTensor<R>,
) -> Tensor<CubeBackend<R, F, I, BT>, D>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
