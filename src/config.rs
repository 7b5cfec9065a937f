//! The run configuration: TOML on disk, `--set key=value` overrides, then validation.
//!
//! Every field is documented where it is declared, with its default; `validate` checks ranges
//! and names the offending key (`train.lr: must be > 0 (got -1)`). Unknown keys are errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::mixer::EntropyKind;
pub use crate::target::{Target, TargetConfig, TargetSetConfig};

/// The whole, resolved configuration of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub run: RunConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub mixer: MixerConfig,
    #[serde(default)]
    pub target: TargetConfig,
    #[serde(default)]
    pub demix: DemixConfig,
}

/// `[demix]`: the seed mixture from merged per-source component models (`mixtrain demix`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemixConfig {
    /// Steps of a shared base model on the initial mixture (0: components start from the
    /// freshly initialised model). Default 100.
    pub base_steps: usize,
    /// Steps of each per-source component, from the base. Default 100.
    pub component_steps: usize,
    /// Share of the initial mixture kept in each component's data:
    /// w = (1 − f) one-hot(k) + f p_init. Default 0.1.
    pub general_fraction: f64,
    /// Exponent τ of the candidates' prior, p ∝ tokens^τ. Default 0.5.
    pub prior_temperature: f64,
    /// Candidates keep w_k <= max_ratio · prior_k. Default 4.0.
    pub max_ratio: f64,
    /// Dirichlet concentrations c of the candidates, w ~ Dir(c · K · prior), used in turn.
    /// Default [1.0, 4.0, 16.0].
    pub concentrations: Vec<f64>,
    /// Merged proxies scored in the first round; round r scores first_round / 2^r. Default 32.
    pub first_round: usize,
    /// Scoring rounds. Default 3.
    pub rounds: usize,
    /// Candidates the regressor ranks in each later round and for the final mixture.
    /// Default 5000.
    pub pool: usize,
    /// The seed mixture is the mean of the `top_k` best predicted pool candidates. Default 16.
    pub top_k: usize,
    /// Steps of each real model `mixtrain demix --validate M` trains (from the base) to check
    /// the proxies. 0: `component_steps`. Default 0.
    pub validate_steps: usize,
}

