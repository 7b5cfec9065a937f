//! The safetensors codec for f32 tensors: checkpoints (burn's layout), the exported model
//! (PyTorch's), DeMix's models and DoReMi's reference all go through these two functions.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors};

use crate::error::{Error, IoContext, Result};
use crate::params::NamedTensor;

/// Writes `tensors` (f32) with string metadata to `path` in the safetensors format. The header
/// is built here rather than by the safetensors crate so its key order (and so the file's
/// bytes) is deterministic: metadata in the given order, tensors in the given order.
pub fn write_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &[(&str, String)],
) -> Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.as_str())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    }
    let mut offset = 0usize;
    for t in tensors {
        let bytes = t.data.len() * 4;
        header.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + bytes] }),
        );
        offset += bytes;
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    // The data starts 8-byte aligned: pad the header with spaces.
    while !(8 + header.len()).is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for t in tensors {
        for x in &t.data {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    crate::fsutil::write_atomic(path, &out)
}

/// Reads an f32 safetensors file into named tensors. Any malformed or truncated file is an
/// error naming `path`.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, NamedTensor>> {
    let bytes = std::fs::read(path).at(path)?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::checkpoint(path, format!("corrupt safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::checkpoint(
                path,
                format!("tensor {name} is {:?}, expected F32", view.dtype()),
            ));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("chunks of 4")))
            .collect();
        out.insert(
            name.clone(),
            NamedTensor {
                name,
                shape: view.shape().to_vec(),
                data,
                is_linear_weight: false,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_a_torn_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let t = NamedTensor {
            name: "w".into(),
            shape: vec![2, 3],
            data: vec![1., 2., 3., 4., 5., 6.],
            is_linear_weight: true,
        };
        write_safetensors(&path, std::slice::from_ref(&t), &[("format", "pt".into())]).unwrap();
        let back = read_safetensors(&path).unwrap();
        assert_eq!(back["w"].shape, t.shape);
        assert_eq!(back["w"].data, t.data);
        std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
        assert!(read_safetensors(&path).is_err());
    }
}
