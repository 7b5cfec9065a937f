//! A model's gradients as one flat f32 vector (parameters in module order, each row-major) and
//! back: what the ranks all-reduce. A parameter with no gradient on this rank (it trained on
//! none of the step's sequences) contributes zeros.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

struct Flatten<'a> {
    grads: &'a GradientsParams,
    out: Vec<f32>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        match self.grads.get::<AB::InnerBackend, D>(param.id) {
            Some(grad) => {
                let data = grad.into_data().convert::<f32>();
                self.out
                    .extend_from_slice(data.as_slice::<f32>().expect("converted to f32"));
            }
            None => {
                let n = param.val().dims().iter().product::<usize>();
                self.out.extend(std::iter::repeat_n(0.0, n));
            }
        }
    }
}

struct Unflatten<'a> {
    values: &'a [f32],
    at: usize,
    out: GradientsParams,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Unflatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let value = param.val();
        let dims = value.dims();
        let n = dims.iter().product::<usize>();
        let data = TensorData::new(self.values[self.at..self.at + n].to_vec(), dims);
        self.at += n;
        let grad = Tensor::<AB::InnerBackend, D>::from_data(data, &value.device());
        self.out.register::<AB::InnerBackend, D>(param.id, grad);
    }
}

/// Every parameter's gradient, in module order, as one vector (one host copy per parameter).
pub(crate) fn flatten_grads<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    model: &M,
    grads: &GradientsParams,
) -> Vec<f32> {
    let mut visitor = Flatten {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut visitor);
    visitor.out
}

/// The inverse of `flatten_grads`: `values` laid out as it lays them out.
pub(crate) fn unflatten_grads<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    model: &M,
    values: &[f32],
) -> GradientsParams {
    let mut visitor = Unflatten {
        values,
        at: 0,
        out: GradientsParams::new(),
    };
    model.visit(&mut visitor);
    assert_eq!(visitor.at, values.len(), "gradient vector of another model");
    visitor.out
}