impl Default for DemixConfig {
    fn default() -> Self {
        DemixConfig {
            base_steps: 100,
            component_steps: 100,
            general_fraction: 0.1,
            prior_temperature: 0.5,
            max_ratio: 4.0,
            concentrations: vec![1.0, 4.0, 16.0],
            first_round: 32,
            rounds: 3,
            pool: 5000,
            top_k: 16,
            validate_steps: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Directory the run writes into (config.toml, metrics.jsonl, ratios.csv, checkpoints/).
    /// Default "runs/default".
    pub out_dir: PathBuf,
    /// Seed of model initialisation and of the data sampler. Default 42.
    pub seed: u64,
    /// Compute backend: "cpu" (the faster CPU backend, ndarray), "ndarray", "flex", "wgpu"
    /// (needs `--features wgpu`), "cuda" (needs `--features cuda`). Default "cpu".
    pub backend: BackendKind,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            out_dir: PathBuf::from("runs/default"),
            seed: 42,
            backend: BackendKind::Cpu,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Cpu,
    Flex,
    Ndarray,
    Wgpu,
    Cuda,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// "bytes" (byte-level, vocab 256 + end-of-document) or "bpe:PATH" (a tokenizer.json, e.g.
    /// from `mixtrain prepare --train-bpe`). Default "bytes".
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
    /// Tokens per training sequence. Default 128.
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Where tokenised sources are cached, keyed by content hash and tokenizer.
    /// Default ".mixtrain-cache".
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// The data sources; at least one. Each is `{ name, path, val_fraction }`.
    pub sources: Vec<SourceConfig>,
}

fn default_tokenizer() -> String {
    "bytes".into()
}
fn default_seq_len() -> usize {
    128
}
fn default_cache_dir() -> PathBuf {
    PathBuf::from(".mixtrain-cache")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name used in logs, ratios.csv and mixture.json: letters, digits, '_' and '-'.
    pub name: String,
    /// A `.txt` file (one document), a `.jsonl` file (one document per line, in its "text"
    /// field), a directory of them (searched recursively), a glob, or a directory of prepared
    /// shards (`train.bin`, `val.bin`, `meta.json`, as `mixtrain prepare` writes).
    pub path: String,
    /// Fraction of documents held out for validation, chosen by a hash of each document's
    /// text (deterministic, independent of file order). Default 0.05.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
}

fn default_val_fraction() -> f64 {
    0.05
}

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
    pub tie_embeddings: bool,
    /// RoPE base frequency. Default 10000.
    pub rope_theta: f64,
    /// RMSNorm epsilon. Default 1e-5.
    pub norm_eps: f64,
    /// Standard deviation of the normal initialisation (output projections are further scaled by
    /// 1/sqrt(2 n_layers)). Default 0.02.
    pub init_std: f64,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps. Default 300.
    pub steps: usize,
    /// Sequences per micro-batch. Default 16.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation). Default 1.
    pub grad_accum: usize,
    /// Peak learning rate of AdamW. Default 3e-3.
    pub lr: f64,
    /// Final learning rate as a fraction of `lr` (cosine decay). Default 0.1.
    pub min_lr_ratio: f64,
    /// Steps of linear warmup from 0 to `lr`. Default 30.
    pub warmup_steps: usize,
    /// Decoupled weight decay, applied to matrices and embeddings only. Default 0.1.
    pub weight_decay: f64,
    /// AdamW beta1. Default 0.9.
    pub beta1: f64,
    /// AdamW beta2. Default 0.95.
    pub beta2: f64,
    /// AdamW epsilon. Default 1e-8.
    pub adam_eps: f64,
    /// Clip the global gradient norm to this value; 0 turns clipping off. Default 1.0.
    pub grad_clip: f64,
    /// Evaluate per-source validation loss every this many steps (and at step 0 and the end).
    /// Default 50.
    pub eval_every: usize,
    /// Validation batches (of `batch_size` sequences) per source in each evaluation; the same
    /// fixed sequences every time. Default 4.
    pub eval_batches: usize,
    /// Write a checkpoint every this many steps (and at the end); 0 writes only the final one.
    /// Default 100.
    pub checkpoint_every: usize,
    /// Complete checkpoints kept; older ones are deleted once a newer one is complete. Default 2.
    pub keep_checkpoints: usize,
    /// Write a training line to metrics.jsonl every this many steps. Default 10.
    pub log_every: usize,
    /// What a step with a non-finite loss or gradient does: "stop" (default: the step is not
    /// applied, a checkpoint of the last good state is written, the run exits with an error
    /// naming the step and sources) or "skip" (the step's batch is dropped unapplied, logged,
    /// and training goes on).
    pub on_nonfinite: NonFinitePolicy,
    /// With `on_nonfinite = "skip"`: the run stops once more steps than this were skipped.
    /// Default 10.
    pub max_skipped_steps: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFinitePolicy {
    Stop,
    Skip,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 300,
            batch_size: 16,
            grad_accum: 1,
            lr: 3e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 30,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            adam_eps: 1e-8,
            grad_clip: 1.0,
            eval_every: 50,
            eval_batches: 4,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            log_every: 10,
            on_nonfinite: NonFinitePolicy::Stop,
            max_skipped_steps: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MixerKind {
    Static,
    Fastmix,
    Tikmix,
    TikmixM,
    Odm,
    Doremi,
    Ado,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    /// The LM head only (the embedding when tied), as FastMix's reference code.
    Head,
    /// Every parameter.
    All,
}

/// How a probed training step gets ⟨g_val, g_k⟩ for every source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GradStats {
    /// Domain-homogeneous micro-batches; each one's gradient buffer dotted with g_val.
    PerSource,
    /// Any micro-batches; per-token output gradients of every layer from the step's own
    /// backward, segment-summed by source (src/train/single_pass.rs).
    SinglePass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluenceNorm {
    /// Ĩ = I / std(I).
    Std,
    /// Ĩ = I / max |I|.
    Max,
}

/// Where tikmix's G_k comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InfluenceFrom {
    /// The training step just before the update: G_k = the gradient of source k's sequences
    /// in that step, measured by the step's own backward (`mixer.grad_stats`), as fastmix's
    /// s_k. No extra backward.
    Probe,
    /// `samples_per_source` extra random sequences of each source, one extra backward each.
    ExtraPasses,
}

/// `[mixer.fastmix]`: validation-gradient hypergradient on softmax logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FastMixConfig {
    /// Adam learning rate of the mixture logits. Default 0.1.
    pub lr: f64,
    /// Parameters of ⟨g_val, g_k⟩: "all" or "head". Default "all".
    pub scope: ScopeKind,
    /// Use ⟨P g_val, g_k⟩ with AdamW's diagonal preconditioner P. Default true.
    pub precondition: bool,
    /// EMA factor of s_k across updates (0 = none). Default 0.5.
    pub ema: f64,
    /// Fresh validation batches behind g_val at each update. Default 2.
    pub val_batches: usize,
    /// Per-update standardisation of s before the EMA: "std" (s̃_k = (s_k − mean s) / std s
    /// over the sources measured) or "none". Default "std": the magnitude of ⟨P g_val, g_k⟩
    /// swings by 50x between updates (P and the gradient norms change fast early on), and one
    /// large early update then holds Adam's momentum for ~30 updates (README, "Target-directed
    /// mixing").
    pub normalise: SignalNorm,
}

/// fastmix's per-update normalisation of s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalNorm {
    Std,
    None,
}

