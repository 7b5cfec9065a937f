//! mixtrain's training step against PyTorch eager on the same model, in one run.
//!
//!     cargo bench --bench vs_pytorch                  # 5 rounds of 10 steps each
//!     ROUNDS=7 STEPS=20 MLP=swiglu D_FF=384 cargo bench --bench vs_pytorch
//!     PASS_SIZES=8,4,0 cargo bench --bench vs_pytorch   # mixtrain at these cpu_pass_size
//!
//! The model is the throughput issue's shape (vocab 257, d_model 128, 4 layers, 4 heads, GELU
//! MLP with d_ff 512, seq 128, batch 16, AdamW, clipping, fp32) unless MLP / D_FF say
//! otherwise. The PyTorch side is `benches/vs_pytorch.py`, run from a venv the bench makes in
//! `target/torch-venv` (`pip install torch==2.9.1`, about 7 GB with its CUDA libraries, once);
//! when torch cannot be installed the bench says so and times mixtrain alone.
//!
//! The trainers stay alive for the whole bench and take turns: a round times STEPS steps of
//! mixtrain at its default `train.cpu_pass_size` (four passes of 4 side by side), STEPS of
//! mixtrain as one pass of 16 (`cpu_pass_size = 0`; PASS_SIZES lists other sizes to time
//! instead), then STEPS steps of PyTorch (all with
//! 2 threads), so load on the shared machine hits all alike. Prints the median ms/step of each and the speed ratio PyTorch / mixtrain
//! (> 1: mixtrain is faster).

#[macro_use]
mod report;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use mixtrain::backend::{dispatch, BackendTask, TrainBackend};
use mixtrain::config::{Config, MixerKind, MlpKind};
use mixtrain::train::Session;

