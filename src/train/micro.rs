//! A step's passes: one micro-batch's rows (`MicroBatch`), what a forward/backward pass
//! reads (`PassContext`) and produces (`MicroOut`), the step's sums over its passes
//! (`StepSums`), and how a step's sequences are weighted and split into micro-batches.

use burn::optim::GradientsParams;
use burn::prelude::*;

use super::evaluator::batch_tensors;
use super::measure::excess_by_sequence;
use super::single_pass::{add_source_grads, source_gradients, RawSourceGrads, SinglePass};
use crate::backend::TrainBackend;
use crate::mixer::ApplyMode;
use crate::model::{token_losses, Gpt, Trace};

/// What one micro-batch's forward and backward produced.
pub(super) struct MicroOut<B: TrainBackend> {
    pub(super) grads: GradientsParams,
    /// Mean token loss of each sequence. [n]
    pub(super) seq_loss: Vec<f32>,
    pub(super) probe: MicroProbe<B>,
    /// Per sequence, Σ over its tokens of max(ℓ_θ − ℓ_ref, 0), when the step measures it.
    pub(super) excess: Option<Vec<f32>>,
    /// Raw per-source gradients from the traced backward (`PassContext::source_grads`).
    pub(super) source_grads: Option<RawSourceGrads<B::InnerBackend>>,
}

/// A micro-batch's share of ⟨g_val, g_k⟩.
pub(super) enum MicroProbe<B: TrainBackend> {
    None,
    /// ⟨g_val, this micro-batch's gradient⟩; all its sequences are of one source.
    Homogeneous(f64),
    /// Per source, from the traced backward. [k]
    SinglePass(Tensor<B::InnerBackend, 1>),
}

/// A step's sums over its passes (then over ranks), besides the gradient.
pub(super) struct StepSums<B: TrainBackend> {
    /// The step's weighted mean loss.
    pub(super) loss: f64,
    /// Per source: Σ of its sequences' mean token loss, and their count. [k]
    pub(super) by_source: Vec<(f64, u64)>,
    /// Per source: Σ over its sequences' tokens of max(ℓ_θ − ℓ_ref, 0), with `excess`. [k]
    pub(super) excess: Vec<f64>,
    /// Per source: Σ ⟨g_val, Δ buffer⟩ and Σ w_i of its sequences. [k]
    pub(super) dots: Vec<(f64, f64)>,
    /// Single-pass: Σ over passes of the per-source dots, kept on the device and read once
    /// after the last pass. [k]
    pub(super) single_pass_dots: Option<Tensor<B::InnerBackend, 1>>,
    /// Σ over passes of the raw per-source gradients, when the step measures them.
    pub(super) source_grads: Option<RawSourceGrads<B::InnerBackend>>,
}

impl<B: TrainBackend> StepSums<B> {
    pub(super) fn new(k: usize) -> Self {
        StepSums {
            loss: 0.0,
            by_source: vec![(0.0, 0); k],
            excess: vec![0.0; k],
            dots: vec![(0.0, 0.0); k],
            single_pass_dots: None,
            source_grads: None,
        }
    }

    /// Adds one pass's losses and statistics; returns its gradient for the accumulator.
    /// `poison`: the `nonfinite-loss` fault, the first row's loss is NaN.
    pub(super) fn add(
        &mut self,
        micro: &MicroBatch,
        out: MicroOut<B>,
        weight_total: f64,
        poison: bool,
    ) -> GradientsParams {
        if let Some(per_sequence) = &out.excess {
            for (&s, &e) in micro.sources.iter().zip(per_sequence) {
                self.excess[s] += e as f64;
            }
        }
        if let Some(grads) = out.source_grads {
            match &mut self.source_grads {
                Some(total) => add_source_grads(total, grads),
                None => self.source_grads = Some(grads),
            }
        }
        match out.probe {
            MicroProbe::None => {}
            MicroProbe::Homogeneous(dot) => self.dots[micro.sources[0]].0 += dot,
            MicroProbe::SinglePass(micro_dots) => {
                self.single_pass_dots = Some(match self.single_pass_dots.take() {
                    Some(total) => total + micro_dots,
                    None => micro_dots,
                });
            }
        }
        let rows = micro.sources.iter().zip(&out.seq_loss).zip(&micro.weights);
        for (i, ((&s, &l), &w)) in rows.enumerate() {
            let l = if poison && micro.first_row + i == 0 {
                f32::NAN
            } else {
                l
            };
            self.by_source[s].0 += l as f64;
            self.by_source[s].1 += 1;
            self.loss += l as f64 * w / weight_total;
        }
        out.grads
    }

    /// Moves the single-pass dots, summed on the device, into `dots`.
    pub(super) fn read_single_pass_dots(&mut self) {
        let Some(total) = self.single_pass_dots.take() else {
            return;
        };
        let per_source: Vec<f64> = total
            .into_data()
            .convert::<f64>()
            .to_vec()
            .expect("converted to f64");
        for (dot, value) in self.dots.iter_mut().zip(per_source) {
            dot.0 += value;
        }
    }

