//! What a run reports: the fields of its `metrics.jsonl` lines, `mixture.json`, the
//! provenance header of its `config.toml`, and the progress bar or log lines.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

use super::evaluator::Evaluation;
use super::session::{Session, StepReport};
use crate::backend::TrainBackend;
use crate::config::Config;
use crate::error::Result;
use crate::mixer::{GuardReport, MixerUpdate};
use crate::mixture_file::{by_name, MixtureFile, MIXTURE_FILE};
use crate::rundir::RunDir;

pub(super) fn provenance(config: &Config, backend: &str, kernels: &str, device: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "# mixtrain {} (git {}), backend {backend} (statistics: {kernels}), device {device}, \
         started at unix time {now}\n\
         # resolved config (hash {}); every key is listed with its value",
        env!("CARGO_PKG_VERSION"),
        env!("MIXTRAIN_GIT_HASH"),
        config.hash()
    )
}

pub(super) fn add_train_fields(
    record: &mut Map<String, Value>,
    report: &StepReport,
    names: &[String],
) {
    if let Some(reason) = &report.skipped {
        record.insert("skipped".into(), json!(reason));
    }
    record.insert("lr".into(), json!(report.lr));
    record.insert("train_loss".into(), json!(report.loss));
    record.insert(
        "train_loss_by_source".into(),
        by_name(names, report.loss_by_source.iter().copied()),
    );
    record.insert("grad_norm".into(), json!(report.grad_norm));
}

/// `val_loss` (mean over training sources), `val_loss_by_source`, `target_val_loss` (mean over
/// the target's members) and, with target sets, `val_loss_by_target_set`.
pub(super) fn add_eval_fields<B: TrainBackend>(
    record: &mut Map<String, Value>,
    val: &Evaluation,
    session: &Session<B>,
) {
    record.insert("val_loss".into(), json!(val.mean()));
    record.insert(
        "val_loss_by_source".into(),
        by_name(&session.source_names(), val.sources.iter().copied()),
    );
    if !session.batches.target_sets.is_empty() {
        let set_names: Vec<String> = session
            .batches
            .target_sets
            .iter()
            .map(|s| s.name.clone())
            .collect();
        record.insert(
            "val_loss_by_target_set".into(),
            by_name(&set_names, val.sets.iter().copied()),
        );
    }
    record.insert(
        "target_val_loss".into(),
        json!(val.target(&session.mixing.target)),
    );
}

pub(super) fn add_mixer_fields(
    record: &mut Map<String, Value>,
    update: &MixerUpdate,
    names: &[String],
) {
    let mut mixer = Map::new();
    mixer.insert(
        "weights".into(),
        by_name(names, update.weights.iter().copied()),
    );
    if let Some((signal, values)) = &update.signal {
        mixer.insert((*signal).into(), by_name(names, values.iter().copied()));
    }
    if let Some(report) = &update.guard {
        let mut guard = json!(report);
        // The evidence guard's t statistics, by source name like the weights.
        if let GuardReport::Evidence(log) = report {
            guard["evidence"] = by_name(names, log.evidence.iter().copied());
        }
        mixer.insert("guard".into(), guard);
    }
    record.insert("mixer".into(), Value::Object(mixer));
}

pub(super) fn write_mixture<B: TrainBackend>(
    run_dir: &RunDir,
    session: &Session<B>,
    names: &[String],
) -> Result<()> {
    let steps = session.trainer.progress.step.max(1) as f64;
    let initial = &session.mixing.initial;
    let time_averaged: Vec<f64> = session
        .trainer
        .progress
        .weight_sums
        .iter()
        .map(|w| w / steps)
        .collect();
    let mut file = MixtureFile::new(names, session.mixing.mixer.weights())
        .with("time_averaged", by_name(names, time_averaged))
        .with("initial", by_name(names, initial.weights.iter().copied()))
        .with("init", json!(initial.method))
        .with("steps", json!(session.trainer.progress.step))
        .with(
            "tokens_by_source",
            by_name(
                names,
                session.trainer.progress.tokens_by_source.iter().copied(),
            ),
        );
    if let Some(entropy) = &initial.entropy {
        file = file.with("entropy_nats", by_name(names, entropy.iter().copied()));
    }
    file.write(&run_dir.path.join(MIXTURE_FILE))
}

pub(super) fn make_progress(enabled: bool, total: usize, start: usize) -> Option<ProgressBar> {
    if !enabled {
        return None;
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  elapsed {elapsed_precise}  eta {eta_precise}",
        )
        .expect("the template is valid"),
    );
    bar.set_position(start as u64);
    Some(bar)
}

pub(super) fn report_progress<B: TrainBackend>(
    bar: &Option<ProgressBar>,
    session: &Session<B>,
    report: &StepReport,
    started: Instant,
    start_tokens: u64,
    config: &Config,
) {
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let tokens_per_s = (session.trainer.progress.tokens - start_tokens) as f64 / elapsed;
    match bar {
        Some(bar) => {
            bar.set_position(session.trainer.progress.step as u64);
            bar.set_message(format!(
                "loss {:.4}  {:.0} tok/s",
                report.loss, tokens_per_s
            ));
        }
        None if session
            .trainer
            .progress
            .step
            .is_multiple_of(config.train.log_every) =>
        {
            tracing::info!(
                step = session.trainer.progress.step,
                loss = format!("{:.4}", report.loss),
                tokens_per_s = format!("{tokens_per_s:.0}"),
                lr = format!("{:.2e}", report.lr),
                "train"
            );
        }
        None => {}
    }
}