impl Default for FastMixConfig {
    fn default() -> Self {
        FastMixConfig {
            lr: 0.1,
            scope: ScopeKind::All,
            precondition: true,
            ema: 0.5,
            val_batches: 2,
            normalise: SignalNorm::Std,
        }
    }
}

/// `[mixer.tikmix]`: group influence, entropy-regularised argmax, blended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TikMixConfig {
    /// Where G_k comes from: "probe" (the step before the update, no extra backward) or
    /// "extra-passes". Default "extra-passes": on the synthetic test (2 sequences of each
    /// source per step) the probe's G_k was too noisy to find one of the two targets.
    pub influence: InfluenceFrom,
    /// Sequences of each source behind G_k with `influence = "extra-passes"`. Default 32.
    pub samples_per_source: usize,
    /// Entropy temperature τ: p_new = softmax(Ĩ / τ). Default 1.0.
    pub tau: f64,
    /// Blend β: p ← (1 − β) p + β p_new. Default 0.5.
    pub blend: f64,
    /// Normalisation of I: "std" or "max". Default "std".
    pub normalise: InfluenceNorm,
    /// Fresh validation batches behind g_val at each update. Default 2.
    pub val_batches: usize,
}

impl Default for TikMixConfig {
    fn default() -> Self {
        TikMixConfig {
            influence: InfluenceFrom::ExtraPasses,
            samples_per_source: 32,
            tau: 1.0,
            blend: 0.5,
            normalise: InfluenceNorm::Std,
            val_batches: 2,
        }
    }
}

/// `[mixer.tikmix-m]`: candidate mixtures scored by their true one-step group influence, a
/// gradient-boosted-tree regressor over the history, the best predicted mixture blended in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TikMixMConfig {
    /// Sequences of each source behind G_k. Default 16.
    pub samples_per_source: usize,
    /// Fresh validation batches on which each candidate's ΔL_val is measured. Default 1.
    pub val_batches: usize,
    /// Dirichlet candidates measured per update, besides the K one-source mixtures. Default 12.
    pub candidates: usize,
    /// Dirichlet concentration c around the current mixture p: w ~ Dir(c · p). Default 20.
    pub concentration: f64,
    /// The virtual step is θ − scale · lr · P ⊙ g, g = Σ_k w_k G_k, lr = the schedule's current
    /// rate, P = 1 or (`precondition`) the diagonal preconditioner AdamW would apply next with
    /// g as the gradient, 1 / (sqrt(v̂') + eps), v' = β2 v + (1 − β2) g². Default 10: on the
    /// quickstart ΔL_val is then 1e-3..1e-1, past the purely linear regime (where TiKMiX-M
    /// would only rank ⟨g_val, G_k⟩) without overshooting.
    pub step_scale: f64,
    /// Precondition the virtual step like AdamW. Default false: every coordinate then moves by
    /// about scale · lr, which made ΔL_val positive (several nats) on the quickstart even at
    /// scale 1; with it, use a small `step_scale` (~0.05).
    pub precondition: bool,
    /// Updates whose measurements the regressor is fitted on (the newest). Default 8.
    pub history: usize,
    /// Candidates drawn from Dir(c · p) and scored by the regressor. Default 1000.
    pub pool: usize,
    /// The new mixture is the mean of the `top_k` best predicted candidates. Default 8.
    pub top_k: usize,
    /// Blend β: p ← (1 − β) p + β p_new. Default 0.5.
    pub blend: f64,
}

impl Default for TikMixMConfig {
    fn default() -> Self {
        TikMixMConfig {
            samples_per_source: 16,
            val_batches: 1,
            candidates: 12,
            concentration: 20.0,
            step_scale: 10.0,
            precondition: false,
            history: 8,
            pool: 1000,
            top_k: 8,
            blend: 0.5,
        }
    }
}

/// `[mixer.doremi]`: excess loss against a reference model, exponentiated-gradient update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DoremiConfig {
    /// The reference model: a run directory (its newest checkpoint) or a checkpoint directory
    /// of a run with the same model, tokenizer and sources. Empty: train one first for
    /// `reference_steps` steps on the initial mixture. Default "".
    pub reference: String,
    /// Steps of reference training when `reference` is empty. Default 100.
    pub reference_steps: usize,
    /// Step size η of log α ← log α + η λ. Default 1.0.
    pub eta: f64,
    /// Smoothing c: α ← (1 − c) α + c / K. Default 1e-3.
    pub smoothing: f64,
    /// Random training sequences of each source behind λ_k at each update. Default 16.
    pub samples_per_source: usize,
}

impl Default for DoremiConfig {
    fn default() -> Self {
        DoremiConfig {
            reference: String::new(),
            reference_steps: 100,
            eta: 1.0,
            smoothing: 1e-3,
            samples_per_source: 16,
        }
    }
}