    /// ⟨g_val, g_k⟩ per source. The buffer grew by (Σ_{i∈k} w_i / W) ∇(mean loss of k) when
    /// source k's sequences share one weight: undo that factor.
    pub(super) fn grad_dots(&self, weight_total: f64) -> Vec<Option<f64>> {
        self.dots
            .iter()
            .map(|&(dot, w)| (w > 0.0).then(|| dot * weight_total / w))
            .collect()
    }

    /// DoReMi's λ_k: the mean excess loss per token of source k's sequences.
    pub(super) fn excess_per_token(&self, counts: &[usize], seq_len: usize) -> Vec<Option<f64>> {
        self.excess
            .iter()
            .zip(counts)
            .map(|(&e, &n)| (n > 0).then(|| e / (n * seq_len) as f64))
            .collect()
    }
}

/// One micro-batch of a step, drawn: this rank's rows of it.
pub(super) struct MicroBatch {
    /// Each row's source.
    pub(super) sources: Vec<usize>,
    /// Each row's loss weight (of the step's total).
    pub(super) weights: Vec<f64>,
    /// Where this rank's rows start in the whole micro-batch.
    pub(super) first_row: usize,
    pub(super) batch: crate::data::Batch,
}

impl MicroBatch {
    /// The first `rows` rows and the rest, as two passes.
    pub(super) fn split_at(self, rows: usize) -> [MicroBatch; 2] {
        let n = self.sources.len();
        let part = |range: std::ops::Range<usize>| MicroBatch {
            sources: self.sources[range.clone()].to_vec(),
            weights: self.weights[range.clone()].to_vec(),
            first_row: self.first_row + range.start,
            batch: self.batch.rows(range),
        };
        [part(0..rows), part(rows..n)]
    }
}

/// An odd number of passes becomes even: the first of the largest is split in two
/// near-equal halves, which move to the front so that they run side by side as one pair
/// (nothing to split when every pass has one row).
pub(super) fn pair_up_passes(passes: &mut Vec<MicroBatch>) {
    if passes.len().is_multiple_of(2) {
        return;
    }
    let Some((largest, rows)) = passes
        .iter()
        .map(|p| p.sources.len())
        .enumerate()
        .rev()
        .max_by_key(|&(_, rows)| rows)
    else {
        return;
    };
    if rows < 2 {
        return;
    }
    let [first, second] = passes.remove(largest).split_at(rows.div_ceil(2));
    passes.insert(0, second);
    passes.insert(0, first);
}

/// What a micro-batch's forward and backward pass reads; shared by passes running side by
/// side, so nothing in it changes during a pass.
pub(super) struct PassContext<'a, B: TrainBackend> {
    /// DoReMi's reference model, for excess losses.
    pub(super) reference: Option<&'a Gpt<B::InnerBackend>>,
    pub(super) device: &'a B::Device,
    pub(super) k: usize,
    /// Σ of the step's loss weights.
    pub(super) weight_total: f64,
    /// Measure DoReMi's excess loss of each sequence (one reference forward).
    pub(super) excess: bool,
    /// Measure each source's gradient from the traced backward (TiKMiX-M's probed G_k).
    pub(super) source_grads: bool,
}

impl<B: TrainBackend> PassContext<'_, B> {
    /// Forward and backward of one micro-batch on `model` with its per-sequence loss weights; with
    /// `traced` (the step's P ⊙ g_val), the micro-batch's ⟨P ⊙ g_val, g_k⟩ per source from the
    /// traced backward (single-pass statistics); with `excess`, DoReMi's excess loss per
    /// sequence.
    pub(super) fn run(
        &self,
        model: &Gpt<B>,
        micro: &MicroBatch,
        traced: Option<&GradientsParams>,
    ) -> MicroOut<B> {
        let batch = &micro.batch;
        let n = batch.len();
        let seq = batch.seq_len;
        let (inputs, targets) = batch_tensors::<B>(batch, self.device);
        let mut trace = (traced.is_some() || self.source_grads).then(Trace::new);
        let logits = model.forward_traced(inputs, trace.as_mut()); // [n · seq, vocab]
        let token_loss = token_losses(logits, targets); // [n · seq]
        let excess = match (self.excess, self.reference) {
            (true, Some(reference)) => Some(excess_by_sequence(
                reference,
                batch,
                token_loss.clone().inner(),
                self.device,
            )),
            _ => None,
        };
        let seq_loss = token_loss.reshape([n, seq]).mean_dim(1).reshape([n]); // [n]
        let w: Vec<f32> = micro
            .weights
            .iter()
            .map(|w| (w / self.weight_total) as f32)
            .collect();
        let w = Tensor::<B, 1>::from_data(TensorData::new(w, [n]), self.device);
        let mut raw_grads = (seq_loss.clone() * w).sum().backward();
        let mut probe = MicroProbe::None;
        let mut source_grads = None;
        if let Some(trace) = trace {
            let seg = self.token_sources(micro, seq);
            match traced {
                Some(target) => {
                    let stats = SinglePass {
                        target,
                        backend: std::marker::PhantomData,
                    };
                    let dots = stats.source_dots(trace, &mut raw_grads, seg, self.k);
                    probe = MicroProbe::SinglePass(dots);
                }
                None => {
                    let vocab = model.tok_emb.weight.dims()[0];
                    let grads = source_gradients(trace, &mut raw_grads, seg, self.k, vocab);
                    source_grads = Some(grads);
                }
            }
        }
        let grads = GradientsParams::from_grads(raw_grads, model);
        // Host sync: per-sequence losses for the per-source report.
        let seq_loss: Vec<f32> = seq_loss
            .inner()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("converted to f32");
        MicroOut {
            grads,
            seq_loss,
            probe,
            excess,
            source_grads,
        }
    }

    /// Each token's source: token t belongs to sequence t / seq. [n · seq]
    fn token_sources(&self, micro: &MicroBatch, seq: usize) -> Tensor<B::InnerBackend, 1, Int> {
        let seg: Vec<i64> = micro
            .sources
            .iter()
            .flat_map(|&s| std::iter::repeat_n(s as i64, seq))
            .collect();
        let n = seg.len();
        Tensor::from_data(TensorData::new(seg, [n]), self.device)
    }
}

