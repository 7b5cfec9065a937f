//! Decoder-only GPT: token embedding, RoPE, pre-norm RMSNorm blocks with causal self-attention
//! and a SwiGLU or GELU MLP, final RMSNorm, LM head (optionally tied to the embedding).

use burn::nn::{
    Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig, RmsNorm, RmsNormConfig,
};
use burn::prelude::*;
use mixtrain_kernels::{KernelImpl, StatKernels};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::validate::{at_least_one, positive};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlpKind {
    Swiglu,
    Gelu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Width of the residual stream. Default 128.
    pub d_model: usize,
    /// Number of transformer blocks. Default 4.
    pub n_layers: usize,
    /// Attention heads; must divide d_model, and d_model / n_heads must be even (RoPE).
    /// Default 4.
    pub n_heads: usize,
    /// Hidden width of the MLP. Default 384.
    pub d_ff: usize,
    /// "swiglu" or "gelu". Default "swiglu".
    pub mlp: MlpKind,
    /// Share the token embedding with the LM head. Default true.
    pub(crate) tie_embeddings: bool,
    /// RoPE base frequency. Default 10000.
    pub(crate) rope_theta: f64,
    /// RMSNorm epsilon. Default 1e-5.
    pub(crate) norm_eps: f64,
    /// Standard deviation of the normal initialisation (output projections are further scaled by
    /// 1/sqrt(2 n_layers)). Default 0.02.
    pub(crate) init_std: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            d_ff: 384,
            mlp: MlpKind::Swiglu,
            tie_embeddings: true,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            init_std: 0.02,
        }
    }
}

impl ModelConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        at_least_one("model.d_model", self.d_model)?;
        at_least_one("model.n_layers", self.n_layers)?;
        at_least_one("model.n_heads", self.n_heads)?;
        at_least_one("model.d_ff", self.d_ff)?;
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(Error::value(
                "model.n_heads",
                format!(
                    "must divide model.d_model = {} (got {})",
                    self.d_model, self.n_heads
                ),
            ));
        }
        if !(self.d_model / self.n_heads).is_multiple_of(2) {
            return Err(Error::value(
                "model.n_heads",
                format!(
                    "head size d_model / n_heads = {} must be even for RoPE",
                    self.d_model / self.n_heads
                ),
            ));
        }
        positive("model.rope_theta", self.rope_theta)?;
        positive("model.norm_eps", self.norm_eps)?;
        positive("model.init_std", self.init_std)
    }
}

#[derive(Module, Debug)]
pub struct Gpt<B: Backend> {
    pub(crate) tok_emb: Embedding<B>,
    pub(crate) blocks: Vec<Block<B>>,
    pub(crate) norm_f: RmsNorm<B>,
    /// None when the head is tied to `tok_emb`.
    pub(crate) lm_head: Option<Linear<B>>,
    n_heads: usize,
    rope_theta: f64,
}

#[derive(Module, Debug)]
pub(crate) struct Block<B: Backend> {
    pub(crate) attn_norm: RmsNorm<B>,
    pub(crate) attn: Attention<B>,
    pub(crate) mlp_norm: RmsNorm<B>,
    pub(crate) mlp: Mlp<B>,
}

#[derive(Module, Debug)]
pub(crate) struct Attention<B: Backend> {
    pub(crate) q_proj: Linear<B>,
    pub(crate) k_proj: Linear<B>,
    pub(crate) v_proj: Linear<B>,
    pub(crate) o_proj: Linear<B>,
}

#[derive(Module, Debug)]
pub(crate) struct Mlp<B: Backend> {
    /// SwiGLU's gate; None for the GELU MLP.
    pub(crate) gate_proj: Option<Linear<B>>,
    pub(crate) up_proj: Linear<B>,
    pub(crate) down_proj: Linear<B>,
}

