//! safetensors files: checkpoints (burn's layout) and the exported final model (PyTorch's
//! layout: Linear weights [out, in], RMSNorm gains named `weight`).

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors};

use crate::backend::TrainBackend;
use crate::error::{Error, IoContext, Result};
use crate::params::{collect_params, NamedTensor};
use crate::train::Session;

/// Writes the session's model as safetensors in PyTorch's layout, with the model config
/// (`mixtrain_model`, JSON) and `vocab_size` as metadata.
pub fn export_model<B: TrainBackend>(path: &Path, session: &Session<B>) -> Result<()> {
    let params = to_pytorch_layout(&collect_params(&session.model));
    let metadata = [
        ("format", "pt".to_string()),
        (
            "mixtrain_model",
            serde_json::to_string(&session.config.model).expect("JSON serialises"),
        ),
        ("vocab_size", session.vocab_size.to_string()),
    ];
    write_safetensors(path, &params, &metadata)
}

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

/// The parameters renamed and laid out as a PyTorch model of the same architecture expects.
pub fn to_pytorch_layout(params: &[NamedTensor]) -> Vec<NamedTensor> {
    params
        .iter()
        .map(|p| {
            let name = match p.name.strip_suffix(".gamma") {
                Some(stem) => format!("{stem}.weight"),
                None => p.name.clone(),
            };
            if p.is_linear_weight && p.shape.len() == 2 {
                let (rows, cols) = (p.shape[0], p.shape[1]); // burn: [in, out]
                let mut data = vec![0f32; p.data.len()];
                for r in 0..rows {
                    for c in 0..cols {
                        data[c * rows + r] = p.data[r * cols + c];
                    }
                }
                NamedTensor {
                    name,
                    shape: vec![cols, rows],
                    data,
                    is_linear_weight: true,
                }
            } else {
                NamedTensor { name, ..p.clone() }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_transpose() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let lin = NamedTensor {
            name: "blocks.0.attn.q_proj.weight".into(),
            shape: vec![2, 3],
            data: vec![1., 2., 3., 4., 5., 6.],
            is_linear_weight: true,
        };
        let gain = NamedTensor {
            name: "norm_f.gamma".into(),
            shape: vec![3],
            data: vec![1., 1., 1.],
            is_linear_weight: false,
        };
        let exported = to_pytorch_layout(&[lin, gain]);
        write_safetensors(&path, &exported, &[("format", "pt".into())]).unwrap();
        let back = read_safetensors(&path).unwrap();
        let w = &back["blocks.0.attn.q_proj.weight"];
        assert_eq!(w.shape, vec![3, 2]);
        assert_eq!(w.data, vec![1., 4., 2., 5., 3., 6.]);
        assert!(back.contains_key("norm_f.weight"));

        std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
        assert!(read_safetensors(&path).is_err());
    }
}
