//! `mixtrain run`: the loop. Periodic work first (evaluate, update the mixture, log,
//! checkpoint), each a call to a named function, then the training step.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::ProgressBar;
use serde_json::{json, Map, Value};

use super::evaluator::Evaluation;
use super::reference;
use super::report::{
    add_eval_fields, add_mixer_fields, add_train_fields, make_progress, provenance,
    report_progress, write_mixture,
};
use super::session::{Session, StepReport};
use mixtrain_kernels::ExecPolicy;

use super::reducer::Reducer;
use crate::backend::{dispatch, BackendTask, TrainBackend};
use crate::checkpoint;
use crate::config::Config;
use crate::distributed::Collective;
use crate::error::{Error, Result};
use crate::export::export_model;
use crate::mixture_file::by_name;
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

/// Everything the loop works on, made by `prepare`.
struct Run<B: TrainBackend> {
    config: Config,
    session: Session<B>,
    /// Rank 0's run directory (None on the other ranks: only rank 0 writes files).
    run_dir: Option<RunDir>,
    /// The checkpoint step a `--resume` continued from: its periodic work is already logged.
    resumed_at: Option<usize>,
    names: Vec<String>,
}

/// What the loop carries from one step to the next.
struct LoopState {
    bar: Option<ProgressBar>,
    started: Instant,
    /// Tokens trained before this process started (non-zero when resumed): throughput counts
    /// only this process's work.
    start_tokens: u64,
    initial_val_loss: Option<Evaluation>,
    last_val_loss: Option<Evaluation>,
    /// The last step's report, logged with the next periodic work (every `train.log_every`).
    pending_train: Option<StepReport>,
    last_lr: f64,
    /// DoReMi's excess losses from the step just before an update (`excess_from = "step"`).
    step_excess: Option<Vec<Option<f64>>>,
    /// Per source: whether the warning that it repeats past `data.max_epochs` was given.
    warned_repeats: Vec<bool>,
}

fn train_loop<B: TrainBackend>(
    config: Config,
    options: RunOptions,
    device: B::Device,
    backend: &'static str,
) -> Result<RunSummary> {
    crate::fault::init()?;
    let mut run = prepare::<B>(config, &options, device, backend)?;
    let mut state = LoopState {
        bar: make_progress(
            options.progress,
            run.config.train.steps,
            run.session.trainer.progress.step,
        ),
        started: Instant::now(),
        start_tokens: run.session.trainer.progress.tokens,
        initial_val_loss: None,
        last_val_loss: None,
        pending_train: None,
        last_lr: 0.0,
        step_excess: None,
        warned_repeats: vec![false; run.names.len()],
    };
    loop {
        let step = run.session.trainer.progress.step;
        if run.resumed_at != Some(step) {
            periodic_work(&mut run, &mut state, step)?;
        }
        if step == run.config.train.steps {
            break;
        }
        crate::fault::before_step(run.config.distributed.rank, step + 1);
        training_step(&mut run, &mut state)?;
    }
    finish(run, state, options.resume)
}

/// Warns once per source that has gone through its training data more than `max_epochs`
/// times (repeated data is worth less with every pass).
fn warn_repeats(epochs: &[f64], names: &[String], max_epochs: f64, state: &mut LoopState) {
    for ((epochs, name), warned) in epochs.iter().zip(names).zip(&mut state.warned_repeats) {
        if *epochs > max_epochs && !*warned {
            *warned = true;
            tracing::warn!(
                source = %name,
                epochs = format!("{epochs:.2}"),
                "source repeated more than data.max_epochs = {max_epochs} times: add data, \
                 lower its weight, or raise data.max_epochs to silence this"
            );
        }
    }
}