const TORCH_VERSION: &str = "2.9.1";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The venv's python with torch importable, made on first use; Err says why not.
fn torch_python() -> Result<PathBuf, String> {
    let venv = Path::new("target/torch-venv");
    let python = venv.join("bin/python");
    let has_torch = |python: &Path| {
        Command::new(python)
            .args(["-c", "import torch"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && has_torch(&python) {
        return Ok(python);
    }
    eprintln!(
        "vs_pytorch: creating {} with torch=={TORCH_VERSION} (once; several minutes)",
        venv.display()
    );
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .map_err(|e| format!("python3 -m venv: {e}"))?;
    if !made.success() {
        return Err("python3 -m venv failed".into());
    }
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(format!("torch=={TORCH_VERSION}"))
        .status()
        .map_err(|e| format!("pip: {e}"))?;
    if !installed.success() || !has_torch(&python) {
        return Err(format!("pip install torch=={TORCH_VERSION} failed"));
    }
    Ok(python)
}

/// The PyTorch trainer as a child process that runs N steps per request.
struct Torch {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Torch {
    fn start(python: &Path, config: &Config) -> Result<Torch, String> {
        let model = &config.model;
        let mlp = match model.mlp {
            MlpKind::Gelu => "gelu",
            MlpKind::Swiglu => "swiglu",
        };
        let mut child = Command::new(python)
            .arg("benches/vs_pytorch.py")
            .args(["--d-model", &model.d_model.to_string()])
            .args(["--n-layers", &model.n_layers.to_string()])
            .args(["--n-heads", &model.n_heads.to_string()])
            .args(["--d-ff", &model.d_ff.to_string()])
            .args(["--mlp", mlp])
            .args(["--seq-len", &config.data.seq_len.to_string()])
            .args(["--batch-size", &config.train.batch_size.to_string()])
            .args(["--threads", "2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting benches/vs_pytorch.py: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut torch = Torch {
            child,
            stdin,
            stdout,
        };
        let ready = torch.read_line()?;
        say!("vs_pytorch: {ready}");
        Ok(torch)
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) | Err(_) => Err("benches/vs_pytorch.py stopped answering".into()),
            Ok(_) => Ok(line.trim().to_string()),
        }
    }

    /// ms per step over `steps` steps.
    fn time_steps(&mut self, steps: usize) -> Result<f64, String> {
        writeln!(self.stdin, "{steps}").map_err(|e| e.to_string())?;
        self.stdin.flush().map_err(|e| e.to_string())?;
        let answer = self.read_line()?;
        answer
            .parse()
            .map_err(|_| format!("unexpected answer from vs_pytorch.py: {answer}"))
    }
}

impl Drop for Torch {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

struct Bench {
    config: Config,
    rounds: usize,
    steps: usize,
    torch: Option<Torch>,
}

impl BackendTask for Bench {
    type Output = ();
    fn run<B: TrainBackend>(
        mut self,
        device: B::Device,
        backend: &'static str,
    ) -> mixtrain::Result<()> {
        // mixtrain at its default `cpu_pass_size` (the 16 sequences as four passes of 4 side
        // by side) and as one pass of 16 (`cpu_pass_size = 0`, before 2026-11-25), or at the
        // sizes PASS_SIZES lists.
        let default_sizes = format!("{},0", self.config.train.cpu_pass_size);
        let sizes = std::env::var("PASS_SIZES").unwrap_or(default_sizes);
        let mut sessions = Vec::new();
        for size in sizes.split(',') {
            let size: usize = size.trim().parse().unwrap_or_else(|_| {
                panic!("PASS_SIZES={sizes}: expected sizes separated by commas, e.g. 8,4,0")
            });
            let mut config = self.config.clone();
            config.train.cpu_pass_size = size;
            let label = match size {
                0 => "one pass".to_string(),
                n => format!("passes of {n}"),
            };
            sessions.push((label, Session::<B>::build(config, device.clone())?));
        }
        for (_, session) in &mut sessions {
            for _ in 0..3 {
                session.train_step()?;
            }
        }
        let mut ours = vec![Vec::new(); sessions.len()];
        let mut theirs = Vec::new();
        for round in 0..self.rounds {
            for ((_, session), times) in sessions.iter_mut().zip(&mut ours) {
                let start = Instant::now();
                for _ in 0..self.steps {
                    session.train_step()?;
                }
                times.push(start.elapsed().as_secs_f64() * 1e3 / self.steps as f64);
            }
            if let Some(torch) = self.torch.as_mut() {
                match torch.time_steps(self.steps) {
                    Ok(ms) => theirs.push(ms),
                    Err(e) => {
                        say!("vs_pytorch: {e}; timing mixtrain alone from here");
                        self.torch = None;
                    }
                }
            }
            let mine: Vec<String> = sessions
                .iter()
                .zip(&ours)
                .map(|((label, _), times)| {
                    format!("mixtrain ({label}) {:.1} ms/step", times[round])
                })
                .collect();
            say!(
                "round {round}: {}, pytorch {}",
                mine.join(", "),
                theirs
                    .get(round)
                    .map_or("-".to_string(), |ms| format!("{ms:.1} ms/step"))
            );
        }
        let tokens = (self.config.train.batch_size
            * self.config.train.grad_accum
            * self.config.data.seq_len) as f64;
        let theirs = (theirs.len() == self.rounds).then(|| report::median(theirs));
        for ((label, _), times) in sessions.iter().zip(ours) {
            let ours = report::median(times);
            say!(
                "vs_pytorch/mixtrain ({backend}, {label}) {ours:>8.1} ms/step {:>9.0} tokens/s (median of {} rounds of {} steps)",
                tokens / ours * 1e3,
                self.rounds,
                self.steps
            );
            if let Some(theirs) = theirs {
                say!(
                    "vs_pytorch speed mixtrain ({label}) / pytorch = {:.2}",
                    theirs / ours
                );
            }
        }
        if let Some(theirs) = theirs {
            say!(
                "vs_pytorch/pytorch-eager  {theirs:>8.1} ms/step {:>9.0} tokens/s",
                tokens / theirs * 1e3
            );
        }
        Ok(())
    }
}

fn main() -> mixtrain::Result<()> {
    let mut config = Config::load(Path::new("configs/quickstart.toml"), &[])?;
    config.mixer.kind = MixerKind::Static;
    config.model.mlp = match std::env::var("MLP").as_deref() {
        Ok("swiglu") => MlpKind::Swiglu,
        _ => MlpKind::Gelu,
    };
    config.model.d_ff = env_or("D_FF", 512);
    let torch = match torch_python().and_then(|python| Torch::start(&python, &config)) {
        Ok(torch) => Some(torch),
        Err(why) => {
            say!("vs_pytorch: PyTorch side skipped: {why}");
            None
        }
    };
    let bench = Bench {
        rounds: env_or("ROUNDS", 5),
        steps: env_or("STEPS", 10),
        config: config.clone(),
        torch,
    };
    dispatch(config.run.backend, bench)?;
    report::finish(
        "vs_pytorch",
        "throughput",
        &[
            "PASS_SIZES",
            "MLP",
            "D_FF",
            "ROUNDS",
            "STEPS",
            "RAYON_NUM_THREADS",
        ],
    );
    Ok(())
}
