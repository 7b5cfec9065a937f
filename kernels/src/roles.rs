//! What a backend provides, split by role: `SourceStats` (the per-source statistics),
//! `FusedOps` (the model's fused ops) and `ExecPolicy` (how passes are scheduled);
//! `StatKernels` is the three together, the bound mixtrain's training path uses.
//!
//! Every method has a default in plain tensor ops (the references in `reference.rs`); flex
//! takes the defaults, ndarray overrides the fused ops with host loops (`cpu/`), CubeCL
//! backends (`CubeBackend` over wgpu or cuda, `cube/`) the statistics and the cross-entropy
//! with kernels. `Autodiff<B>` forwards to `B` (`autodiff/`): each fused op is a tracked op
//! whose forward and backward are `B`'s.
//!
//! A backend wrapped in burn's `Fusion` (burn's default `Wgpu` / `Cuda` types) does not
//! implement these traits; mixtrain runs `CubeBackend` directly so the kernels are reachable.

use burn::prelude::*;

use crate::cpu::host::AdamWStep;
use crate::reference;

/// Which implementation a backend's statistics run on (logged with every run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelImpl {
    /// Plain burn tensor ops (`reference.rs`).
    Reference,
    /// Fused loops over host memory (`host.rs`), for the CPU backends.
    Host,
    /// The CubeCL kernels (`cube.rs`).
    CubeCl,
}

impl KernelImpl {
    pub fn name(self) -> &'static str {
        match self {
            KernelImpl::Reference => "reference",
            KernelImpl::Host => "host",
            KernelImpl::CubeCl => "cubecl",
        }
    }
}

/// The per-source statistics of the mixers' gradient probes: segmented inner products (one
/// value per source) and the plain and preconditioned products behind ⟨g_val, g_k⟩.
pub trait SourceStats: Backend {
    /// out[k] = Σ_{t: seg_t = k} w_t ⟨U_t, V_t⟩ for u, v [n, d], seg [n], w [n] → [k].
    fn segment_row_dot(
        u: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        seg: Tensor<Self, 1, Int>,
        w: Tensor<Self, 1>,
        k: usize,
    ) -> Tensor<Self, 1> {
        reference::segment_row_dot(u, v, seg, w, k)
    }

    /// The gather form for embeddings: out[k] = Σ_{t: seg_t = k} w_t ⟨table[rows_t], V_t⟩ for
    /// table [vocab, d], rows [n], v [n, d] → [k], without the [n, d] gathered copy in the kernel.
    fn segment_gather_row_dot(
        table: Tensor<Self, 2>,
        rows: Tensor<Self, 1, Int>,
        v: Tensor<Self, 2>,
        seg: Tensor<Self, 1, Int>,
        w: Tensor<Self, 1>,
        k: usize,
    ) -> Tensor<Self, 1> {
        reference::segment_gather_row_dot(table, rows, v, seg, w, k)
    }

    /// G[k] = Σ_{t: seg_t = k} x_t ⊗ y_t for x [n, p], y [n, q], seg [n] → [k, p, q]: the
    /// per-source weight gradients of a linear layer from its input x and output gradient y
    /// (the step's traced backward). A statistic read after backward, not a differentiable op.
    /// Default: one product per run of equal `seg` (`reference::segment_accumulate_runs`).
    fn segment_accumulate(
        x: Tensor<Self, 2>,
        y: Tensor<Self, 2>,
        seg: Tensor<Self, 1, Int>,
        k: usize,
    ) -> Tensor<Self, 3> {
        reference::segment_accumulate_runs(x, y, seg, k)
    }

    /// The scatter form for embeddings: out[k, rows_t] += v_t for seg_t = k, rows [n],
    /// v [n, d] → [k, table_rows, d]. A statistic, not a differentiable op.
    fn segment_scatter_rows(
        rows: Tensor<Self, 1, Int>,
        v: Tensor<Self, 2>,
        seg: Tensor<Self, 1, Int>,
        k: usize,
        table_rows: usize,
    ) -> Tensor<Self, 3> {
        reference::segment_scatter_rows(rows, v, seg, k, table_rows)
    }

    /// ⟨a, b⟩ of a, b [n] → [1]: the mixers' gradient probes (one per parameter and
    /// micro-batch). The CPU fuses the product and the sum into one pass over both cores.
    fn dot(a: Tensor<Self, 1>, b: Tensor<Self, 1>) -> Tensor<Self, 1> {
        (a * b).sum()
    }

    /// P ⊙ g with AdamW's diagonal preconditioner P = 1 / (sqrt(v / bias2) + eps), all [n].
    fn preconditioned(
        g: Tensor<Self, 1>,
        v: Tensor<Self, 1>,
        bias2: f64,
        eps: f64,
    ) -> Tensor<Self, 1> {
        ((v / bias2).sqrt() + eps).recip() * g
    }
}