/// Each sequence's loss weight under `apply`: 1 (sample), p_k (reweight), or p_k n / n_k
/// (hybrid: the draw follows p up to rounding; the weight corrects the rounding only).
pub(super) fn sequence_weights(
    sources: &[usize],
    weights: &[f64],
    counts: &[usize],
    apply: ApplyMode,
) -> Vec<f64> {
    let n = sources.len() as f64;
    sources
        .iter()
        .map(|&s| match apply {
            ApplyMode::Sample => 1.0,
            ApplyMode::Reweight => weights[s],
            ApplyMode::Hybrid => weights[s] * n / counts[s] as f64,
        })
        .collect()
}

/// Index ranges of a step's micro-batches over `sources` (sorted by source): chunks of
/// `batch_size`, or, when `homogeneous`, chunks that never mix two sources.
pub(super) fn micro_batch_ranges(
    sources: &[usize],
    batch_size: usize,
    homogeneous: bool,
) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < sources.len() {
        let mut end = (start + batch_size).min(sources.len());
        if homogeneous {
            end = start
                + sources[start..end]
                    .iter()
                    .take_while(|&&s| s == sources[start])
                    .count();
        }
        ranges.push(start..end);
        start = end;
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Batch;

    /// A pass of `rows` rows of source `source`, its tokens numbering its rows from `first`.
    fn pass(source: usize, rows: usize, first: usize) -> MicroBatch {
        let seq_len = 2;
        MicroBatch {
            sources: vec![source; rows],
            weights: vec![0.5; rows],
            first_row: first,
            batch: Batch {
                tokens: (first..first + rows).flat_map(|r| [r as i32; 3]).collect(),
                sources: vec![source; rows],
                seq_len,
            },
        }
    }

    fn shape(passes: &[MicroBatch]) -> Vec<(usize, usize, usize)> {
        passes
            .iter()
            .map(|p| (p.sources[0], p.sources.len(), p.first_row))
            .collect()
    }

    /// [3, 3, 4, 3, 3] becomes [2, 2, 3, 3, 3, 3]: the 4 split in halves that run first, each
    /// half with its own rows (tokens and first row) and nothing else moved.
    #[test]
    fn an_odd_number_of_passes_splits_the_largest_into_a_leading_pair() {
        let mut passes: Vec<MicroBatch> = [3, 3, 4, 3, 3]
            .iter()
            .enumerate()
            .scan(0, |first, (source, &rows)| {
                *first += rows;
                Some(pass(source, rows, *first - rows))
            })
            .collect();
        pair_up_passes(&mut passes);
        assert_eq!(
            shape(&passes),
            vec![
                (2, 2, 6),
                (2, 2, 8),
                (0, 3, 0),
                (1, 3, 3),
                (3, 3, 10),
                (4, 3, 13)
            ]
        );
        assert_eq!(passes[1].batch.tokens, vec![8, 8, 8, 9, 9, 9]);
        // Even already, or nothing to split: unchanged.
        let mut even = vec![pass(0, 3, 0), pass(1, 5, 3)];
        pair_up_passes(&mut even);
        assert_eq!(shape(&even), vec![(0, 3, 0), (1, 5, 3)]);
        let mut ones = vec![pass(0, 1, 0), pass(1, 1, 1), pass(2, 1, 2)];
        pair_up_passes(&mut ones);
        assert_eq!(shape(&ones), vec![(0, 1, 0), (1, 1, 1), (2, 1, 2)]);
        // The first of equal largest.
        let mut tied = vec![pass(0, 2, 0), pass(1, 3, 2), pass(2, 3, 5)];
        pair_up_passes(&mut tied);
        assert_eq!(
            shape(&tied),
            vec![(1, 2, 2), (1, 1, 4), (0, 2, 0), (2, 3, 5)]
        );
    }
}