fn linear<B: Backend>(d_in: usize, d_out: usize, std: f64, device: &B::Device) -> Linear<B> {
    LinearConfig::new(d_in, d_out)
        .with_bias(false)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

impl ModelConfig {
    /// Builds the model for a vocabulary of `vocab_size` tokens.
    pub(crate) fn init<B: Backend>(&self, vocab_size: usize, device: &B::Device) -> Gpt<B> {
        let d = self.d_model;
        let std = self.init_std;
        // GPT-2: residual output projections scaled by 1/sqrt(2 · n_layers).
        let out_std = std / (2.0 * self.n_layers as f64).sqrt();
        let norm = || {
            RmsNormConfig::new(d)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        let blocks = (0..self.n_layers)
            .map(|_| Block {
                attn_norm: norm(),
                attn: Attention {
                    q_proj: linear(d, d, std, device),
                    k_proj: linear(d, d, std, device),
                    v_proj: linear(d, d, std, device),
                    o_proj: linear(d, d, out_std, device),
                },
                mlp_norm: norm(),
                mlp: Mlp {
                    gate_proj: (self.mlp == MlpKind::Swiglu)
                        .then(|| linear(d, self.d_ff, std, device)),
                    up_proj: linear(d, self.d_ff, std, device),
                    down_proj: linear(self.d_ff, d, out_std, device),
                },
            })
            .collect();
        Gpt {
            tok_emb: EmbeddingConfig::new(vocab_size, d)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device),
            blocks,
            norm_f: norm(),
            lm_head: (!self.tie_embeddings).then(|| linear(d, vocab_size, std, device)),
            n_heads: self.n_heads,
            rope_theta: self.rope_theta,
        }
    }
}

/// cos and sin of RoPE's rotation angles, [seq, head_dim / 2] each.
fn rope_tables<B: Backend>(
    seq: usize,
    head_dim: usize,
    theta: f64,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(seq * half);
    let mut sin = Vec::with_capacity(seq * half);
    for pos in 0..seq {
        for i in 0..half {
            let freq = theta.powf(-(2.0 * i as f64) / head_dim as f64);
            let angle = pos as f64 * freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [seq, half]), device),
        Tensor::from_data(TensorData::new(sin, [seq, half]), device),
    )
}

impl<B: StatKernels> Gpt<B> {
    /// Logits for `tokens` [batch, seq] → [batch · seq, vocab] (row b · seq + t).
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        self.forward_traced(tokens, None)
    }

    /// `forward`, recording into `trace` (when given) every parameter's tap for single-pass
    /// per-source gradient statistics. The logits are the same either way.
    pub(crate) fn forward_traced(
        &self,
        tokens: Tensor<B, 2, Int>,
        mut trace: Option<&mut Trace<B>>,
    ) -> Tensor<B, 2> {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        let d_model = self.tok_emb.weight.dims()[1];
        let head_dim = d_model / self.n_heads;
        let (cos, sin) = rope_tables::<B>(seq, head_dim, self.rope_theta, &device);

        let mut x = self.tok_emb.forward(tokens.clone()); // [batch, seq, d_model]
        if let Some(t) = trace.as_deref_mut() {
            let n = batch * seq;
            x = t.tap(
                self.tok_emb.weight.id,
                TapInput::Embedding(tokens.reshape([n])),
                x,
            );
        }
        for block in &self.blocks {
            let h = rms_norm(&block.attn_norm, x.clone(), trace.as_deref_mut());
            x = x + block
                .attn
                .forward(h, self.n_heads, &cos, &sin, trace.as_deref_mut());
            let h = rms_norm(&block.mlp_norm, x.clone(), trace.as_deref_mut());
            x = x + block.mlp.forward(h, trace.as_deref_mut());
        }
        let x = rms_norm(&self.norm_f, x, trace.as_deref_mut());
        match &self.lm_head {
            Some(head) => {
                let logits = linear_traced(head, x, trace); // [batch, seq, vocab]
                let vocab = logits.dims()[2];
                B::reshape(logits, [batch * seq, vocab])
            }
            None => {
                let x = B::reshape(x, [batch * seq, d_model]); // [batch · seq, d_model]
                let logits = B::matmul(x.clone(), self.tok_emb.weight.val().transpose()); // [batch · seq, vocab]
                match trace {
                    Some(t) => {
                        let vocab = logits.dims()[1];
                        t.tap(
                            self.tok_emb.weight.id,
                            TapInput::TiedHead(x),
                            logits.unsqueeze::<3>(),
                        )
                        .reshape([batch * seq, vocab])
                    }
                    None => logits,
                }
            }
        }
    }
}

