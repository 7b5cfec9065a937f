//! Every input format a source reads, from files the test writes: JSON lines and text, plain,
//! gzip and zstd, and Parquet (written with the parquet crate's own writer). The same documents
//! in any of them give the same shards, byte for byte. Bad records stop tokenising or are
//! skipped and counted; files no reader takes are named in a warning.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mixtrain::config::Config;
use mixtrain::prepare::prepare_sources;

use crate::common::{mixtrain, repo};

/// The quickstart's prose documents (a few hundred, some with non-ASCII text).
fn documents() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("data/quickstart/prose.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn jsonl(docs: &[String], field: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for doc in docs {
        serde_json::to_writer(&mut out, &serde_json::json!({ field: doc, "id": 1 })).unwrap();
        out.push(b'\n');
    }
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

/// A Parquet file with one string column `column`, one row per document, in two row groups.
fn parquet(path: &Path, docs: &[String], column: &str) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let schema =
        format!("message schema {{ REQUIRED BYTE_ARRAY {column} (UTF8); REQUIRED INT32 id; }}");
    let schema = Arc::new(parse_message_type(&schema).unwrap());
    let file = std::fs::File::create(path).unwrap();
    let props = Arc::new(WriterProperties::builder().build());
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    for group in docs.chunks(docs.len().div_ceil(2)) {
        let mut row_group = writer.next_row_group().unwrap();
        let texts: Vec<ByteArray> = group.iter().map(|d| ByteArray::from(d.as_str())).collect();
        let mut text_column = row_group.next_column().unwrap().unwrap();
        text_column
            .typed::<ByteArrayType>()
            .write_batch(&texts, None, None)
            .unwrap();
        text_column.close().unwrap();
        let ids = vec![7i32; group.len()];
        let mut id_column = row_group.next_column().unwrap().unwrap();
        id_column
            .typed::<parquet::data_type::Int32Type>()
            .write_batch(&ids, None, None)
            .unwrap();
        id_column.close().unwrap();
        row_group.close().unwrap();
    }
    writer.close().unwrap();
}

/// Prepares `sources` (name, path, text_field) and returns each one's shard directory.
fn prepare(
    dir: &Path,
    sources: &[(&str, PathBuf, &str)],
    data_keys: &str,
) -> mixtrain::Result<Vec<PathBuf>> {
    let mut text = format!(
        "[data]\nseq_len = 16\ncache_dir = {:?}\n{data_keys}\n",
        dir.join("cache").display().to_string()
    );
    for (name, path, field) in sources {
        text.push_str(&format!(
            "[[data.sources]]\nname = {name:?}\npath = {:?}\ntext_field = {field:?}\n",
            path.display().to_string()
        ));
    }
    let config = Config::from_toml_str(&text, "formats.toml", &[])?;
    let lines = prepare_sources(&config, false, None)?;
    Ok(lines
        .iter()
        .filter_map(|l| l.rsplit_once(" in ").map(|(_, dir)| PathBuf::from(dir)))
        .collect())
}

fn shards(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    crate::common::entry_tokens(dir)
}

#[test]
fn every_format_gives_the_same_shards_as_plain_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documents();
    let plain = jsonl(&docs, "text");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let mut sources = vec![
        ("plain", write("a.jsonl", &plain), "text"),
        ("gz", write("b.jsonl.gz", &gzip(&plain)), "text"),
        ("zst", write("c.jsonl.zst", &zstd(&plain)), "text"),
        ("json", write("d.json", &plain), "text"),
        (
            "content",
            write("e.jsonl.zst", &zstd(&jsonl(&docs, "content"))),
            "content",
        ),
    ];
    let parquet_path = dir.path().join("f.parquet");
    parquet(&parquet_path, &docs, "text");
    sources.push(("parquet", parquet_path, "text"));
    let stack_path = dir.path().join("g.parquet");
    parquet(&stack_path, &docs, "content");
    sources.push(("parquet_content", stack_path, "content"));
    let dirs = prepare(dir.path(), &sources, "").unwrap();
    let expected = shards(&dirs[0]);
    assert!(expected.0.len() > 10_000, "the corpus was tokenised");
    for ((name, ..), shard_dir) in sources.iter().zip(&dirs).skip(1) {
        assert!(
            shards(shard_dir) == expected,
            "{name}: shards differ from plain jsonl"
        );
    }
}

