//! `mixtrain run`: the loop. Periodic work first (evaluate, update the mixture, log,
//! checkpoint), each a call to a named function, then the training step.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

use super::evaluator::Evaluation;
use super::reference;
use super::session::{Session, StepReport};
use mixtrain_kernels::StatKernels;

use crate::backend::{dispatch, BackendTask, TrainBackend};
use crate::checkpoint;
use crate::config::Config;
use crate::distributed::Collective;
use crate::error::{Error, Result};
use crate::export::export_model;
use crate::mixer::MixerUpdate;
use crate::mixture_file::{by_name, MixtureFile, MIXTURE_FILE};
use crate::rundir::{RunDir, MODEL_FILE};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Continue from the newest complete checkpoint in `run.out_dir`.
    pub resume: bool,
    /// Show a progress bar (else plain log lines every `train.log_every` steps).
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            resume: false,
            progress: std::io::stderr().is_terminal(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub steps: usize,
    pub sources: Vec<String>,
    /// Per-source validation loss at step 0 of this run (None when resumed past it).
    pub initial_val_loss: Option<Vec<f64>>,
    pub final_val_loss: Vec<f64>,
    /// Final mean validation loss over the target's members.
    pub final_target_loss: f64,
    pub final_weights: Vec<f64>,
    /// Where a `--resume` continued: the checkpoint's step, or `Restarted` when no complete
    /// checkpoint existed (`None` for a fresh run).
    pub resumed: Option<Resumed>,
}

/// How a `run --resume` began; printed by `mixtrain run` so that a user (and the resume tests)
/// can tell a resume from a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    FromStep(usize),
    Restarted,
}

/// Runs (or resumes) the training run described by `config` on its backend.
pub fn run(config: Config, options: RunOptions) -> Result<RunSummary> {
    dispatch(config.run.backend, RunTask { config, options })
}

struct RunTask {
    config: Config,
    options: RunOptions,
}

impl BackendTask for RunTask {
    type Output = RunSummary;
    fn run<B: TrainBackend>(self, device: B::Device, backend: &'static str) -> Result<RunSummary> {
        train_loop::<B>(self.config, self.options, device, backend)
    }
}