/// `[mixer.ado]`: Adaptive Data Optimization (arXiv 2410.11820): a power law per source fitted
/// to its training-loss history, weight ∝ prior × credit × fitted rate of improvement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdoConfig {
    /// γ₁ of the credit h_k ← γ₁ h_k + (1 − γ₁) p_k (how much each source was trained on
    /// lately). Default 0.9.
    pub credit_smoothing: f64,
    /// Exponent s of the credit in ρ_k ∝ μ_k h_k^s r_k. Default 0.5.
    pub credit_power: f64,
    /// γ₂ of the mixture π̄ ← γ₂ π̄ + (1 − γ₂) ρ. Default 0.9.
    pub smoothing: f64,
    /// Loss points a source needs before its power law is fitted (no update before every
    /// source has them). Default 4.
    pub min_points: usize,
    /// Newest loss points kept per source for the fit. Default 64.
    pub history: usize,
}

impl Default for AdoConfig {
    fn default() -> Self {
        AdoConfig {
            credit_smoothing: 0.9,
            credit_power: 0.5,
            smoothing: 0.9,
            min_points: 4,
            history: 64,
        }
    }
}

/// `[mixer.odm]`: EXP3 bandit on importance-weighted training loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OdmConfig {
    /// Reward smoothing a: R ← a R + (1 − a) L̄_k / p_k. Default 0.9.
    pub alpha: f64,
}

impl Default for OdmConfig {
    fn default() -> Self {
        OdmConfig { alpha: 0.9 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyMode {
    /// Draw each sequence's source with probability p_k.
    Sample,
    /// Draw sources uniformly (balanced per batch) and weight each sequence's loss by p_k.
    Reweight,
    /// Draw n_k ≈ n p_k sequences of source k with a systematic (low-variance) draw,
    /// |n_k − n p_k| < 1, and weight each by p_k n / n_k, so the loss is exactly the
    /// p-weighted mean over the sources drawn while the compute follows p.
    Hybrid,
}

/// `mixer.init`: a named rule, or explicit weights by source name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitSpec {
    Named(String),
    Explicit(BTreeMap<String, f64>),
}

/// How the initial mixture is computed, resolved from `InitSpec` by `validate`.
#[derive(Debug, Clone, PartialEq)]
pub enum MixtureInit {
    Uniform,
    /// p ∝ training tokens of each source.
    Proportional,
    /// p ∝ n_k^τ with τ = `mixer.temperature`.
    Temperature(f64),
    /// Weights by source name (normalised to sum 1).
    Explicit(BTreeMap<String, f64>),
    /// The "final" weights of a mixture.json written by an earlier run.
    File(PathBuf),
    /// p ∝ an entropy of each source's training tokens (BiMix).
    Entropy(EntropyKind),
    /// The seed of `mixtrain demix`: a demix/ directory or its mixture.json; None = this run's
    /// own out_dir/demix, computed first when missing.
    Demix(Option<PathBuf>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MixerConfig {
    /// The mixer: "static", "fastmix", "tikmix", "tikmix-m", "odm", "doremi" or "ado".
    /// Default "static".
    pub kind: MixerKind,
    /// "sample", "reweight" or "hybrid" (see ApplyMode). Default "hybrid" (README, "Mixer
    /// comparison": the compute follows the mixture).
    pub apply: ApplyMode,
    /// Steps between mixer updates. Default 10.
    pub every: usize,
    /// No mixer update before this step (the mixture stays at `init`; the first update is at
    /// the first multiple of `every` at or after it). Default 0.
    pub warmup_steps: usize,
    /// Trust region: an update moves the applied mixture by at most this much in total
    /// variation (½ Σ |Δp_k|) toward the mixer's proposal. Unset: no bound. Default unset.
    pub max_change: Option<f64>,
    /// How fastmix's probed step measures ⟨g_val, g_k⟩: "per-source" or "single-pass".
    /// Default "per-source".
    pub grad_stats: GradStats,
    /// Weight floor ε for online mixers, p ← (1−Kε)p + ε; must satisfy Kε < 1. Default 0.2/K.
    /// The static mixer uses its weights exactly as given.
    pub min_weight: Option<f64>,
    /// Exponent τ of `init = "temperature"` (p ∝ tokens^τ). Default 0.5.
    pub temperature: f64,
    /// Initial mixture: "uniform", "proportional", "temperature", "file:PATH/mixture.json",
    /// or a table of weights by source name (`{ code = 2, prose = 1 }`, normalised).
    /// Default "uniform".
    pub init: InitSpec,
    pub fastmix: FastMixConfig,
    pub tikmix: TikMixConfig,
    #[serde(rename = "tikmix-m")]
    pub tikmix_m: TikMixMConfig,
    pub odm: OdmConfig,
    pub doremi: DoremiConfig,
    pub ado: AdoConfig,
}

impl MixerConfig {
    /// True when the mixer updates after `step` optimizer steps of a `total`-step run: every
    /// `every` steps from `warmup_steps` on, never at step 0 or at the end.
    pub fn updates_at(&self, step: usize, total: usize) -> bool {
        step > 0 && step < total && step >= self.warmup_steps && step.is_multiple_of(self.every)
    }
}

impl Default for MixerConfig {
    fn default() -> Self {
        MixerConfig {
            kind: MixerKind::Static,
            apply: ApplyMode::Hybrid,
            every: 10,
            warmup_steps: 0,
            max_change: None,
            grad_stats: GradStats::PerSource,
            min_weight: None,
            temperature: 0.5,
            init: InitSpec::Named("uniform".into()),
            fastmix: FastMixConfig::default(),
            tikmix: TikMixConfig::default(),
            tikmix_m: TikMixMConfig::default(),
            odm: OdmConfig::default(),
            doremi: DoremiConfig::default(),
            ado: AdoConfig::default(),
        }
    }
}

impl Config {
    /// Reads `path`, applies `--set` overrides (`key=value`, value in TOML syntax or a bare
    /// string), deserialises and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path).at(path)?;
        Self::from_toml_str(&text, &path.display().to_string(), overrides)
    }

    pub fn from_toml_str(text: &str, file: &str, overrides: &[String]) -> Result<Config> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| Error::ConfigParse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                // toml's value deserialiser appends "in `key`": the key is already in front.
                let message = e.into_inner().to_string();
                let message = message
                    .lines()
                    .filter(|l| !l.starts_with("in `"))
                    .collect::<Vec<_>>()
                    .join("\n");
                let message = message.trim_end();
                Error::ConfigParse {
                    file: file.to_string(),
                    message: if key == "." {
                        message.to_string()
                    } else {
                        format!("{key}: {message}")
                    },
                }
            })?;
        // A value error names its key; from a file it names the file too.
        config.validate().map_err(|e| match e {
            Error::ConfigValue { key, message } => Error::ConfigParse {
                file: file.to_string(),
                message: format!("{key}: {message}"),
            },
            other => other,
        })?;
        Ok(config)
    }

