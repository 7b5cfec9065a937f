//! `StatKernels` for `CubeBackend`: the statistics and the fused cross-entropy run as the
//! CubeCL kernels.

use burn::tensor::{Int, Tensor};
use burn_cubecl::{element::BoolElement, CubeRuntime, FloatElement, IntElement};

use super::forward::{
    cross_entropy_rows, cross_entropy_rows_backward, segment_accumulate, segment_gather_row_dot,
    segment_row_dot,
};
use super::CubeBackend;
use crate::{ExecPolicy, FusedOps, KernelImpl, SourceStats};

impl<R, F, I, BT> SourceStats for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn segment_row_dot(
        u: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        seg: Tensor<Self, 1, Int>,
        w: Tensor<Self, 1>,
        k: usize,
    ) -> Tensor<Self, 1> {
        segment_row_dot(u, v, seg, w, k)
    }

    fn segment_gather_row_dot(
        table: Tensor<Self, 2>,
        rows: Tensor<Self, 1, Int>,
        v: Tensor<Self, 2>,
        seg: Tensor<Self, 1, Int>,
        w: Tensor<Self, 1>,
        k: usize,
    ) -> Tensor<Self, 1> {
        segment_gather_row_dot(table, rows, v, seg, w, k)
    }

    fn segment_accumulate(
        x: Tensor<Self, 2>,
        y: Tensor<Self, 2>,
        seg: Tensor<Self, 1, Int>,
        k: usize,
    ) -> Tensor<Self, 3> {
        segment_accumulate(x, y, seg, k)
    }
}

impl<R, F, I, BT> FusedOps for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn cross_entropy_per_token(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 1> {
        cross_entropy_rows(logits, targets).0
    }

    fn cross_entropy_rows(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>) {
        cross_entropy_rows(logits, targets)
    }

    fn cross_entropy_rows_backward(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        logsumexp: Tensor<Self, 1>,
        dloss: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        cross_entropy_rows_backward(logits, targets, logsumexp, dloss)
    }
}

impl<R, F, I, BT> ExecPolicy for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    const IMPL: KernelImpl = KernelImpl::CubeCl;
}