fn provenance(config: &Config, backend: &str, kernels: &str, device: &str) -> String {
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

fn train_loop<B: TrainBackend>(
    config: Config,
    options: RunOptions,
    device: B::Device,
    backend: &'static str,
) -> Result<RunSummary> {
    crate::fault::init()?;
    let device_name = format!("{device:?}");
    // Which implementation the cross-entropy and single-pass statistics run on: the CubeCL
    // kernels on wgpu/cuda, the plain-tensor references on the CPU.
    let kernels = <B as StatKernels>::IMPL.name();
    let distributed = &config.distributed;
    let mut collective = distributed
        .is_distributed()
        .then(|| Collective::join(distributed, &config.hash()))
        .transpose()?;
    // Rank 0 prepares everything that writes files (data cache, seed mixture, reference model,
    // run directory) while the other ranks wait; they then read what it wrote.
    let leader = distributed.rank == 0;
    if let (Some(collective), false) = (collective.as_mut(), leader) {
        collective.barrier(0, 0, distributed.join_timeout())?;
    }
    // Refuse a wrong out_dir before the (slow) data loading, and create nothing until the data
    // and tokenizer have loaded, so a bad source leaves no half-made run behind.
    if !options.resume && leader {
        RunDir::check_free(&config.run.out_dir)?;
    }
    let resumed_dir = (options.resume && leader)
        .then(|| RunDir::open_for_resume(&config))
        .transpose()?;
    crate::demix::ensure_seed::<B>(&config, &device)?;
    let mut session = Session::<B>::build(config.clone(), device)?;
    if session.mixer.needs().excess_loss.is_some() {
        // The other ranks load the reference model rank 0 trained and saved.
        reference::ensure_reference(&mut session, &config.run.out_dir, options.resume || !leader)?;
    }
    let mut run_dir = match (resumed_dir, leader) {
        (Some(dir), _) => Some(dir),
        (None, true) => Some(RunDir::create(
            &config,
            &provenance(&config, backend, kernels, &device_name),
        )?),
        (None, false) => None,
    };
    let names = session.source_names();
    let total = config.train.steps;
    let train = &config.train;

    // On resume, the periodic work of the checkpoint's step is already in the logs.
    let mut resumed_at = None;
    if options.resume {
        let checkpoints_dir = config.run.out_dir.join(crate::rundir::CHECKPOINTS_DIR);
        // Damaged checkpoints are set aside first (by rank 0), so that tidying never prunes
        // the intact one the run falls back to.
        let newest = checkpoint::newest_intact(&checkpoints_dir, leader)?;
        if leader {
            checkpoint::tidy(&checkpoints_dir, train.keep_checkpoints)?;
        }
        match newest {
            Some((_, dir)) => {
                let state = session.restore_checkpoint(&dir)?;
                if let Some(run_dir) = run_dir.as_mut() {
                    run_dir.truncate_logs(state.metrics_bytes, state.ratios_bytes)?;
                }
                tracing::info!(step = state.step, checkpoint = %dir.display(), "resumed");
                resumed_at = Some(state.step);
            }
            None => {
                tracing::warn!(
                    "--resume found no complete checkpoint: restarting the run from step 0"
                );
                if let Some(run_dir) = run_dir.as_mut() {
                    run_dir.restart(&config)?;
                }
            }
        }
    }
    if let (Some(collective), true) = (collective.as_mut(), leader) {
        // The run directory is ready (and on resume tidied): the other ranks may read it.
        collective.barrier(0, 0, distributed.join_timeout())?;
    }
    if let Some(mut collective) = collective.take() {
        // Every rank has its state now: check that they start from the same step and mixture.
        let check = crate::distributed::mixture_check(session.mixer.weights());
        collective.barrier(
            session.progress.step as u64,
            check,
            distributed.join_timeout(),
        )?;
        session.collective = Some(collective);
    }
    tracing::info!(
        backend,
        kernels,
        device = %device_name,
        params = session.model.num_params(),
        sources = %names.join(","),
        "training"
    );

    let progress = make_progress(options.progress, total, session.progress.step);
    let started = Instant::now();
    // Tokens trained before this process started (non-zero when resumed): throughput counts
    // only this process's work.
    let start_tokens = session.progress.tokens;
    let mut initial_val_loss = None;
    let mut last_val_loss = None;
    let mut pending_train: Option<StepReport> = None;
    let mut last_lr = 0.0;
    // DoReMi's excess losses from the step just before an update (`excess_from = "step"`).
    let mut step_excess: Option<Vec<Option<f64>>> = None;
    loop {
        let step = session.progress.step;
        if resumed_at != Some(step) {
            let mut record = Map::new();
            record.insert("step".into(), json!(step));
            record.insert("tokens".into(), json!(session.progress.tokens));
            if let Some(report) = pending_train.take() {
                add_train_fields(&mut record, &report, &names);
                record.insert(
                    "tokens_by_source".into(),
                    by_name(&names, session.progress.tokens_by_source.iter().copied()),
                );
            }
            if step % train.eval_every == 0 || step == total {
                let val = session.evaluate_over_ranks()?;
                add_eval_fields(&mut record, &val, &session);
                if step == 0 {
                    initial_val_loss = Some(val.clone());
                }
                last_val_loss = Some(val);
            }
            if step == 0 {
                if let Some(run_dir) = run_dir.as_mut() {
                    run_dir.write_ratios(0, session.mixer.weights())?;
                }
            } else if config.mixer.updates_at(step, total) {
                // Every rank updates its mixer from the same sums: the mixtures stay equal.
                let excess = step_excess.take();
                if let Some(update) = session.mixer_update(last_lr, excess)? {
                    if let Some(run_dir) = run_dir.as_mut() {
                        run_dir.write_ratios(step, &update.weights)?;
                    }
                    add_mixer_fields(&mut record, &update, &names);
                }
            }
            if let (Some(run_dir), true) = (run_dir.as_mut(), record.len() > 2) {
                let elapsed = started.elapsed().as_secs_f64();
                let tokens_done = (session.progress.tokens - start_tokens) as f64;
                record.insert(
                    "wall".into(),
                    json!({ "elapsed_s": elapsed, "tokens_per_s": tokens_done / elapsed.max(1e-9) }),
                );
                run_dir.write_metrics(&Value::Object(record))?;
            }
            let checkpoint_due = step == total
                || (train.checkpoint_every > 0 && step > 0 && step % train.checkpoint_every == 0);
            if let (Some(run_dir), true) = (run_dir.as_mut(), checkpoint_due) {
                let lengths = run_dir.flush()?;
                session.save_checkpoint(
                    &run_dir.checkpoints_dir(),
                    lengths,
                    train.keep_checkpoints,
                )?;
            }
        }
        if step == total {
            break;
        }
        crate::fault::before_step(config.distributed.rank, step + 1);
        let mut report = match session.train_step() {
            Ok(report) => report,
            Err(Error::NonFinite { step, message }) if run_dir.is_some() => {
                // The step was not applied: the session holds the last good state.
                let run_dir = run_dir.as_mut().expect("checked by the guard");
                let lengths = run_dir.flush()?;
                let saved = session.save_checkpoint(
                    &run_dir.checkpoints_dir(),
                    lengths,
                    train.keep_checkpoints,
                )?;
                return Err(Error::NonFinite {
                    step,
                    message: format!(
                        "{message}. The last good state (step {}) is checkpoint {}",
                        session.progress.step,
                        saved.display()
                    ),
                });
            }
            Err(e) => return Err(e),
        };
        last_lr = report.lr;
        step_excess = report.excess_loss.take();
        report_progress(&progress, &session, &report, started, start_tokens, &config);
        if let Some(reason) = &report.skipped {
            tracing::warn!(step = session.progress.step, "step skipped: {reason}");
        }
        if session.progress.step % train.log_every == 0 || report.skipped.is_some() {
            pending_train = Some(report);
        }
    }
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    if let Some(run_dir) = run_dir.as_mut() {
        run_dir.flush()?;
        write_mixture(run_dir, &session, &names)?;
        export_model(
            &run_dir.path.join(MODEL_FILE),
            &session.model,
            &config.model,
            session.vocab_size,
        )?;
    }

    let final_val = match last_val_loss {
        Some(v) => v,
        None => session.evaluate_over_ranks()?,
    };
    if let Some(collective) = session.collective.as_mut() {
        collective.finish();
        let stats = &collective.stats;
        tracing::info!(
            rank = collective.rank(),
            calls = stats.calls,
            seconds = format!("{:.2}", stats.seconds),
            mib_sent = format!("{:.1}", stats.bytes_sent as f64 / (1 << 20) as f64),
            "all-reduce"
        );
    }
    for (name, loss) in names.iter().zip(&final_val.sources) {
        tracing::info!(source = %name, val_loss = format!("{loss:.4}"), "final");
    }
    for (set, loss) in session.target_sets.iter().zip(&final_val.sets) {
        tracing::info!(target_set = %set.name, val_loss = format!("{loss:.4}"), "final");
    }
    Ok(RunSummary {
        steps: total,
        sources: names,
        initial_val_loss: initial_val_loss.map(|v| v.sources),
        final_target_loss: final_val.target(&session.target),
        final_val_loss: final_val.sources,
        final_weights: session.mixer.weights().to_vec(),
        resumed: options
            .resume
            .then_some(resumed_at.map_or(Resumed::Restarted, Resumed::FromStep)),
    })
}

fn add_train_fields(record: &mut Map<String, Value>, report: &StepReport, names: &[String]) {
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
fn add_eval_fields<B: TrainBackend>(
    record: &mut Map<String, Value>,
    val: &Evaluation,
    session: &Session<B>,
) {
    record.insert("val_loss".into(), json!(val.mean()));
    record.insert(
        "val_loss_by_source".into(),
        by_name(&session.source_names(), val.sources.iter().copied()),
    );
    if !session.target_sets.is_empty() {
        let set_names: Vec<String> = session.target_sets.iter().map(|s| s.name.clone()).collect();
        record.insert(
            "val_loss_by_target_set".into(),
            by_name(&set_names, val.sets.iter().copied()),
        );
    }
    record.insert("target_val_loss".into(), json!(val.target(&session.target)));
}

fn add_mixer_fields(record: &mut Map<String, Value>, update: &MixerUpdate, names: &[String]) {
    let mut mixer = Map::new();
    mixer.insert(
        "weights".into(),
        by_name(names, update.weights.iter().copied()),
    );
    if let Some((signal, values)) = &update.signal {
        mixer.insert((*signal).into(), by_name(names, values.iter().copied()));
    }
    record.insert("mixer".into(), Value::Object(mixer));
}

fn write_mixture<B: TrainBackend>(
    run_dir: &RunDir,
    session: &Session<B>,
    names: &[String],
) -> Result<()> {
    let steps = session.progress.step.max(1) as f64;
    let initial = &session.initial;
    let time_averaged: Vec<f64> = session
        .progress
        .weight_sums
        .iter()
        .map(|w| w / steps)
        .collect();
    let mut file = MixtureFile::new(names, session.mixer.weights())
        .with("time_averaged", by_name(names, time_averaged))
        .with("initial", by_name(names, initial.weights.iter().copied()))
        .with("init", json!(initial.method))
        .with("steps", json!(session.progress.step))
        .with(
            "tokens_by_source",
            by_name(names, session.progress.tokens_by_source.iter().copied()),
        );
    if let Some(entropy) = &initial.entropy {
        file = file.with("entropy_nats", by_name(names, entropy.iter().copied()));
    }
    file.write(&run_dir.path.join(MIXTURE_FILE))
}

fn make_progress(enabled: bool, total: usize, start: usize) -> Option<ProgressBar> {
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

fn report_progress<B: TrainBackend>(
    bar: &Option<ProgressBar>,
    session: &Session<B>,
    report: &StepReport,
    started: Instant,
    start_tokens: u64,
    config: &Config,
) {
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let tokens_per_s = (session.progress.tokens - start_tokens) as f64 / elapsed;
    match bar {
        Some(bar) => {
            bar.set_position(session.progress.step as u64);
            bar.set_message(format!(
                "loss {:.4}  {:.0} tok/s",
                report.loss, tokens_per_s
            ));
        }
        None if session.progress.step.is_multiple_of(config.train.log_every) => {
            tracing::info!(
                step = session.progress.step,
                loss = format!("{:.4}", report.loss),
                tokens_per_s = format!("{tokens_per_s:.0}"),
                lr = format!("{:.2e}", report.lr),
                "train"
            );
        }
        None => {}
    }
}
