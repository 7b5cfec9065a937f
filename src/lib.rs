//! mixtrain: train a GPT-style language model on several data sources while learning the data
//! mixture online. See README.md for the commands and docs/design.md for the architecture.

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod demix;
pub mod distributed;
pub mod error;
pub mod evaluate;
pub mod export;
pub mod fault;
pub mod fsutil;
pub mod gbt;
pub mod mixer;
pub mod mixture_export;
pub mod mixture_file;
pub mod model;
pub mod optim;
pub mod params;
pub mod plot;
pub mod prepare;
pub mod repetition;
pub mod rng;
pub mod run_lock;
pub mod rundir;
pub mod screen;
pub mod target;
pub mod tensor_file;
pub mod train;
pub mod trajectory;
pub mod validate;

pub use error::{Error, Result};
