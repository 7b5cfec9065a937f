//! The inner loop (one training step, evaluation) and the run loop around it.

mod batches;
mod config;
mod evaluator;
mod measure;
mod micro;
mod mixing;
mod passes;
mod probe;
mod ranks;
mod reducer;
mod reference;
mod report;
mod run;
mod session;
mod single_pass;
mod source_grads;
mod state;
mod step;
mod trainer;

pub use config::{NonFinitePolicy, RunConfig, TrainConfig};
pub(crate) use evaluator::Evaluator;
pub use probe::GradProbe;
pub use run::{run, Resumed, RunOptions, RunSummary};
pub use session::{Session, StepReport};