    /// The resolved config as TOML, as written to `out_dir/config.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Config always serialises to TOML")
    }

    /// Hash of everything that determines the run's numbers: the whole config except
    /// `run.out_dir` (a run directory may be moved and resumed).
    pub fn hash(&self) -> String {
        let mut hashed = self.clone();
        hashed.run.out_dir = PathBuf::new();
        let json = serde_json::to_string(&hashed).expect("a Config always serialises to JSON");
        let digest = Sha256::digest(json.as_bytes());
        hex(&digest[..16])
    }

    pub fn source_names(&self) -> Vec<String> {
        self.data.sources.iter().map(|s| s.name.clone()).collect()
    }

    /// The resolved `[target]`: training sources and target sets whose mean validation loss
    /// the target-directed mixers optimise.
    pub fn target(&self) -> Target {
        self.target.resolve(&self.data.sources)
    }

    /// The weight floor ε of online mixers (default 0.2/K).
    pub fn min_weight(&self) -> f64 {
        self.mixer
            .min_weight
            .unwrap_or(0.2 / self.data.sources.len() as f64)
    }

    /// Parses `mixer.init`.
    pub fn mixture_init(&self) -> Result<MixtureInit> {
        match &self.mixer.init {
            InitSpec::Named(name) => match name.as_str() {
                "uniform" => Ok(MixtureInit::Uniform),
                "proportional" => Ok(MixtureInit::Proportional),
                "temperature" => Ok(MixtureInit::Temperature(self.mixer.temperature)),
                other => {
                    if let Some(path) = other.strip_prefix("file:").filter(|p| !p.is_empty()) {
                        return Ok(MixtureInit::File(PathBuf::from(path)));
                    }
                    if let Some(kind) = other.strip_prefix("entropy:").and_then(EntropyKind::parse)
                    {
                        return Ok(MixtureInit::Entropy(kind));
                    }
                    if other == "demix" {
                        return Ok(MixtureInit::Demix(None));
                    }
                    if let Some(path) = other.strip_prefix("demix:").filter(|p| !p.is_empty()) {
                        return Ok(MixtureInit::Demix(Some(PathBuf::from(path))));
                    }
                    Err(Error::value(
                        "mixer.init",
                        format!(
                            "unknown mixture {other:?}; expected \"uniform\", \"proportional\", \
                             \"temperature\", \"entropy:conditional\" (or :shannon, :joint), \"demix\", \
                             \"demix:PATH\", \"file:PATH/mixture.json\" or a table of weights \
                             by source name"
                        ),
                    ))
                }
            },
            InitSpec::Explicit(weights) => Ok(MixtureInit::Explicit(weights.clone())),
        }
    }

    /// Range and consistency checks; each error names its key.
    pub fn validate(&self) -> Result<()> {
        let positive = |key: &str, v: f64| -> Result<()> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::value(key, format!("must be > 0 (got {v})")))
            }
        };
        let at_least_one = |key: &str, v: usize| -> Result<()> {
            if v >= 1 {
                Ok(())
            } else {
                Err(Error::value(key, format!("must be at least 1 (got {v})")))
            }
        };
        let unit_open = |key: &str, v: f64| -> Result<()> {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::value(key, format!("must be in [0, 1) (got {v})")))
            }
        };

        // [data]
        at_least_one("data.seq_len", self.data.seq_len)?;
        if self.data.sources.is_empty() {
            return Err(Error::value(
                "data.sources",
                "at least one source is needed ([[data.sources]] with name and path)",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, source) in self.data.sources.iter().enumerate() {
            let key = format!("data.sources[{i}]");
            check_name(&format!("{key}.name"), &source.name)?;
            if !seen.insert(source.name.clone()) {
                return Err(Error::value(
                    format!("{key}.name"),
                    format!("duplicate source name {:?}", source.name),
                ));
            }
            if source.path.is_empty() {
                return Err(Error::value(format!("{key}.path"), "must not be empty"));
            }
            if !(source.val_fraction > 0.0 && source.val_fraction < 1.0) {
                return Err(Error::value(
                    format!("{key}.val_fraction"),
                    format!("must be in (0, 1) (got {})", source.val_fraction),
                ));
            }
        }

        // [model]
        let m = &self.model;
        at_least_one("model.d_model", m.d_model)?;
        at_least_one("model.n_layers", m.n_layers)?;
        at_least_one("model.n_heads", m.n_heads)?;
        at_least_one("model.d_ff", m.d_ff)?;
        if !m.d_model.is_multiple_of(m.n_heads) {
            return Err(Error::value(
                "model.n_heads",
                format!(
                    "must divide model.d_model = {} (got {})",
                    m.d_model, m.n_heads
                ),
            ));
        }
        if !(m.d_model / m.n_heads).is_multiple_of(2) {
            return Err(Error::value(
                "model.n_heads",
                format!(
                    "head size d_model / n_heads = {} must be even for RoPE",
                    m.d_model / m.n_heads
                ),
            ));
        }
        positive("model.rope_theta", m.rope_theta)?;
        positive("model.norm_eps", m.norm_eps)?;
        positive("model.init_std", m.init_std)?;

        // [train]
        let t = &self.train;
        at_least_one("train.steps", t.steps)?;
        at_least_one("train.batch_size", t.batch_size)?;
        at_least_one("train.grad_accum", t.grad_accum)?;
        positive("train.lr", t.lr)?;
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return Err(Error::value(
                "train.min_lr_ratio",
                format!("must be in [0, 1] (got {})", t.min_lr_ratio),
            ));
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            return Err(Error::value(
                "train.weight_decay",
                format!("must be >= 0 (got {})", t.weight_decay),
            ));
        }
        unit_open("train.beta1", t.beta1)?;
        unit_open("train.beta2", t.beta2)?;
        positive("train.adam_eps", t.adam_eps)?;
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            return Err(Error::value(
                "train.grad_clip",
                format!("must be >= 0 (0 turns clipping off) (got {})", t.grad_clip),
            ));
        }
        at_least_one("train.eval_every", t.eval_every)?;
        at_least_one("train.eval_batches", t.eval_batches)?;
        at_least_one("train.keep_checkpoints", t.keep_checkpoints)?;
        at_least_one("train.log_every", t.log_every)?;

        // [mixer]
        at_least_one("mixer.every", self.mixer.every)?;
        if let Some(delta) = self.mixer.max_change {
            if !(delta > 0.0 && delta <= 1.0) {
                return Err(Error::value(
                    "mixer.max_change",
                    format!("must be in (0, 1] (got {delta})"),
                ));
            }
        }
        let k = self.data.sources.len() as f64;
        if let Some(eps) = self.mixer.min_weight {
            if !(eps >= 0.0 && eps * k < 1.0) {
                return Err(Error::value(
                    "mixer.min_weight",
                    format!("must be >= 0 and below 1/K = {} (got {eps})", 1.0 / k),
                ));
            }
        }
        if !self.mixer.temperature.is_finite() {
            return Err(Error::value(
                "mixer.temperature",
                format!("must be finite (got {})", self.mixer.temperature),
            ));
        }
        if let MixtureInit::Explicit(weights) = self.mixture_init()? {
            for (name, w) in &weights {
                if !seen.contains(name) {
                    return Err(Error::value(
                        format!("mixer.init.{name}"),
                        format!(
                            "no source named {name:?} (sources: {})",
                            self.source_names().join(", ")
                        ),
                    ));
                }
                if !(w.is_finite() && *w >= 0.0) {
                    return Err(Error::value(
                        format!("mixer.init.{name}"),
                        format!("must be >= 0 (got {w})"),
                    ));
                }
            }
            if weights.values().sum::<f64>() <= 0.0 {
                return Err(Error::value(
                    "mixer.init",
                    "explicit weights must have a positive sum",
                ));
            }
        }

        let fm = &self.mixer.fastmix;
        positive("mixer.fastmix.lr", fm.lr)?;
        unit_open("mixer.fastmix.ema", fm.ema)?;
        at_least_one("mixer.fastmix.val_batches", fm.val_batches)?;
        let tm = &self.mixer.tikmix;
        at_least_one("mixer.tikmix.samples_per_source", tm.samples_per_source)?;
        positive("mixer.tikmix.tau", tm.tau)?;
        if !(tm.blend > 0.0 && tm.blend <= 1.0) {
            return Err(Error::value(
                "mixer.tikmix.blend",
                format!("must be in (0, 1] (got {})", tm.blend),
            ));
        }
        at_least_one("mixer.tikmix.val_batches", tm.val_batches)?;
        let tmm = &self.mixer.tikmix_m;
        at_least_one("mixer.tikmix-m.samples_per_source", tmm.samples_per_source)?;
        at_least_one("mixer.tikmix-m.val_batches", tmm.val_batches)?;
        at_least_one("mixer.tikmix-m.candidates", tmm.candidates)?;
        positive("mixer.tikmix-m.concentration", tmm.concentration)?;
        positive("mixer.tikmix-m.step_scale", tmm.step_scale)?;
        at_least_one("mixer.tikmix-m.history", tmm.history)?;
        at_least_one("mixer.tikmix-m.pool", tmm.pool)?;
        at_least_one("mixer.tikmix-m.top_k", tmm.top_k)?;
        if tmm.top_k > tmm.pool {
            return Err(Error::value(
                "mixer.tikmix-m.top_k",
                format!(
                    "must be <= mixer.tikmix-m.pool = {} (got {})",
                    tmm.pool, tmm.top_k
                ),
            ));
        }
        if !(tmm.blend > 0.0 && tmm.blend <= 1.0) {
            return Err(Error::value(
                "mixer.tikmix-m.blend",
                format!("must be in (0, 1] (got {})", tmm.blend),
            ));
        }
        unit_open("mixer.odm.alpha", self.mixer.odm.alpha)?;
        let ado = &self.mixer.ado;
        unit_open("mixer.ado.credit_smoothing", ado.credit_smoothing)?;
        unit_open("mixer.ado.smoothing", ado.smoothing)?;
        if !(ado.credit_power.is_finite() && ado.credit_power >= 0.0) {
            return Err(Error::value(
                "mixer.ado.credit_power",
                format!("must be >= 0 (got {})", ado.credit_power),
            ));
        }
        if ado.min_points < 2 {
            return Err(Error::value(
                "mixer.ado.min_points",
                format!("must be at least 2 (got {})", ado.min_points),
            ));
        }
        if ado.history < ado.min_points {
            return Err(Error::value(
                "mixer.ado.history",
                format!(
                    "must be >= mixer.ado.min_points = {} (got {})",
                    ado.min_points, ado.history
                ),
            ));
        }
        let dr = &self.mixer.doremi;
        if dr.reference.is_empty() {
            at_least_one("mixer.doremi.reference_steps", dr.reference_steps)?;
        }
        positive("mixer.doremi.eta", dr.eta)?;
        unit_open("mixer.doremi.smoothing", dr.smoothing)?;
        at_least_one("mixer.doremi.samples_per_source", dr.samples_per_source)?;

        // [demix]
        let dm = &self.demix;
        at_least_one("demix.component_steps", dm.component_steps)?;
        if !(0.0..1.0).contains(&dm.general_fraction) {
            return Err(Error::value(
                "demix.general_fraction",
                format!("must be in [0, 1) (got {})", dm.general_fraction),
            ));
        }
        positive("demix.prior_temperature", dm.prior_temperature)?;
        if !(dm.max_ratio.is_finite() && dm.max_ratio >= 1.0) {
            return Err(Error::value(
                "demix.max_ratio",
                format!("must be >= 1 (got {})", dm.max_ratio),
            ));
        }
        if dm.concentrations.is_empty() {
            return Err(Error::value("demix.concentrations", "must not be empty"));
        }
        for (i, &c) in dm.concentrations.iter().enumerate() {
            positive(&format!("demix.concentrations.{i}"), c)?;
        }
        at_least_one("demix.first_round", dm.first_round)?;
        at_least_one("demix.rounds", dm.rounds)?;
        at_least_one("demix.pool", dm.pool)?;
        at_least_one("demix.top_k", dm.top_k)?;
        if dm.top_k > dm.pool {
            return Err(Error::value(
                "demix.top_k",
                format!("must be <= demix.pool = {} (got {})", dm.pool, dm.top_k),
            ));
        }

        // [target]
        self.target.validate(&self.data.sources)?;
        Ok(())
    }
}

