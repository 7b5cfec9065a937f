//! The sampler: mixture weights → which sources fill a step → token windows.
//!
//! Each source's training stream is cut into non-overlapping windows of `seq_len + 1` tokens,
//! visited in a fresh random order each epoch (an epoch = every window of that source once).
//! The whole state is the RNG and, per source, (epoch, position); the visiting order is
//! recomputed from (seed, source, epoch), so a checkpoint restores the exact batch stream.

use super::order::{Order, TABLE_MAX_WINDOWS};
use super::shard::Shard;
use super::source::Source;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// `mixer.apply`: how the sampler turns the mixture into a step's sequences.
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cursor {
    pub(crate) epoch: u64,
    pub(crate) position: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub(crate) rng: Rng,
    pub(crate) cursors: Vec<Cursor>,
    /// Draws the random windows of mixer probes (fresh validation batches, per-source
    /// gradient samples); separate so probing never shifts the training stream.
    pub(crate) probe_rng: Rng,
}

/// Sequences of one micro-batch: `tokens` is [n, seq_len + 1] row-major (inputs are the first
/// seq_len, targets the last seq_len), `sources[i]` is the source of row i.
#[derive(Debug, Clone)]
pub struct Batch {
    pub(crate) tokens: Vec<i32>,
    pub(crate) sources: Vec<usize>,
    pub(crate) seq_len: usize,
}

impl Batch {
    pub(crate) fn len(&self) -> usize {
        self.sources.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Rows `rows` of the batch, as a batch.
    pub(crate) fn rows(&self, rows: std::ops::Range<usize>) -> Batch {
        let width = self.seq_len + 1;
        Batch {
            tokens: self.tokens[rows.start * width..rows.end * width].to_vec(),
            sources: self.sources[rows].to_vec(),
            seq_len: self.seq_len,
        }
    }
}

pub struct Sampler {
    seed: u64,
    seq_len: usize,
    windows_per_source: Vec<u64>,
    state: SamplerState,
    /// Per source: (epoch, window order) of the current epoch; derived, not state.
    orders: Vec<Option<(u64, Order)>>,
    /// Sources with more windows than this visit them in a keyed order (no table).
    table_max_windows: u64,
}

impl Sampler {
    pub(crate) fn new(seed: u64, seq_len: usize, sources: &[Source]) -> Sampler {
        let windows_per_source = sources
            .iter()
            .map(|s| ((s.train.len() - 1) / seq_len) as u64)
            .collect();
        Sampler {
            seed,
            seq_len,
            windows_per_source,
            state: SamplerState {
                rng: Rng::new(seed, 0x5A4D_504C),
                probe_rng: Rng::new(seed, 0x5052_4F42),
                cursors: vec![
                    Cursor {
                        epoch: 0,
                        position: 0
                    };
                    sources.len()
                ],
            },
            orders: (0..sources.len()).map(|_| None).collect(),
            table_max_windows: TABLE_MAX_WINDOWS,
        }
    }

    pub(crate) fn state(&self) -> &SamplerState {
        &self.state
    }

    /// Per source, the passes over its training windows so far (1.5: one whole pass and half
    /// of the next).
    pub(crate) fn epochs(&self) -> Vec<f64> {
        self.state
            .cursors
            .iter()
            .zip(&self.windows_per_source)
            .map(|(cursor, &n)| cursor.epoch as f64 + cursor.position as f64 / n.max(1) as f64)
            .collect()
    }

    /// Restores a checkpointed state; false if it does not fit these sources.
    pub(crate) fn restore(&mut self, state: SamplerState) -> bool {
        let fits = state.cursors.len() == self.windows_per_source.len()
            && state
                .cursors
                .iter()
                .zip(&self.windows_per_source)
                .all(|(c, n)| c.position < *n);
        if fits {
            self.state = state;
        }
        fits
    }

