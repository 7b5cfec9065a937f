//! The `mixtrain` command line: parse, build, run, report. Errors print once, with context,
//! and exit non-zero.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use mixtrain::config::Config;

#[derive(Parser)]
#[command(
    name = "mixtrain",
    version,
    about = "Train a GPT on several data sources while learning the data mixture online"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ConfigArgs {
    /// The run's config file (TOML).
    config: PathBuf,
    /// Override a config key: --set train.steps=40 (value in TOML syntax; bare strings allowed).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model, writing metrics, ratios and checkpoints into run.out_dir.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// Continue from the newest complete checkpoint in run.out_dir.
        #[arg(long)]
        resume: bool,
    },
    /// Train with N data-parallel ranks on this machine: starts N `run` processes that sum
    /// their gradients every step; exits with the status of the first rank that failed.
    Launch {
        #[command(flatten)]
        config: ConfigArgs,
        /// Ranks (processes) to start.
        #[arg(long, value_name = "N")]
        procs: usize,
        /// Continue from the newest complete checkpoint in run.out_dir.
        #[arg(long)]
        resume: bool,
        /// How the ranks talk: mpi (runs mpirun; the default when built with the `mpi`
        /// feature) or tcp (a star through rank 0; every build).
        #[arg(long, value_name = "mpi|tcp")]
        transport: Option<String>,
        /// Port rank 0 listens on, on 127.0.0.1, over tcp (default: a free one).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Tokenise and cache every source (what `run` does on first use), or train a BPE tokenizer.
    Prepare {
        #[command(flatten)]
        config: ConfigArgs,
        /// Train a byte-level BPE with this many tokens on the sources' training documents,
        /// instead of tokenising.
        #[arg(long, value_name = "VOCAB")]
        train_bpe: Option<usize>,
        /// Where --train-bpe writes tokenizer.json (default: data.cache_dir/bpe-VOCAB.json).
        #[arg(long, value_name = "PATH", requires = "train_bpe")]
        tokenizer_out: Option<PathBuf>,
        /// Hash every input file again (not trusting the cache's manifest of sizes and times)
        /// and check every token of every shard.
        #[arg(long, conflicts_with = "train_bpe")]
        verify: bool,
        /// Also write every source's splits as Megatron-LM indexed datasets under DIR
        /// (DIR/NAME/train.bin/.idx and val.bin/.idx).
        #[arg(long, value_name = "DIR", conflicts_with = "train_bpe")]
        megatron: Option<PathBuf>,
    },
    /// Per-source validation loss of a run's newest checkpoint, or of a given checkpoint.
    Eval {
        /// A run directory or a checkpoints/step_XXXXXXXX directory.
        path: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Find a seed mixture by merging per-source models (DeMix) into run.out_dir/demix/.
    /// Reuses finished base and component models of an interrupted demix.
    Demix {
        #[command(flatten)]
        config: ConfigArgs,
        /// Also train M real models briefly on scored mixtures and report the Spearman
        /// correlation of their losses with the merged proxies' losses.
        #[arg(long, value_name = "M", default_value_t = 0)]
        validate: usize,
    },
    /// Train static mixtures on the config's model (uniform, and for each source a tilt
    /// putting --weight on it) and rank them by final target loss, into run.out_dir/screen/.
    /// Reuses finished runs and resumes unfinished ones.
    Screen {
        #[command(flatten)]
        config: ConfigArgs,
        /// The weight a tilt puts on its source; the other sources share the rest equally.
        #[arg(long, default_value_t = 0.4)]
        weight: f64,
        /// Seeds, comma-separated: one run per candidate and seed.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        seeds: Vec<u64>,
    },
    /// Write ratios.svg and val_loss.svg into a run directory; given several runs, draw them
    /// side by side (target loss against steps and tokens, each run's weights) into --out.
    Plot {
        /// The run directory, or several to compare.
        #[arg(required = true)]
        run_dirs: Vec<PathBuf>,
        /// Where a comparison of several runs goes (default: the current directory).
        #[arg(long, short = 'o', value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Print a run's mixture for another trainer (or for a mixtrain config): its final
    /// weights, their average over training, or its trajectory as a schedule.
    Mixture {
        /// The run directory (or its ratios.csv).
        run_dir: PathBuf,
        #[arg(long, value_enum, default_value = "json")]
        format: mixtrain::mixture_export::MixtureFormat,
        /// Which mixture of the run.
        #[arg(long = "use", value_enum, default_value = "final")]
        what: mixtrain::mixture_export::MixtureUse,
        /// With --use schedule: the length of the run the schedule is for, in steps (the
        /// stages keep their fraction of training).
        #[arg(long, value_name = "N")]
        steps: Option<usize>,
        /// With --use schedule: round each stage's step to a multiple of M.
        #[arg(long, value_name = "M", default_value_t = 1)]
        round_steps: usize,
        /// With --format megatron: the DIR of `mixtrain prepare --megatron DIR`; each source
        /// is then named by its prefix DIR/NAME/train.
        #[arg(long, value_name = "DIR")]
        data_prefix: Option<PathBuf>,
        /// Cap each source's weight so that it repeats at most E times over --tokens (the
        /// rest goes to the other sources in proportion); sizes as this run measured them.
        #[arg(long, value_name = "E", requires = "tokens")]
        max_epochs: Option<f64>,
        /// With --max-epochs: the tokens of the run the mixture is for, counted as this run
        /// counts them, or a multiple of this run's own (`2x`).
        #[arg(long, value_name = "T", requires = "max_epochs")]
        tokens: Option<mixtrain::repetition::PlannedTokens>,
        /// Write to this file instead of printing.
        #[arg(long, short = 'o', value_name = "PATH")]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // Under an MPI launcher every rank logs to the same terminal: rank 0 reports the run, the
    // others only their warnings and errors (unless RUST_LOG says otherwise).
    let level = match mixtrain::distributed::rank_from_environment() {
        Some(rank) if rank > 0 => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(code) => {
            mixtrain::distributed::finish_job();
            code
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            mixtrain::distributed::abort_job_after_error();
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> anyhow::Result<ExitCode> {
    if let Command::Launch {
        config,
        procs,
        resume,
        transport,
        port,
    } = command
    {
        use mixtrain::distributed::launch::{LaunchOptions, Transport};
        let transport = match transport {
            Some(name) => Transport::parse(&name)?,
            None => Transport::default_for_build(),
        };
        let options = LaunchOptions {
            procs,
            resume,
            port,
            transport,
        };
        let outcome = mixtrain::distributed::launch::launch(&config.config, &config.set, &options)?;
        return Ok(match outcome.failed {
            None => ExitCode::SUCCESS,
            Some((code, what)) => {
                eprintln!("error: {what}; the run stopped");
                ExitCode::from(code.clamp(1, 255) as u8)
            }
        });
    }
    run_command(command)?;
    Ok(ExitCode::SUCCESS)
}

fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config, resume } => run(config, resume),
        Command::Demix { config, validate } => demix(config, validate),
        Command::Screen {
            config,
            weight,
            seeds,
        } => screen(config, weight, seeds),
        Command::Prepare {
            config,
            train_bpe,
            tokenizer_out,
            verify,
            megatron,
        } => prepare(config, train_bpe, tokenizer_out, verify, megatron),
        Command::Eval { path, json } => {
            let report = mixtrain::evaluate::evaluate_path(&path)?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            Ok(())
        }
        Command::Launch { .. } => Ok(()), // handled by `execute`
        Command::Plot { run_dirs, out } => {
            let written = match run_dirs.as_slice() {
                [run_dir] if out.is_none() => mixtrain::plot::plot_run(run_dir)?,
                _ => {
                    let out = out.unwrap_or_else(|| PathBuf::from("."));
                    mixtrain::plot::plot_runs(&run_dirs, &out)?
                }
            };
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Mixture {
            run_dir,
            format,
            what,
            steps,
            round_steps,
            data_prefix,
            max_epochs,
            tokens,
            out,
        } => {
            let repetition_cap = max_epochs.zip(tokens).map(|(max_epochs, tokens)| {
                mixtrain::repetition::RepetitionCap { max_epochs, tokens }
            });
            let options = mixtrain::mixture_export::MixtureExport {
                format,
                what,
                steps,
                round_steps,
                data_prefix,
                repetition_cap,
            };
            let text = mixtrain::mixture_export::export_mixture(&run_dir, &options)?;
            match out {
                None => print!("{text}"),
                Some(path) => {
                    mixtrain::fsutil::write_atomic(&path, text.as_bytes())?;
                    println!("wrote {}", path.display());
                }
            }
            Ok(())
        }
    }
}

/// `mixtrain run`: trains, then (rank 0) prints how the run began and each source's
/// validation loss at step 0 and at the end with its final weight.
fn run(config: ConfigArgs, resume: bool) -> anyhow::Result<()> {
    let mut cfg = Config::load(&config.config, &config.set)?;
    mixtrain::distributed::join_launcher(&mut cfg.distributed)?;
    let options = mixtrain::train::RunOptions {
        resume,
        ..Default::default()
    };
    let summary = mixtrain::train::run(cfg.clone(), options)?;
    if cfg.distributed.rank != 0 {
        return Ok(()); // rank 0 reports the run
    }
    let how = match summary.resumed {
        Some(mixtrain::train::Resumed::FromStep(step)) => format!(" (resumed from step {step})"),
        Some(mixtrain::train::Resumed::Restarted) => {
            " (restarted from step 0: no complete checkpoint)".to_string()
        }
        None => String::new(),
    };
    let out_dir = cfg.run.out_dir.display();
    println!("run finished: {} steps in {out_dir}{how}", summary.steps);
    println!(
        "{:<16} {:>10} {:>10} {:>8}",
        "source", "val@0", "val@end", "weight"
    );
    for (i, name) in summary.sources.iter().enumerate() {
        let initial = summary
            .initial_val_loss
            .as_ref()
            .map_or("-".to_string(), |v| format!("{:.4}", v[i]));
        println!(
            "{:<16} {:>10} {:>10.4} {:>8.4}",
            name, initial, summary.final_val_loss[i], summary.final_weights[i]
        );
    }
    println!(
        "{:<16} {:>10} {:>10.4}",
        "target", "", summary.final_target_loss
    );
    Ok(())
}

/// `mixtrain demix`: the seed search, then its mixture and how to use it.
fn demix(config: ConfigArgs, validate: usize) -> anyhow::Result<()> {
    let cfg = Config::load(&config.config, &config.set)?;
    let summary = mixtrain::demix::demix(cfg, mixtrain::demix::DemixOptions { validate })?;
    println!(
        "demix: {} merged proxies scored; wrote {}",
        summary.scored,
        summary.dir.join("mixture.json").display()
    );
    println!(
        "regressor out-of-fold Spearman (predicted vs measured proxy loss): {:.3}",
        summary.cv_spearman
    );
    if let Some(rho) = summary.validation_spearman {
        println!("proxy vs trained target loss, Spearman over {validate} models: {rho:.3}");
    }
    println!("{:<16} {:>8}", "source", "weight");
    for (name, w) in summary.sources.iter().zip(&summary.mixture) {
        println!("{name:<16} {w:>8.4}");
    }
    println!(
        "use it with: --set mixer.init=\"demix:{}\"",
        summary.dir.display()
    );
    Ok(())
}

/// `mixtrain screen`: the ranked static mixtures, and how to use the best.
fn screen(config: ConfigArgs, weight: f64, seeds: Vec<u64>) -> anyhow::Result<()> {
    let cfg = Config::load(&config.config, &config.set)?;
    let options = mixtrain::screen::ScreenOptions { weight, seeds };
    let report = mixtrain::screen::screen(cfg, &options)?;
    print!("{}", report.to_table());
    println!("wrote {}", report.report_path.display());
    let best = report.best().run_dirs[0].display();
    println!("export the best with: mixtrain mixture {best} --format megatron");
    println!("start from it with: --set mixer.init=\"file:{best}/mixture.json\"");
    Ok(())
}

/// `mixtrain prepare`: tokenise and cache every source, or train a BPE tokenizer.
fn prepare(
    config: ConfigArgs,
    train_bpe: Option<usize>,
    tokenizer_out: Option<PathBuf>,
    verify: bool,
    megatron: Option<PathBuf>,
) -> anyhow::Result<()> {
    let cfg = Config::load(&config.config, &config.set)?;
    let Some(vocab) = train_bpe else {
        for line in mixtrain::prepare::prepare_sources(&cfg, verify, megatron.as_deref())? {
            println!("{line}");
        }
        return Ok(());
    };
    let out = tokenizer_out.unwrap_or_else(|| cfg.data.cache_dir.join(format!("bpe-{vocab}.json")));
    mixtrain::prepare::train_tokenizer(&cfg, vocab, &out)?;
    println!("wrote {}", out.display());
    println!(
        "use it with: --set data.tokenizer=\"bpe:{}\"",
        out.display()
    );
    Ok(())
}