/// A source's or target set's name: letters, digits, '_' and '-', and not a reserved word
/// (names become JSON keys and CSV columns beside "step").
pub(crate) fn check_name(key: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::value(
            key,
            format!("must be non-empty and use only letters, digits, '_' and '-' (got {name:?})"),
        ));
    }
    if name == "all" || name == "step" {
        return Err(Error::value(key, format!("{name:?} is reserved")));
    }
    Ok(())
}

/// Applies one `key=value` override to the parsed TOML table. The value is read as TOML
/// (`3e-4`, `true`, `"x"`, `{ a = 1 }`); anything that does not parse is taken as a string,
/// so `--set run.out_dir=runs/x` works unquoted.
fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let (key, raw) = item.split_once('=').ok_or_else(|| Error::ConfigParse {
        file: "--set".into(),
        message: format!("expected key=value (got {item:?})"),
    })?;
    let key = key.trim();
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut parsed) => parsed.remove("v").expect("the parsed table has key v"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::ConfigParse {
            file: "--set".into(),
            message: format!("malformed key {key:?}"),
        });
    }
    let mut current = table;
    for (depth, part) in parts.iter().enumerate() {
        let last = depth + 1 == parts.len();
        if last {
            current.insert(part.to_string(), value);
            return Ok(());
        }
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                // data.sources.0.path: index into an array of tables.
                let index: usize = parts[depth + 1].parse().map_err(|_| Error::ConfigParse {
                    file: "--set".into(),
                    message: format!(
                        "{}: is an array; the next part of the key must be an index",
                        parts[..=depth].join(".")
                    ),
                })?;
                let len = items.len();
                let item = items.get_mut(index).ok_or_else(|| Error::ConfigParse {
                    file: "--set".into(),
                    message: format!(
                        "{}: index {index} out of range (the array has {len} entries)",
                        parts[..=depth].join(".")
                    ),
                })?;
                if depth + 2 == parts.len() {
                    *item = value;
                    return Ok(());
                }
                match item {
                    toml::Value::Table(t) => {
                        // Skip the index part on the next iteration by recursing.
                        let rest = parts[depth + 2..].join(".");
                        let mut sub = std::mem::take(t);
                        let result = apply_override(&mut sub, &format!("{rest}={raw}"));
                        *t = sub;
                        return result;
                    }
                    _ => {
                        return Err(Error::ConfigParse {
                            file: "--set".into(),
                            message: format!("{key}: not a table"),
                        })
                    }
                }
            }
            _ => {
                return Err(Error::ConfigParse {
                    file: "--set".into(),
                    message: format!("{}: is not a table", parts[..=depth].join(".")),
                })
            }
        };
    }
    unreachable!("the loop returns at the last part")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[data]
