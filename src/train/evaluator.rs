//! Evaluation: a model's mean token loss on the fixed validation windows of every training
//! source and target set. Needs the data and a model only (no optimizer, no mixer), so
//! `mixtrain eval` and DeMix's proxy scoring use it as the training loop does.

use burn::prelude::*;
use mixtrain_kernels::StatKernels;

use super::passes::{forward_passes, pass_ranges};
use crate::config::Config;
use crate::data::{validation_windows, Batch, Shard, Source};
use crate::model::{token_losses, Gpt};
use crate::target::Target;

/// Mean token losses on the fixed validation windows: per training source (its validation
/// split) and per target set.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Evaluation {
    pub(crate) sources: Vec<f64>,
    pub(crate) sets: Vec<f64>,
}

impl Evaluation {
    /// The target loss: the mean over the target's members.
    pub(crate) fn target(&self, target: &Target) -> f64 {
        target.mean(&self.sources, &self.sets)
    }

    /// The mean over training sources.
    pub(crate) fn mean(&self) -> f64 {
        self.sources.iter().sum::<f64>() / self.sources.len() as f64
    }
}

/// The start offsets of each source's and each target set's validation windows: up to
/// `train.eval_batches × train.batch_size` windows spread evenly over each validation split,
/// the same every time.
pub(crate) struct Evaluator {
    seq_len: usize,
    batch_size: usize,
    /// `train.cpu_pass_size`.
    pass_size: usize,
    source_windows: Vec<Vec<usize>>,
    set_windows: Vec<Vec<usize>>,
}

impl Evaluator {
    pub(crate) fn new(config: &Config, sources: &[Source], target_sets: &[Source]) -> Self {
        let seq_len = config.data.seq_len;
        let count = config.train.eval_batches * config.train.batch_size;
        let windows = |data: &[Source]| -> Vec<Vec<usize>> {
            data.iter()
                .map(|s| validation_windows(s, seq_len, count))
                .collect()
        };
        Evaluator {
            seq_len,
            batch_size: config.train.batch_size,
            pass_size: config.train.cpu_pass_size,
            source_windows: windows(sources),
            set_windows: windows(target_sets),
        }
    }

    /// `model`'s losses on the windows of `sources` and `target_sets` (the ones it was built
    /// for, in the same order).
    pub(crate) fn evaluate<B: StatKernels>(
        &self,
        model: &Gpt<B>,
        sources: &[Source],
        target_sets: &[Source],
        device: &B::Device,
    ) -> Evaluation {
        let totals = self.token_loss_totals(model, sources, target_sets, device, (0, 1));
        self.evaluation_of_totals(&totals)
    }

    /// Σ token losses over the windows of each source, then each target set, of the rows
    /// `rank` of `world` computes in every batch of windows (`distributed::share`); the sums
    /// over ranks go to `evaluation_of_totals`.
    pub(crate) fn token_loss_totals<B: StatKernels>(
        &self,
        model: &Gpt<B>,
        sources: &[Source],
        target_sets: &[Source],
        device: &B::Device,
        (rank, world): (usize, usize),
    ) -> Vec<f64> {
        let streams: Vec<(&Shard, &[usize])> = sources
            .iter()
            .zip(&self.source_windows)
            .chain(target_sets.iter().zip(&self.set_windows))
            .map(|(data, starts)| (&data.val, starts.as_slice()))
            .collect();
        self.stream_totals(model, &streams, device, (rank, world))
    }

    /// The guard's check (`mixer.guard.windows`): per member of `target`, the Σ token losses
    /// over `windows / members` (at least one) of its evaluation windows, spread over them, and
    /// the number of windows; this rank's rows only, as `token_loss_totals`.
    pub(crate) fn target_check_totals<B: StatKernels>(
        &self,
        model: &Gpt<B>,
        (sources, target_sets): (&[Source], &[Source]),
        target: &Target,
        windows: usize,
        device: &B::Device,
        (rank, world): (usize, usize),
    ) -> (Vec<f64>, Vec<usize>) {
        let per_member = (windows / target.len().max(1)).max(1);
        let subset = |starts: &Vec<usize>| -> Vec<usize> {
            let stride = (starts.len() / per_member).max(1);
            starts
                .iter()
                .step_by(stride)
                .take(per_member)
                .copied()
                .collect()
        };
        let chosen: Vec<(&Shard, Vec<usize>)> = target
            .sources
            .iter()
            .map(|&k| (&sources[k].val, subset(&self.source_windows[k])))
            .chain(
                target
                    .sets
                    .iter()
                    .map(|&j| (&target_sets[j].val, subset(&self.set_windows[j]))),
            )
            .collect();
        let streams: Vec<(&Shard, &[usize])> =
            chosen.iter().map(|(s, w)| (*s, w.as_slice())).collect();
        let counts = chosen.iter().map(|(_, w)| w.len()).collect();
        (
            self.stream_totals(model, &streams, device, (rank, world)),
            counts,
        )
    }

