//! Weighted merges of component models, θ(w) = Σ_k w_k θ_k, by burn module mapping: the
//! components' parameters stay on the device, flattened, and each merge maps one model's
//! parameters in place of a file round trip.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;

use crate::error::{Error, Result};
use crate::params::{NamedTensor, ParamPath};

/// The parameters of K component models of one architecture, by name, flattened on `device`.
pub(crate) struct Components<B: Backend> {
    /// name → one [numel] tensor per component.
    params: BTreeMap<String, Vec<Tensor<B, 1>>>,
    count: usize,
}

impl<B: Backend> Components<B> {
    /// `components[k]` holds component k's parameters (as `collect_params` returns them).
    pub(crate) fn new(components: &[Vec<NamedTensor>], device: &B::Device) -> Result<Self> {
        let mut params: BTreeMap<String, Vec<Tensor<B, 1>>> = BTreeMap::new();
        for (k, component) in components.iter().enumerate() {
            if component.len() != components[0].len() {
                return Err(Error::Training(format!(
                    "demix component {k} has {} parameters, component 0 has {}",
                    component.len(),
                    components[0].len()
                )));
            }
            for tensor in component {
                let flat = Tensor::<B, 1>::from_data(
                    TensorData::new(tensor.data.clone(), [tensor.data.len()]),
                    device,
                );
                params.entry(tensor.name.clone()).or_default().push(flat);
            }
        }
        if let Some((name, _)) = params.iter().find(|(_, v)| v.len() != components.len()) {
            return Err(Error::Training(format!(
                "parameter {name} is missing from some demix component"
            )));
        }
        Ok(Components {
            params,
            count: components.len(),
        })
    }

    /// `model` with every parameter replaced by Σ_k weights[k] θ_k (components with weight 0
    /// skipped, so a one-hot weight reproduces its component exactly).
    pub(crate) fn merge_into<M: Module<B>>(&self, model: M, weights: &[f64]) -> Result<M> {
        assert_eq!(weights.len(), self.count, "one weight per component");
        let mut mapper = Merge {
            components: self,
            weights,
            path: ParamPath::default(),
            error: None,
        };
        let model = model.map(&mut mapper);
        match mapper.error {
            Some(message) => Err(Error::Training(message)),
            None => Ok(model),
        }
    }
}

struct Merge<'a, B: Backend> {
    components: &'a Components<B>,
    weights: &'a [f64],
    path: ParamPath,
    error: Option<String>,
}

impl<B: Backend> ModuleMapper<B> for Merge<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let name = self.path.name();
        let dims = tensor.dims();
        let numel: usize = dims.iter().product();
        let Some(parts) = self.components.params.get(&name) else {
            self.error
                .get_or_insert(format!("parameter {name} is in no demix component"));
            return Param::from_mapped_value(id, tensor, mapper);
        };
        if parts[0].dims()[0] != numel {
            self.error.get_or_insert(format!(
                "parameter {name}: {numel} values in the model, {} in the components",
                parts[0].dims()[0]
            ));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let mut merged: Option<Tensor<B, 1>> = None;
        for (part, &w) in parts.iter().zip(self.weights) {
            if w == 0.0 {
                continue;
            }
            let term = if w == 1.0 {
                part.clone()
            } else {
                part.clone() * w
            };
            merged = Some(match merged.take() {
                Some(m) => m + term,
                None => term,
            });
        }
        let merged = merged.unwrap_or_else(|| parts[0].zeros_like());
        Param::from_mapped_value(id, merged.reshape(dims), mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::collect_params;
    use burn::backend::NdArray;
    use burn::nn::{Linear, LinearConfig};

    type B = NdArray;

    fn linear_with(weight: [[f32; 2]; 2], bias: [f32; 2]) -> Vec<NamedTensor> {
        vec![
            NamedTensor {
                name: "weight".into(),
                shape: vec![2, 2],
                data: weight.concat(),
                is_linear_weight: true,
            },
            NamedTensor {
                name: "bias".into(),
                shape: vec![2],
                data: bias.to_vec(),
                is_linear_weight: false,
            },
        ]
    }

    /// Hand computation: 0.25 · [[1, 2], [3, 4]] + 0.75 · [[5, 6], [7, 8]] = [[4, 5], [6, 7]];
    /// biases 0.25 · (1, −1) + 0.75 · (−3, 5) = (−2, 3.5).
    #[test]
    fn merge_matches_hand_computation_and_one_hot_reproduces_a_component() {
        let device = Default::default();
        let a = linear_with([[1.0, 2.0], [3.0, 4.0]], [1.0, -1.0]);
        let b = linear_with([[5.0, 6.0], [7.0, 8.0]], [-3.0, 5.0]);
        let components = Components::<B>::new(&[a.clone(), b.clone()], &device).unwrap();
        let model: Linear<B> = LinearConfig::new(2, 2).init(&device);

        let merged = components.merge_into(model.clone(), &[0.25, 0.75]).unwrap();
        let got = collect_params(&merged);
        let by_name = |name: &str| got.iter().find(|t| t.name == name).unwrap().data.clone();
        assert_eq!(by_name("weight"), vec![4.0, 5.0, 6.0, 7.0]);
        assert_eq!(by_name("bias"), vec![-2.0, 3.5]);

        for (k, component) in [a, b].iter().enumerate() {
            let mut one_hot = [0.0; 2];
            one_hot[k] = 1.0;
            let merged = components.merge_into(model.clone(), &one_hot).unwrap();
            for tensor in collect_params(&merged) {
                let want = component.iter().find(|t| t.name == tensor.name).unwrap();
                assert_eq!(tensor.data, want.data, "{} of component {k}", tensor.name);
            }
        }
    }

    #[test]
    fn mismatched_components_are_errors() {
        let device = Default::default();
        let a = linear_with([[1.0, 2.0], [3.0, 4.0]], [1.0, -1.0]);
        let short = a[..1].to_vec();
        assert!(Components::<B>::new(&[a.clone(), short], &device).is_err());
        let components = Components::<B>::new(&[a], &device).unwrap();
        let wrong: Linear<B> = LinearConfig::new(3, 2).init(&device);
        assert!(components.merge_into(wrong, &[1.0]).is_err());
    }
}
