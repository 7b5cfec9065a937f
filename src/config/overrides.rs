//! `--set key=value` overrides, applied to the parsed TOML table before it is deserialised.

use crate::error::{Error, Result};

/// Applies one `key=value` override to the parsed TOML table. The value is read as TOML
/// (`3e-4`, `true`, `"x"`, `{ a = 1 }`); anything that does not parse is taken as a string,
/// so `--set run.out_dir=runs/x` works unquoted.
pub(crate) fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let (key, raw) = item.split_once('=').ok_or_else(|| Error::ConfigParse {
        file: "--set".into(),
        message: format!("expected key=value (got {item:?})"),
    })?;
    let key = key.trim();
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut parsed) => parsed.remove("v").expect("the parsed table has key v"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::ConfigParse {
            file: "--set".into(),
            message: format!("malformed key {key:?}"),
        });
    }
    let mut current = table;
    for (depth, part) in parts.iter().enumerate() {
        let last = depth + 1 == parts.len();
        if last {
            current.insert(part.to_string(), value);
            return Ok(());
        }
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                // data.sources.0.path: index into an array of tables.
                let index: usize = parts[depth + 1].parse().map_err(|_| Error::ConfigParse {
                    file: "--set".into(),
                    message: format!(
                        "{}: is an array; the next part of the key must be an index",
                        parts[..=depth].join(".")
                    ),
                })?;
                let len = items.len();
                let item = items.get_mut(index).ok_or_else(|| Error::ConfigParse {
                    file: "--set".into(),
                    message: format!(
                        "{}: index {index} out of range (the array has {len} entries)",
                        parts[..=depth].join(".")
                    ),
                })?;
                if depth + 2 == parts.len() {
                    *item = value;
                    return Ok(());
                }
                match item {
                    toml::Value::Table(t) => {
                        // Skip the index part on the next iteration by recursing.
                        let rest = parts[depth + 2..].join(".");
                        let mut sub = std::mem::take(t);
                        let result = apply_override(&mut sub, &format!("{rest}={raw}"));
                        *t = sub;
                        return result;
                    }
                    _ => {
                        return Err(Error::ConfigParse {
                            file: "--set".into(),
                            message: format!("{key}: not a table"),
                        })
                    }
                }
            }
            _ => {
                return Err(Error::ConfigParse {
                    file: "--set".into(),
                    message: format!("{}: is not a table", parts[..=depth].join(".")),
                })
            }
        };
    }
    unreachable!("the loop returns at the last part")
}