    /// The mean over members of the check's mean token losses, from `target_check_totals`
    /// (summed over ranks).
    pub(crate) fn target_check_loss(&self, totals: &[f64], counts: &[usize]) -> f64 {
        let seq = self.seq_len as f64;
        let means = totals
            .iter()
            .zip(counts)
            .map(|(t, &n)| t / (n as f64 * seq));
        means.sum::<f64>() / totals.len() as f64
    }

    /// Σ token losses over each stream's windows, of the rows `rank` of `world` computes in
    /// every batch of windows (`distributed::share`).
    fn stream_totals<B: StatKernels>(
        &self,
        model: &Gpt<B>,
        streams: &[(&Shard, &[usize])],
        device: &B::Device,
        (rank, world): (usize, usize),
    ) -> Vec<f64> {
        // Every batch of windows of every stream is one job: the forward passes run side by
        // side (`passes`), each stream's sums are added in window order.
        // One job per pass: on the CPU a batch of windows runs as passes of at most
        // `train.cpu_pass_size` (`passes::pass_ranges`); a batch's token losses are put back
        // together before they are summed, so the sums are those of one pass.
        let mut jobs = Vec::new();
        let mut batches = 0;
        for (i, (stream, starts)) in streams.iter().enumerate() {
            for chunk in starts.chunks(self.batch_size) {
                let chunk = &chunk[crate::distributed::share(chunk.len(), rank, world)];
                if chunk.is_empty() {
                    continue;
                }
                for rows in pass_ranges::<B>(chunk.len(), self.pass_size) {
                    jobs.push((i, batches, *stream, &chunk[rows]));
                }
                batches += 1;
            }
        }
        let seq = self.seq_len;
        let losses = forward_passes::<B, _, _, _>(&jobs, |&(.., stream, windows)| {
            let mut tokens = Vec::with_capacity(windows.len() * (seq + 1));
            for &start in windows {
                stream.extend_window(start, seq + 1, &mut tokens);
            }
            let batch = Batch {
                tokens,
                sources: vec![0; windows.len()],
                seq_len: seq,
            };
            let (inputs, targets) = batch_tensors::<B>(&batch, device);
            token_losses(model.forward(inputs), targets) // [windows · seq]
        });
        let mut totals = vec![0.0f64; streams.len()];
        let mut losses = jobs.iter().zip(losses).peekable();
        while let Some((&(i, batch, ..), first)) = losses.next() {
            let mut parts = vec![first];
            while let Some((_, part)) = losses.next_if(|((_, b, ..), _)| *b == batch) {
                parts.push(part);
            }
            totals[i] += Tensor::cat(parts, 0).sum().into_scalar().elem::<f64>();
        }
        totals
    }

    /// Mean token losses from `token_loss_totals` (summed over ranks).
    pub(crate) fn evaluation_of_totals(&self, totals: &[f64]) -> Evaluation {
        let seq = self.seq_len as f64;
        let mean = |total: &f64, starts: &Vec<usize>| total / (starts.len() as f64 * seq);
        let k = self.source_windows.len();
        Evaluation {
            sources: totals[..k]
                .iter()
                .zip(&self.source_windows)
                .map(|(t, w)| mean(t, w))
                .collect(),
            sets: totals[k..]
                .iter()
                .zip(&self.set_windows)
                .map(|(t, w)| mean(t, w))
                .collect(),
        }
    }
}

/// [n, seq_len + 1] tokens → inputs [n, seq_len] and targets [n · seq_len].
pub(crate) fn batch_tensors<B: Backend>(
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
    let n = batch.len();
    let seq = batch.seq_len;
    let tokens =
        Tensor::<B, 2, Int>::from_data(TensorData::new(batch.tokens.clone(), [n, seq + 1]), device);
    let inputs = tokens.clone().narrow(1, 0, seq); // [n, seq]
    let targets = tokens.narrow(1, 1, seq).reshape([n * seq]); // [n · seq]
    (inputs, targets)
}