/// Joins the ranks, builds the session (after the DeMix seed it may start from and with the
/// DoReMi reference it may need), opens or creates the run directory, and on `--resume`
/// restores the newest intact checkpoint. Rank 0 prepares everything that writes files
/// while the other ranks wait; they then read what it wrote.
fn prepare<B: TrainBackend>(
    config: Config,
    options: &RunOptions,
    device: B::Device,
    backend: &'static str,
) -> Result<Run<B>> {
    let device_name = format!("{device:?}");
    // Which implementation the cross-entropy and single-pass statistics run on: the CubeCL
    // kernels on wgpu/cuda, the plain-tensor references on the CPU.
    let kernels = <B as ExecPolicy>::IMPL.name();
    let distributed = &config.distributed;
    let leader = distributed.rank == 0;
    let mut collective = distributed
        .is_distributed()
        .then(|| Collective::join(distributed, &config.hash()))
        .transpose()?;
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
    if session.mixing.mixer.needs().excess_loss.is_some() {
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
    let resumed_at = match options.resume {
        true => resume(&mut session, run_dir.as_mut(), &config, leader)?,
        false => None,
    };
    if let Some(collective) = collective.take() {
        session.reducer = Reducer::Ranks(start_ranks(collective, &session, leader, distributed)?);
    }
    let names = session.source_names();
    tracing::info!(
        backend,
        kernels,
        device = %device_name,
        params = session.trainer.model.num_params(),
        sources = %names.join(","),
        "training"
    );
    Ok(Run {
        config,
        session,
        run_dir,
        resumed_at,
        names,
    })
}

/// Restores the newest intact checkpoint and cuts the logs back to it; returns its step, or
/// None (the run restarts from step 0) when no complete checkpoint exists yet.
fn resume<B: TrainBackend>(
    session: &mut Session<B>,
    run_dir: Option<&mut RunDir>,
    config: &Config,
    leader: bool,
) -> Result<Option<usize>> {
    let checkpoints_dir = config.run.out_dir.join(crate::rundir::CHECKPOINTS_DIR);
    // Damaged checkpoints are set aside first (by rank 0), so that tidying never prunes the
    // intact one the run falls back to.
    let newest = checkpoint::newest_intact(&checkpoints_dir, leader)?;
    if leader {
        checkpoint::tidy(&checkpoints_dir, config.train.keep_checkpoints)?;
    }
    let Some((_, dir)) = newest else {
        tracing::warn!("--resume found no complete checkpoint: restarting the run from step 0");
        if let Some(run_dir) = run_dir {
            run_dir.restart(config)?;
        }
        return Ok(None);
    };
    let state = session.restore_checkpoint(&dir)?;
    if let Some(run_dir) = run_dir {
        run_dir.truncate_logs(state.metrics_bytes, state.ratios_bytes)?;
    }
    tracing::info!(step = state.step, checkpoint = %dir.display(), "resumed");
    Ok(Some(state.step))
}

/// Lets the other ranks read what rank 0 prepared, then checks that every rank starts from
/// the same step and mixture.
fn start_ranks<B: TrainBackend>(
    mut collective: Collective,
    session: &Session<B>,
    leader: bool,
    distributed: &crate::distributed::DistributedConfig,
) -> Result<Collective> {
    if leader {
        // The run directory is ready (and on resume tidied): the other ranks may read it.
        collective.barrier(0, 0, distributed.join_timeout())?;
    }
    let check = crate::distributed::mixture_check(session.mixing.mixer.weights());
    collective.barrier(
        session.trainer.progress.step as u64,
        check,
        distributed.join_timeout(),
    )?;
    Ok(collective)
}

/// The periodic work of `step`, before its training step: evaluate, update the mixture, log
/// one metrics line, checkpoint; each when due.
fn periodic_work<B: TrainBackend>(
    run: &mut Run<B>,
    state: &mut LoopState,
    step: usize,
) -> Result<()> {
    let session = &mut run.session;
    let (train, total) = (&run.config.train, run.config.train.steps);
    let mut record = Map::new();
    record.insert("step".into(), json!(step));
    record.insert("tokens".into(), json!(session.trainer.progress.tokens));
    if let Some(report) = state.pending_train.take() {
        add_train_fields(&mut record, &report, &run.names);
        let tokens = session.trainer.progress.tokens_by_source.iter().copied();
        record.insert("tokens_by_source".into(), by_name(&run.names, tokens));
        let epochs = session.batches.sampler.epochs();
        warn_repeats(&epochs, &run.names, run.config.data.max_epochs, state);
        record.insert("epochs_by_source".into(), by_name(&run.names, epochs));
    }
    if step.is_multiple_of(train.eval_every) || step == total {
        let val = session.evaluate_over_ranks()?;
        add_eval_fields(&mut record, &val, session);
        if step == 0 {
            state.initial_val_loss = Some(val.clone());
        }
        state.last_val_loss = Some(val);
    }
    if step == 0 {
        if let Some(run_dir) = run.run_dir.as_mut() {
            run_dir.write_ratios(0, session.mixing.mixer.weights())?;
        }
    } else if run.config.mixer.updates_at(step, total) {
        // Every rank updates its mixer from the same sums: the mixtures stay equal.
        let excess = state.step_excess.take();
        if let Some(update) = session.mixer_update(state.last_lr, excess)? {
            if let Some(run_dir) = run.run_dir.as_mut() {
                run_dir.write_ratios(step, &update.weights)?;
            }
            add_mixer_fields(&mut record, &update, &run.names);
        }
    }
    let Some(run_dir) = run.run_dir.as_mut() else {
        return Ok(());
    };
    if record.len() > 2 {
        let elapsed = state.started.elapsed().as_secs_f64();
        let tokens_done = (session.trainer.progress.tokens - state.start_tokens) as f64;
        record.insert(
            "wall".into(),
            json!({ "elapsed_s": elapsed, "tokens_per_s": tokens_done / elapsed.max(1e-9) }),
        );
        run_dir.write_metrics(&Value::Object(record))?;
    }
    let checkpoint_due = step == total
        || (train.checkpoint_every > 0 && step > 0 && step.is_multiple_of(train.checkpoint_every));
    if checkpoint_due {
        let lengths = run_dir.flush()?;
        session.save_checkpoint(&run_dir.checkpoints_dir(), lengths, train.keep_checkpoints)?;
    }
    Ok(())
}

/// One training step. A non-finite step was not applied: rank 0 checkpoints the last good
/// state and the error names it.
fn training_step<B: TrainBackend>(run: &mut Run<B>, state: &mut LoopState) -> Result<()> {
    let session = &mut run.session;
    let train = &run.config.train;
    let mut report = match (session.train_step(), run.run_dir.as_mut()) {
        (Ok(report), _) => report,
        (Err(Error::NonFinite { step, message }), Some(run_dir)) => {
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
                    session.trainer.progress.step,
                    saved.display()
                ),
            });
        }
        (Err(e), _) => return Err(e),
    };
    state.last_lr = report.lr;
    state.step_excess = report.excess_loss.take();
    report_progress(
        &state.bar,
        session,
        &report,
        state.started,
        state.start_tokens,
        &run.config,
    );
    if let Some(reason) = &report.skipped {
        tracing::warn!(
            step = session.trainer.progress.step,
            "step skipped: {reason}"
        );
    }
    if session
        .trainer
        .progress
        .step
        .is_multiple_of(train.log_every)
        || report.skipped.is_some()
    {
        state.pending_train = Some(report);
    }
    Ok(())
}