impl<B: Backend> Gpt<B> {
    pub(crate) fn num_params(&self) -> usize {
        Module::num_params(self)
    }
}

impl<B: StatKernels> Attention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        n_heads: usize,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
        mut trace: Option<&mut Trace<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, d_model] = x.dims();
        let head_dim = d_model / n_heads;
        let heads =
            |t: Tensor<B, 3>| B::reshape(t, [batch, seq, n_heads, head_dim]).swap_dims(1, 2); // [batch, heads, seq, head_dim]
        let q = linear_traced(&self.q_proj, x.clone(), trace.as_deref_mut());
        let k = linear_traced(&self.k_proj, x.clone(), trace.as_deref_mut());
        let v = linear_traced(&self.v_proj, x, trace.as_deref_mut());
        // RoPE as one op (fused host loop on the CPU). cos, sin: [seq, head_dim / 2]
        let q = B::rope(heads(q), cos.clone(), sin.clone());
        let k = B::rope(heads(k), cos.clone(), sin.clone());
        let v = heads(v);
        // Scale, causal mask and softmax in one op (fused host loop on the CPU).
        let scores = B::matmul(q, k.swap_dims(2, 3)); // [batch, heads, seq, seq]
        let attn = B::causal_softmax(scores, 1.0 / (head_dim as f64).sqrt());
        let out = B::matmul(attn, v) // [batch, heads, seq, head_dim]
            .swap_dims(1, 2)
            .reshape([batch, seq, d_model]);
        linear_traced(&self.o_proj, out, trace)
    }
}

impl<B: StatKernels> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>, mut trace: Option<&mut Trace<B>>) -> Tensor<B, 3> {
        let up = linear_traced(&self.up_proj, x.clone(), trace.as_deref_mut()); // [batch, seq, d_ff]
        let hidden = match &self.gate_proj {
            Some(gate) => {
                // One op (fused host loop on the CPU). [batch · seq, d_ff]
                let gate = linear_traced(gate, x, trace.as_deref_mut());
                let [b, t, f] = up.dims();
                B::reshape(
                    B::swiglu_rows(B::reshape(gate, [b * t, f]), B::reshape(up, [b * t, f])),
                    [b, t, f],
                )
            }
            None => {
                // One op (fused host loop on the CPU). [batch · seq, d_ff]
                let [b, t, f] = up.dims();
                B::reshape(B::gelu_rows(B::reshape(up, [b * t, f])), [b, t, f])
            }
        };
        linear_traced(&self.down_proj, hidden, trace)
    }
}

/// The forward quantity each parameter's per-token gradient is built from (N = batch · seq).
pub(crate) enum TapInput<B: Backend> {
    /// y = a W (burn's [in, out] weight): ∂W = Σ_t a_t ⊗ δ_t. a: [N, in]
    Linear(Tensor<B, 2>),
    /// y = E[x_t]: ∂E = Σ_t onehot(x_t) ⊗ δ_t. Tokens [N]
    Embedding(Tensor<B, 1, Int>),
    /// Logits = h Eᵀ (head tied to the embedding): ∂E = Σ_t δ_t ⊗ h_t. h: [N, d_model]
    TiedHead(Tensor<B, 2>),
    /// y = x̂ ⊙ γ (RMSNorm): ∂γ = Σ_t δ_t ⊙ x̂_t. x̂: [N, d_model]
    NormGain(Tensor<B, 2>),
}