/// One document per file: `.txt` and `.md`, against the same files gzip- and zstd-compressed.
#[test]
fn text_files_plain_and_compressed_give_the_same_shards() {
    let dir = tempfile::tempdir().unwrap();
    let sub = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    let (plain, packed) = (sub("plain"), sub("packed"));
    for (i, doc) in documents().iter().take(60).enumerate() {
        let (name, compressed) = if i % 2 == 0 {
            (format!("doc_{i:03}.txt"), format!("doc_{i:03}.txt.gz"))
        } else {
            (format!("doc_{i:03}.md"), format!("doc_{i:03}.md.zst"))
        };
        std::fs::write(plain.join(name), doc).unwrap();
        let bytes = if i % 2 == 0 {
            gzip(doc.as_bytes())
        } else {
            zstd(doc.as_bytes())
        };
        std::fs::write(packed.join(compressed), bytes).unwrap();
    }
    let sources = [("plain", plain, "text"), ("packed", packed, "text")];
    let dirs = prepare(dir.path(), &sources, "").unwrap();
    assert!(shards(&dirs[0]) == shards(&dirs[1]));
}

/// One line of 100 is not JSON: "error" (the default) names the file and line; "skip" counts
/// it in meta.json and tokenises the rest; past `max_bad_fraction` skipping stops too.
#[test]
fn bad_records_stop_or_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<String> = documents().into_iter().take(100).collect();
    let mut bytes = jsonl(&docs, "text");
    let cut = bytes.iter().position(|&b| b == b'\n').unwrap();
    // Line 2 becomes `{"text": 7}`: valid JSON, but no string field.
    let second_end = cut + 1 + bytes[cut + 1..].iter().position(|&b| b == b'\n').unwrap();
    bytes.splice(cut + 1..second_end, b"{\"text\": 7}".iter().copied());
    let path = dir.path().join("bad.jsonl.gz");
    std::fs::write(&path, gzip(&bytes)).unwrap();
    let source = [("prose", path.clone(), "text")];

    let err = prepare(dir.path(), &source, "").unwrap_err().to_string();
    assert!(
        err.contains("bad.jsonl.gz") && err.contains("line 2"),
        "{err}"
    );
    assert!(err.contains("string field \"text\""), "{err}");

    let strict = "on_bad_record = \"skip\"\nmax_bad_fraction = 0.005";
    let err = prepare(dir.path(), &source, strict)
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 of 100 records are bad"), "{err}");
    assert!(err.contains("line 2"), "{err}");

    let dirs = prepare(dir.path(), &source, "on_bad_record = \"skip\"").unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dirs[0].join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["bad_records"], 1);
    assert_eq!(
        meta["train_documents"].as_u64().unwrap() + meta["val_documents"].as_u64().unwrap(),
        99
    );
}

/// A file in a source directory that no reader takes is named in a warning, not dropped
/// silently; a single such file is an error naming what is read.
#[test]
fn unreadable_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.jsonl"), jsonl(&documents(), "text")).unwrap();
    std::fs::write(data.join("notes.csv"), "a,b\n").unwrap();
    let config = dir.path().join("config.toml");
    let text = format!(
        "[data]\nseq_len = 16\ncache_dir = {:?}\n[[data.sources]]\nname = \"prose\"\npath = {:?}\n",
        dir.path().join("cache").display().to_string(),
        data.display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    let out = mixtrain().arg("prepare").arg(&config).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("notes.csv") && stderr.contains("no reader takes"),
        "{stderr}"
    );

    let single = format!(
        "[data]\ncache_dir = {:?}\n[[data.sources]]\nname = \"prose\"\npath = {:?}\n",
        dir.path().join("cache").display().to_string(),
        data.join("notes.csv").display().to_string()
    );
    std::fs::write(&config, single).unwrap();
    let out = mixtrain().arg("prepare").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("notes.csv") && stderr.contains(".parquet"),
        "{stderr}"
    );
}
