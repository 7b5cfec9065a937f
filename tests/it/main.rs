//! mixtrain's integration tests, one binary (so burn is linked once): each module is a topic.
//! Most run the real `mixtrain` binary on the bundled quickstart corpus in temporary
//! directories (`common`); a few drive the library directly.

mod common;

mod bad_inputs;
mod cli;
mod config_doc;
mod demix;
mod determinism;
mod distributed;
mod export;
mod faults;
mod formats;
mod fuzz_readers;
mod prepare;
mod quickstart;
mod resume;
mod screen;
mod single_pass;
mod synthetic;
mod target_sets;
mod transfer;
