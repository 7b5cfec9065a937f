//! docs/config.md documents every key the config accepts, and no key it does not: each table's
//! accepted keys are read from the config's own "unknown field ..., expected one of ..." error
//! (an unknown key set in that table), so a key added to `Config` without a row fails here.

use std::collections::{BTreeMap, BTreeSet};

use mixtrain::config::Config;

use crate::common::repo;

/// docs/config.md's tables: section path ("run", "data.sources", "mixer.fastmix") → the keys
/// named in the first cell of its rows.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(repo().join("docs/config.md")).expect("docs/config.md");
    let mut tables = BTreeMap::<String, BTreeSet<String>>::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('#') {
            // "## `[run]`", "### `[[data.sources]]` (one table per source)"
            section = line
                .split('`')
                .nth(1)
                .map(|s| s.trim_matches(|c| c == '[' || c == ']').to_string());
            if let Some(name) = &section {
                tables.entry(name.clone()).or_default();
            }
        } else if let (Some(name), true) = (&section, line.starts_with("| `")) {
            let first_cell = line.split('|').nth(1).unwrap_or("");
            let keys = first_cell.split('`').skip(1).step_by(2);
            tables
                .get_mut(name)
                .unwrap()
                .extend(keys.map(str::to_string));
        }
    }
    tables
}

/// The keys `Config` accepts in `table` ("" for the top level), from its unknown-field error.
fn accepted(table: &str) -> BTreeSet<String> {
    let path = match table {
        "" => "zzz_not_a_key".to_string(),
        "data.sources" => "data.sources.0.zzz_not_a_key".to_string(),
        t => format!("{t}.zzz_not_a_key"),
    };
    let config = repo().join("configs/quickstart.toml");
    let error = Config::load(&config, &[format!("{path}=1")])
        .expect_err("an unknown key is an error")
        .to_string();
    let (_, expected) = error
        .split_once("expected")
        .unwrap_or_else(|| panic!("no list of expected keys for {table:?}: {error}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_config_key_is_documented_and_every_documented_key_exists() {
    let docs = documented();
    let mut problems = Vec::new();
    // Every top-level table has a section.
    for table in accepted("") {
        if !docs.contains_key(&table) {
            problems.push(format!("[{table}] has no section in docs/config.md"));
        }
    }
    for (table, rows) in &docs {
        let keys = accepted(table);
        for key in &keys {
            let own_section = docs.contains_key(&format!("{table}.{key}"));
            if !rows.contains(key) && !own_section {
                problems.push(format!("{table}.{key} is not documented"));
            }
        }
        for key in rows {
            if !keys.contains(key) {
                problems.push(format!(
                    "docs/config.md documents {table}.{key}, which the config does not accept"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check reads what it should: the sections it found and a key from each kind.
    assert!(docs["train"].contains("cpu_pass_size"), "{docs:?}");
    assert!(docs["data.sources"].contains("val_fraction"), "{docs:?}");
    assert!(docs.contains_key("mixer.tikmix-m"), "{docs:?}");
}