/// One parameter's use in a traced forward pass: its input and a zero "probe" added to its
/// output, whose gradient after backward is the per-token output gradient δ [N, out].
pub(crate) struct Tap<B: Backend> {
    pub(crate) param: burn::module::ParamId,
    pub(crate) input: TapInput<B>,
    /// Zeros [N, out], a leaf that requires grad.
    pub(crate) probe: Tensor<B, 2>,
}

/// Everything a traced forward pass recorded, in forward order.
pub(crate) struct Trace<B: Backend> {
    pub(crate) taps: Vec<Tap<B>>,
}

impl<B: Backend> Trace<B> {
    pub(crate) fn new() -> Self {
        Trace { taps: Vec::new() }
    }

    /// Records a tap on output `y` [b, s, out] and returns y + probe (the same values).
    fn tap(
        &mut self,
        param: burn::module::ParamId,
        input: TapInput<B>,
        y: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let [b, s, out] = y.dims();
        let probe = Tensor::<B, 2>::zeros([b * s, out], &y.device()).require_grad();
        self.taps.push(Tap {
            param,
            input,
            probe: probe.clone(),
        });
        y + probe.reshape([b, s, out])
    }
}

impl<B: Backend> Default for Trace<B> {
    fn default() -> Self {
        Self::new()
    }
}

/// `layer.forward(x)` for x [b, s, in], tapped when tracing.
fn linear_traced<B: StatKernels>(
    layer: &Linear<B>,
    x: Tensor<B, 3>,
    trace: Option<&mut Trace<B>>,
) -> Tensor<B, 3> {
    // One [b · s, in] × [in, out] product rather than burn's batched form (b products of
    // [s, in] × [in, out] against a broadcast weight, whose backward also sums b partial weight
    // gradients): one large matmul uses both cores and packs the weight once.
    // (Host backends only: the GPU backends keep burn's form, which their tests ran.)
    let [b, s, d_in] = x.dims();
    let rows = B::reshape(x.clone(), [b * s, d_in]); // [b · s, in]
    let y = if B::IMPL == KernelImpl::Host {
        let y = B::matmul(rows.clone(), layer.weight.val()); // [b · s, out]
        let d_out = y.dims()[1];
        B::reshape(y, [b, s, d_out])
    } else {
        layer.forward(x)
    };
    match trace {
        Some(t) => t.tap(layer.weight.id, TapInput::Linear(rows), y),
        None => y,
    }
}

/// RMSNorm of x [b, s, d], tapped when tracing (the same formula as burn's `RmsNorm`, with
/// x̂ kept for the gain's per-token gradient).
fn rms_norm<B: StatKernels>(
    norm: &RmsNorm<B>,
    x: Tensor<B, 3>,
    trace: Option<&mut Trace<B>>,
) -> Tensor<B, 3> {
    let [b, s, d] = x.dims();
    let Some(t) = trace else {
        // One op (fused host loop on the CPU). [batch · seq, d_model]
        let y = B::rms_norm(B::reshape(x, [b * s, d]), norm.gamma.val(), norm.epsilon);
        return B::reshape(y, [b, s, d]);
    };
    let rms = (x.clone().square().mean_dim(2) + norm.epsilon).sqrt(); // [b, s, 1]
    let x_hat = x / rms; // [b, s, d]
    let y = x_hat.clone() * norm.gamma.val().unsqueeze::<3>();
    t.tap(
        norm.gamma.id,
        TapInput::NormGain(x_hat.reshape([b * s, d])),
        y,
    )
}

/// Per-token cross-entropy of `logits` [n, vocab] against `targets` [n] → [n]: the fused
/// kernel (forward and backward) on CubeCL backends, the reference ops on the CPU.
pub(crate) fn token_losses<B: StatKernels>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    B::cross_entropy_per_token(logits, targets)
}
