//! Parameters by readable name ("blocks.0.attn.q_proj.weight"): copy them to the host (for
//! checkpoints and export) and load them back into a model.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::error::{Error, Result};

/// A parameter copied to the host, f32, row-major.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub(crate) data: Vec<f32>,
    /// A burn `Linear` weight, stored [in, out] (PyTorch stores [out, in]).
    pub(crate) is_linear_weight: bool,
}

/// Tracks the module path during a visit or map.
#[derive(Default)]
pub(crate) struct ParamPath {
    names: Vec<String>,
    containers: Vec<String>,
}

impl ParamPath {
    pub(crate) fn enter(&mut self, name: &str, container_type: &str) {
        self.names.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    pub(crate) fn exit(&mut self) {
        self.names.pop();
        self.containers.pop();
    }

    pub(crate) fn name(&self) -> String {
        self.names.join(".")
    }

    fn in_linear(&self) -> bool {
        self.containers.last().map(String::as_str) == Some("Struct:Linear")
    }
}

struct Collector {
    path: ParamPath,
    out: Vec<NamedTensor>,
}

impl<B: Backend> ModuleVisitor<B> for Collector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        // A host sync per parameter: only at checkpoints and export.
        let data = tensor
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("converted to f32 above");
        self.out.push(NamedTensor {
            name: self.path.name(),
            shape,
            data,
            is_linear_weight: self.path.in_linear(),
        });
    }
}

/// Every float parameter of `module`, in module order.
pub(crate) fn collect_params<B: Backend, M: Module<B>>(module: &M) -> Vec<NamedTensor> {
    let mut collector = Collector {
        path: ParamPath::default(),
        out: Vec::new(),
    };
    module.visit(&mut collector);
    collector.out
}

struct Loader<'a> {
    path: ParamPath,
    tensors: &'a BTreeMap<String, NamedTensor>,
    error: Option<String>,
    loaded: usize,
}

impl<B: Backend> ModuleMapper<B> for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let name = self.path.name();
        let dims = tensor.dims().to_vec();
        let tensor = match self.tensors.get(&name) {
            Some(saved) if saved.shape == dims => {
                self.loaded += 1;
                let loaded = Tensor::<B, D>::from_data(
                    TensorData::new(saved.data.clone(), saved.shape.clone()),
                    &tensor.device(),
                );
                if tensor.is_require_grad() {
                    loaded.require_grad()
                } else {
                    loaded
                }
            }
            Some(saved) => {
                self.error.get_or_insert(format!(
                    "parameter {name}: saved shape {:?}, model shape {dims:?}",
                    saved.shape
                ));
                tensor
            }
            None => {
                self.error
                    .get_or_insert(format!("parameter {name} is missing"));
                tensor
            }
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// Replaces every parameter of `module` with the saved tensor of the same name and shape.
/// `origin` names the file in errors.
pub(crate) fn load_params<B: Backend, M: Module<B>>(
    module: M,
    tensors: &BTreeMap<String, NamedTensor>,
    origin: &std::path::Path,
) -> Result<M> {
    let mut loader = Loader {
        path: ParamPath::default(),
        tensors,
        error: None,
        loaded: 0,
    };
    let module = module.map(&mut loader);
    if let Some(message) = loader.error {
        return Err(Error::checkpoint(origin, message));
    }
    if loader.loaded != tensors.len() {
        return Err(Error::checkpoint(
            origin,
            format!(
                "holds {} tensors, the model has {} parameters",
                tensors.len(),
                loader.loaded
            ),
        ));
    }
    Ok(module)
}

struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// Runs every parameter's (lazy) initialiser now, in module order, so a model's initial
/// values depend only on the seed, not on what else draws from the backend's RNG before its
/// first forward pass (e.g. DoReMi's reference training).
pub(crate) fn materialize<B: Backend, M: Module<B>>(module: &M) {
    module.visit(&mut Materialize);
}