/// The model's fused ops, each one tracked op under autodiff: the per-source cross-entropy, the
/// attention softmax, RoPE, RMSNorm, the activations, matrix products and the AdamW update.
pub trait FusedOps: Backend {
    /// Per-token cross-entropy of logits [n, vocab] against targets [n] → [n], differentiable
    /// on autodiff backends.
    fn cross_entropy_per_token(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 1> {
        reference::cross_entropy_per_token(logits, targets)
    }

    /// (loss [n], logsumexp [n]) of logits [n, vocab]: the forward the backward reuses.
    fn cross_entropy_rows(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>) {
        reference::cross_entropy_rows(logits, targets)
    }

    /// d logits [n, vocab] = dloss_t (softmax(logits_t) − onehot(target_t)), softmax from the
    /// forward's logsumexp.
    fn cross_entropy_rows_backward(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        logsumexp: Tensor<Self, 1>,
        dloss: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        reference::cross_entropy_rows_backward(logits, targets, logsumexp, dloss)
    }

    /// x reshaped to `shape` (the same number of elements, row-major); differentiable.
    fn reshape<const D1: usize, const D2: usize>(
        x: Tensor<Self, D1>,
        shape: [usize; D2],
    ) -> Tensor<Self, D2> {
        x.reshape(shape)
    }

    /// lhs [.., m, k] × rhs [.., k, n] with the same leading dims (burn's `matmul` otherwise).
    /// Differentiable on autodiff backends.
    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        lhs.matmul(rhs)
    }

    /// Causal softmax of attention scores [batch, heads, seq, seq] scaled by `scale`: keys after
    /// the query get exactly 0. Differentiable on autodiff backends (one tracked op).
    fn causal_softmax(scores: Tensor<Self, 4>, scale: f64) -> Tensor<Self, 4> {
        reference::causal_softmax(scores, scale)
    }

    /// d scores [batch, heads, seq, seq] from the causal softmax's output `y` and its gradient `dy`.
    fn causal_softmax_backward(
        y: Tensor<Self, 4>,
        dy: Tensor<Self, 4>,
        scale: f64,
    ) -> Tensor<Self, 4> {
        reference::causal_softmax_backward(y, dy, scale)
    }

    /// RoPE (GPT-NeoX half-split) of x [batch, heads, seq, head_dim] with the constant tables
    /// cos, sin [seq, head_dim / 2]. Its gradient is `rope(dy, cos, −sin)`.
    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 2>, sin: Tensor<Self, 2>) -> Tensor<Self, 4> {
        reference::rope(x, cos, sin)
    }

    /// RMSNorm of x [rows, d] with gain [d] (burn's `RmsNorm`); differentiable in both.
    fn rms_norm(x: Tensor<Self, 2>, gain: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        reference::rms_norm(x, gain, eps)
    }

    /// (dx [rows, d], dgain [d]) of `rms_norm` for the output gradient dy [rows, d].
    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        gain: Tensor<Self, 1>,
        dy: Tensor<Self, 2>,
        eps: f64,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>) {
        reference::rms_norm_backward(x, gain, dy, eps)
    }

    /// GELU (erf form) of x [rows, d]; differentiable.
    fn gelu_rows(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
        burn::tensor::activation::gelu(x)
    }

    /// d x of GELU for the output gradient dy, both [rows, d].
    fn gelu_rows_backward(x: Tensor<Self, 2>, dy: Tensor<Self, 2>) -> Tensor<Self, 2> {
        reference::gelu_backward(x, dy)
    }

    /// SwiGLU's product silu(gate) ⊙ up of gate, up [rows, d]; differentiable in both.
    fn swiglu_rows(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        burn::tensor::activation::silu(gate) * up
    }

    /// (d gate, d up) of `swiglu_rows` for the output gradient dh, all [rows, d].
    fn swiglu_rows_backward(
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
        dh: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        reference::swiglu_backward(gate, up, dh)
    }

    /// One AdamW update of a flattened parameter and its moments, all [numel]: (param, m, v).
    fn adamw(
        param: Tensor<Self, 1>,
        grad: Tensor<Self, 1>,
        m: Tensor<Self, 1>,
        v: Tensor<Self, 1>,
        step: AdamWStep,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>, Tensor<Self, 1>) {
        reference::adamw(param, grad, m, v, step)
    }
}

/// How a backend wants its passes scheduled, and which implementation it runs.
pub trait ExecPolicy: Backend {
    /// What this backend's methods run.
    const IMPL: KernelImpl = KernelImpl::Reference;

    /// Whether a micro-batch runs as several smaller forward/backward passes
    /// (`train.cpu_pass_size`): where passes run side by side (the CPU), so that one step of
    /// 16 sequences keeps both cores busy with four passes of 4. The split is the same for any
    /// number of threads, so the bits are too; GPU queues want one large pass.
    const SPLITS_PASSES: bool = false;

    /// How many independent passes (micro-batches of one step, validation batches, chunks of a
    /// forward) this backend runs at once, one per lane (`concurrent::run_concurrently`). 1:
    /// one after the other, as a GPU queue runs them anyway.
    fn concurrent_passes() -> usize {
        1
    }
}

/// Everything mixtrain's training path asks of a backend: the three roles together.
pub trait StatKernels: SourceStats + FusedOps + ExecPolicy {}

impl<B: SourceStats + FusedOps + ExecPolicy> StatKernels for B {}

/// burn's second CPU backend runs the references throughout.
impl SourceStats for burn::backend::Flex {}
impl FusedOps for burn::backend::Flex {}
impl ExecPolicy for burn::backend::Flex {}