    /// Sources of the `n` sequences of one step, grouped by source (ascending).
    /// `sample`: each drawn with probability `weights[k]`. `reweight`: as balanced as possible
    /// (n / K each, the remainder to distinct random sources); the loss carries the weights.
    /// `hybrid`: a systematic draw, n_k within 1 of n · weights[k].
    pub(crate) fn draw_sources(
        &mut self,
        weights: &[f64],
        apply: ApplyMode,
        n: usize,
    ) -> Vec<usize> {
        let k = weights.len();
        let rng = &mut self.state.rng;
        let mut sources = match apply {
            ApplyMode::Sample => (0..n).map(|_| rng.categorical(weights)).collect::<Vec<_>>(),
            ApplyMode::Reweight => {
                let mut out: Vec<usize> = (0..n / k).flat_map(|_| 0..k).collect();
                let mut order: Vec<usize> = (0..k).collect();
                rng.shuffle(&mut order);
                out.extend(order.into_iter().take(n % k));
                out
            }
            ApplyMode::Hybrid => {
                // Systematic draw: n evenly spaced points with one random offset on the
                // cumulative weights; source k gets floor or ceil of n p_k.
                let offset = rng.next_f64();
                let total: f64 = weights.iter().sum();
                let mut out = Vec::with_capacity(n);
                let mut cumulative = 0.0;
                let mut next_point = 0usize;
                for (source, &w) in weights.iter().enumerate() {
                    cumulative += w / total * n as f64;
                    let last = source + 1 == weights.len();
                    while next_point < n && (last || (next_point as f64 + offset) < cumulative) {
                        out.push(source);
                        next_point += 1;
                    }
                }
                out
            }
        };
        sources.sort_unstable();
        sources
    }

    /// Like `fill`, but the batch holds only the sequences at `share` (a rank's part of the
    /// micro-batch); the cursors move past all of `sources`, as on every other rank.
    pub(crate) fn fill_share(
        &mut self,
        sources: &[usize],
        data: &[Source],
        share: std::ops::Range<usize>,
    ) -> Batch {
        let window = self.seq_len + 1;
        let mut tokens = Vec::with_capacity(share.len() * window);
        for (i, &k) in sources.iter().enumerate() {
            let index = self.next_window(k);
            if share.contains(&i) {
                data[k]
                    .train
                    .extend_window(index as usize * self.seq_len, window, &mut tokens);
            }
        }
        Batch {
            tokens,
            sources: sources[share].to_vec(),
            seq_len: self.seq_len,
        }
    }

    /// Like `probe_batch`, but the batch holds only the rows at `share` (a rank's part); the
    /// random offsets of all `n` rows are drawn, as on every other rank.
    pub(crate) fn probe_batch_share(
        &mut self,
        streams: &[&Shard],
        n: usize,
        share: std::ops::Range<usize>,
    ) -> Batch {
        random_windows(&mut self.state.probe_rng, self.seq_len, streams, n, share)
    }

    /// Like `probe_batch_share`, but the same windows every call for the same `stream_id`
    /// (drawn from the run's seed, not from the sampler's state): a fixed pool of sequences.
    pub(crate) fn fixed_batch_share(
        &self,
        streams: &[&Shard],
        n: usize,
        share: std::ops::Range<usize>,
        stream_id: u64,
    ) -> Batch {
        let mut rng = Rng::new(self.seed, 0x504F_4F4C_0000_0000 + stream_id);
        random_windows(&mut rng, self.seq_len, streams, n, share)
    }

