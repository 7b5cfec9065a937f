//! Parquet sources (FineWeb, The Stack, most HF datasets): one document per row of a string
//! column, read row group by row group with only that column projected, so memory stays at one
//! row group's column whatever the file's size.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;

use super::readers::Record;
use crate::error::{Error, IoContext, Result};

/// Calls `each` with every row's document in file order (`column` holds the text).
pub(crate) fn for_each_row(
    path: &Path,
    column: &str,
    mut each: impl FnMut(Record) -> Result<()>,
) -> Result<()> {
    let bad = |message: String| Error::data(path, message);
    let file = File::open(path).at(path)?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
    let projection = project(&reader, column).map_err(bad)?;
    let rows = reader
        .get_row_iter(Some(projection))
        .map_err(|e| bad(format!("cannot read column {column:?}: {e}")))?;
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| bad(format!("row {}: {e}", i + 1)))?;
        let document = match row.get_column_iter().next().map(|(_, field)| field) {
            Some(Field::Str(text)) => Ok(text.clone()),
            Some(Field::Null) | None => Err(format!("column {column:?} is null")),
            Some(other) => Err(format!("column {column:?} holds {other}, not a string")),
        };
        each(Record {
            at: format!("row {}", i + 1),
            document,
        })?;
    }
    Ok(())
}

/// The file's schema cut down to `column` (a top-level field), or why it cannot be.
fn project(reader: &SerializedFileReader<File>, column: &str) -> std::result::Result<Type, String> {
    let root = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema();
    let fields = root.get_fields();
    let Some(field) = fields.iter().find(|f| f.name() == column) else {
        let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        return Err(format!(
            "no column {column:?} (the file has {names:?}); set the source's text_field"
        ));
    };
    Type::group_type_builder(root.name())
        .with_fields(vec![Arc::clone(field)])
        .build()
        .map_err(|e| format!("cannot project column {column:?}: {e}"))
}