/// Writes mixture.json and the model (rank 0), closes the ranks' link, logs the final
/// losses and returns the summary `mixtrain run` prints.
fn finish<B: TrainBackend>(
    mut run: Run<B>,
    state: LoopState,
    resume_asked: bool,
) -> Result<RunSummary> {
    if let Some(bar) = &state.bar {
        bar.finish_and_clear();
    }
    let session = &mut run.session;
    if let Some(run_dir) = run.run_dir.as_mut() {
        run_dir.flush()?;
        write_mixture(run_dir, session, &run.names)?;
        let model_path = run_dir.path.join(MODEL_FILE);
        export_model(
            &model_path,
            &session.trainer.model,
            &run.config.model,
            session.batches.vocab_size,
        )?;
    }
    let final_val = match state.last_val_loss {
        Some(v) => v,
        None => session.evaluate_over_ranks()?,
    };
    session.reducer.finish();
    for (name, loss) in run.names.iter().zip(&final_val.sources) {
        tracing::info!(source = %name, val_loss = format!("{loss:.4}"), "final");
    }
    for (set, loss) in session.batches.target_sets.iter().zip(&final_val.sets) {
        tracing::info!(target_set = %set.name, val_loss = format!("{loss:.4}"), "final");
    }
    Ok(RunSummary {
        steps: run.config.train.steps,
        final_target_loss: final_val.target(&session.mixing.target),
        sources: run.names,
        initial_val_loss: state.initial_val_loss.map(|v| v.sources),
        final_val_loss: final_val.sources,
        final_weights: session.mixing.mixer.weights().to_vec(),
        resumed: resume_asked
            .then_some(run.resumed_at.map_or(Resumed::Restarted, Resumed::FromStep)),
    })
}
