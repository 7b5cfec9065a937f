//! Picks the compute backend named by `run.backend` and runs a task on it. Only the CPU
//! backends are in the default build; wgpu and cuda come with their cargo features.

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;

use crate::config::BackendKind;
use crate::error::{Error, Result};

/// Work generic over the backend (training, evaluation, benches).
pub trait BackendTask {
    type Output;
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        backend: &'static str,
    ) -> Result<Self::Output>;
}

/// Runs `task` on the backend `kind`. "cpu" is ndarray, measured 1.7x faster than flex on the
/// quickstart model on a 2-core machine (`cargo bench --bench train_step`; README, "Measured").
pub fn dispatch<T: BackendTask>(kind: BackendKind, task: T) -> Result<T::Output> {
    use burn::backend::{flex::FlexDevice, ndarray::NdArrayDevice, Flex, NdArray};
    match kind {
        BackendKind::Cpu | BackendKind::Ndarray => {
            task.run::<Autodiff<NdArray>>(NdArrayDevice::Cpu, "ndarray")
        }
        BackendKind::Flex => task.run::<Autodiff<Flex>>(FlexDevice, "flex"),
        BackendKind::Wgpu => run_wgpu(task),
        BackendKind::Cuda => run_cuda(task),
    }
}

#[cfg(feature = "wgpu")]
fn run_wgpu<T: BackendTask>(task: T) -> Result<T::Output> {
    use burn::backend::{wgpu::WgpuDevice, Wgpu};
    task.run::<Autodiff<Wgpu>>(WgpuDevice::default(), "wgpu")
}

#[cfg(not(feature = "wgpu"))]
fn run_wgpu<T: BackendTask>(_task: T) -> Result<T::Output> {
    Err(Error::Backend(
        "\"wgpu\" is not compiled in; rebuild with `cargo build --release --features wgpu`".into(),
    ))
}

#[cfg(feature = "cuda")]
fn run_cuda<T: BackendTask>(task: T) -> Result<T::Output> {
    use burn::backend::{cuda::CudaDevice, Cuda};
    task.run::<Autodiff<Cuda>>(CudaDevice::default(), "cuda")
}

#[cfg(not(feature = "cuda"))]
fn run_cuda<T: BackendTask>(_task: T) -> Result<T::Output> {
    Err(Error::Backend(
        "\"cuda\" is not compiled in; rebuild with `cargo build --release --features cuda`".into(),
    ))
}
