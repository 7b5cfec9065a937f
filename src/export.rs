//! The exported final model: PyTorch's layout (Linear weights [out, in], RMSNorm gains named
//! `weight`) with the model config as metadata.

use std::path::Path;

use burn::prelude::Backend;

use crate::error::Result;
use crate::model::{Gpt, ModelConfig};
use crate::params::{collect_params, NamedTensor};
pub use crate::tensor_file::{read_safetensors, write_safetensors};

/// Writes `model` as safetensors in PyTorch's layout, with its config (`mixtrain_model`, JSON)
/// and `vocab_size` as metadata.
pub fn export_model<B: Backend>(
    path: &Path,
    model: &Gpt<B>,
    config: &ModelConfig,
    vocab_size: usize,
) -> Result<()> {
    let params = to_pytorch_layout(&collect_params(model));
    let metadata = [
        ("format", "pt".to_string()),
        (
            "mixtrain_model",
            serde_json::to_string(config).expect("JSON serialises"),
        ),
        ("vocab_size", vocab_size.to_string()),
    ];
    write_safetensors(path, &params, &metadata)
}

/// The parameters renamed and laid out as a PyTorch model of the same architecture expects.
pub(crate) fn to_pytorch_layout(params: &[NamedTensor]) -> Vec<NamedTensor> {
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
    fn pytorch_layout_transposes_linears_and_renames_gains() {
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
    }
}