[[data.sources]]
name = "a"
path = "x"
[[data.sources]]
name = "b"
path = "y"
"#;

    #[test]
    fn defaults_fill_in() {
        let c = Config::from_toml_str(MINIMAL, "t.toml", &[]).unwrap();
        assert_eq!(c.train.steps, 300);
        assert_eq!(c.data.sources[0].val_fraction, 0.05);
        assert_eq!(c.mixture_init().unwrap(), MixtureInit::Uniform);
        assert!((c.min_weight() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn overrides_apply() {
        let sets = [
            "train.steps=40".to_string(),
            "train.lr=1e-3".into(),
            "run.out_dir=runs/x".into(),
            "mixer.init={a = 3, b = 1}".into(),
            "data.sources.1.val_fraction=0.2".into(),
        ];
        let c = Config::from_toml_str(MINIMAL, "t.toml", &sets).unwrap();
        assert_eq!(c.train.steps, 40);
        assert_eq!(c.train.lr, 1e-3);
        assert_eq!(c.run.out_dir, PathBuf::from("runs/x"));
        assert_eq!(c.data.sources[1].val_fraction, 0.2);
        match c.mixture_init().unwrap() {
            MixtureInit::Explicit(w) => assert_eq!(w["a"], 3.0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_key_names_its_path() {
        let err = Config::from_toml_str(MINIMAL, "t.toml", &["train.stepz=3".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("train") && err.contains("stepz"), "{err}");
    }

    #[test]
    fn bad_value_names_its_key() {
        let err = Config::from_toml_str(MINIMAL, "t.toml", &["train.lr=-1".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "t.toml: train.lr: must be > 0 (got -1)");
    }

    #[test]
    fn resolved_config_round_trips() {
        let sets = ["mixer.init={a = 3, b = 1}".to_string()];
        let c = Config::from_toml_str(MINIMAL, "t.toml", &sets).unwrap();
        let again = Config::from_toml_str(&c.to_toml(), "resolved.toml", &[]).unwrap();
        assert_eq!(c, again);
        assert_eq!(c.hash(), again.hash());
    }
}
