//! Data: tokenizers, token shards on disk, sources (tokenised once and cached), and the
//! sampler that turns mixture weights into batches tagged with source ids.

mod cache;
mod config;
mod contamination;
mod manifest;
mod megatron;
mod order;
mod parquet;
mod readers;
mod sampler;
mod shard;
mod source;
mod tokenise;
mod tokenizer;

pub(crate) use config::default_text_field;
pub use config::{BadRecordPolicy, DataConfig, SourceConfig};
pub(crate) use contamination::{overlaps, span_tokens, Overlap};
pub use megatron::{write_indexed, IndexedWritten};
pub(crate) use readers::for_each_document;
pub use readers::{read_documents, resolve_files};
pub use sampler::{validation_windows, ApplyMode, Batch, Sampler, SamplerState};
pub use shard::{write_shard, Shard, SHARD_HEADER_BYTES};
pub(crate) use source::is_validation;
pub use source::{load_sources, load_sources_checked, load_target_sets, Source};
pub(crate) use tokenizer::{train_bpe, Tokenizer};