    fn next_window(&mut self, k: usize) -> u32 {
        let n = self.windows_per_source[k];
        let cursor = &mut self.state.cursors[k];
        let epoch = cursor.epoch;
        let stale = !matches!(&self.orders[k], Some((e, _)) if *e == epoch);
        if stale {
            let rng = Rng::new(self.seed, 1 + (k as u64) * 0x1_0000_0000 + epoch);
            self.orders[k] = Some((epoch, Order::new(n, rng, self.table_max_windows)));
        }
        let (_, order) = self.orders[k].as_ref().expect("order computed above");
        let index = order.at(cursor.position);
        cursor.position += 1;
        if cursor.position == n {
            cursor.epoch += 1;
            cursor.position = 0;
        }
        index
    }
}

/// `n` windows of `seq_len + 1` tokens at offsets drawn from `rng`, taken from `streams` in
/// turn; the batch holds the rows at `share` (every offset is drawn, so each rank's rng moves
/// the same way).
fn random_windows(
    rng: &mut Rng,
    seq_len: usize,
    streams: &[&Shard],
    n: usize,
    share: std::ops::Range<usize>,
) -> Batch {
    let window = seq_len + 1;
    let mut tokens = Vec::with_capacity(share.len() * window);
    let mut drawn = Vec::with_capacity(share.len());
    for i in 0..n {
        let at = i % streams.len();
        let stream = streams[at];
        let start = rng.below((stream.len() - window + 1) as u64) as usize;
        if share.contains(&i) {
            stream.extend_window(start, window, &mut tokens);
            drawn.push(at);
        }
    }
    Batch {
        tokens,
        sources: drawn,
        seq_len,
    }
}

/// Fixed validation windows of one source: up to `count` windows spread evenly over its
/// validation stream, the same every evaluation.
pub fn validation_windows(source: &Source, seq_len: usize, count: usize) -> Vec<usize> {
    let available = (source.val.len() - 1) / seq_len;
    let count = count.min(available);
    (0..count)
        .map(|i| i * available / count * seq_len)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler_with(windows: Vec<u64>) -> Sampler {
        let k = windows.len();
        Sampler {
            seed: 1,
            seq_len: 4,
            windows_per_source: windows,
            state: SamplerState {
                rng: Rng::new(1, 0),
                probe_rng: Rng::new(1, 1),
                cursors: vec![
                    Cursor {
                        epoch: 0,
                        position: 0
                    };
                    k
                ],
            },
            orders: (0..k).map(|_| None).collect(),
            table_max_windows: TABLE_MAX_WINDOWS,
        }
    }

    #[test]
    fn reweight_is_balanced() {
        let mut s = sampler_with(vec![10, 10, 10]);
        let drawn = s.draw_sources(&[0.9, 0.05, 0.05], ApplyMode::Reweight, 7);
        let counts: Vec<usize> = (0..3)
            .map(|k| drawn.iter().filter(|&&x| x == k).count())
            .collect();
        assert_eq!(counts.iter().sum::<usize>(), 7);
        assert!(counts.iter().all(|&c| c == 2 || c == 3), "{counts:?}");
        assert!(drawn.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn hybrid_counts_are_within_one_of_n_p() {
        let mut s = sampler_with(vec![10, 10, 10, 10]);
        let weights = [0.62, 0.03, 0.3, 0.05];
        let mut totals = [0usize; 4];
        for round in 0..200 {
            let n = 1 + round % 23;
            let drawn = s.draw_sources(&weights, ApplyMode::Hybrid, n);
            assert_eq!(drawn.len(), n);
            assert!(drawn.windows(2).all(|w| w[0] <= w[1]));
            for (k, &w) in weights.iter().enumerate() {
                let count = drawn.iter().filter(|&&x| x == k).count();
                totals[k] += count;
                assert!(
                    (count as f64 - n as f64 * w).abs() < 1.0,
                    "n {n}, source {k}: {count} vs {}",
                    n as f64 * w
                );
            }
        }
        // Unbiased: over many draws each source's share approaches its weight.
        let all: usize = totals.iter().sum();
        for (k, &w) in weights.iter().enumerate() {
            assert!(
                (totals[k] as f64 / all as f64 - w).abs() < 0.01,
                "{totals:?}"
            );
        }
    }

    #[test]
    fn epoch_visits_every_window_once() {
        let mut s = sampler_with(vec![5]);
        let mut seen: Vec<u32> = (0..5).map(|_| s.next_window(0)).collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert_eq!(
            s.state.cursors[0],
            Cursor {
                epoch: 1,
                position: 0
            }
        );
    }

    #[test]
    fn restored_state_continues_identically() {
        let mut a = sampler_with(vec![7, 3]);
        for _ in 0..5 {
            a.draw_sources(&[0.5, 0.5], ApplyMode::Sample, 4);
            a.next_window(0);
            a.next_window(1);
        }
        let saved = a.state().clone();
        let mut b = sampler_with(vec![7, 3]);
        assert!(b.restore(saved));
        for _ in 0..10 {
            assert_eq!(
                a.draw_sources(&[0.3, 0.7], ApplyMode::Sample, 4),
                b.draw_sources(&[0.3, 0.7], ApplyMode::Sample, 4)
            );
            assert_eq!(a.next_window(0), b.next_window(0));
            assert_eq!(a.next_window(1), b.next_window(1));
        }
    }

    /// Above the table size the keyed order: every window once per epoch, another order the
    /// next epoch, and the same order again after a restore.
    #[test]
    fn keyed_order_visits_every_window_once_and_resumes() {
        let mut s = sampler_with(vec![1000]);
        s.table_max_windows = 10;
        let first: Vec<u32> = (0..1000).map(|_| s.next_window(0)).collect();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
        let saved = s.state().clone();
        let second: Vec<u32> = (0..1000).map(|_| s.next_window(0)).collect();
        assert_ne!(first, second);
        let mut b = sampler_with(vec![1000]);
        b.table_max_windows = 10;
        assert!(b.restore(saved));
        assert_eq!(
            (0..1000).map(|_| b.next_window(0)).collect::<Vec<u32>>(),
            second
        );
    }
}
