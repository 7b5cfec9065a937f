//! Picks the compute backend named by `run.backend` and runs a task on it. Only the CPU
//! backends are in the default build; wgpu and cuda come with their cargo features.

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use mixtrain_kernels::StatKernels;

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// `run.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Cpu,
    Flex,
    Ndarray,
    Wgpu,
    Cuda,
}

/// A backend mixtrain trains on: autodiff, with the per-source statistics (`StatKernels`) on
/// both it and its inner backend, so the training path runs the CubeCL kernels where the
/// backend has them and the plain-tensor references elsewhere.
pub trait TrainBackend: AutodiffBackend<InnerBackend: StatKernels> + StatKernels {}

impl<B> TrainBackend for B
where
    B: AutodiffBackend + StatKernels,
    B::InnerBackend: StatKernels,
{
}

/// Work generic over the backend (training, evaluation, benches).
pub trait BackendTask {
    type Output;
    fn run<B: TrainBackend>(self, device: B::Device, backend: &'static str)
        -> Result<Self::Output>;
}

/// Runs `task` on the backend `kind`. "cpu" is ndarray (both cores, fused host ops from the
/// kernels crate), measured faster than flex on the quickstart model on a 2-core machine
/// (`cargo bench --bench train_step`; README, "Measured").
pub fn dispatch<T: BackendTask>(kind: BackendKind, task: T) -> Result<T::Output> {
    use burn::backend::{flex::FlexDevice, ndarray::NdArrayDevice, Flex, NdArray};
    match kind {
        BackendKind::Cpu | BackendKind::Ndarray => {
            keep_freed_memory_for_reuse();
            task.run::<Autodiff<NdArray>>(NdArrayDevice::Cpu, "ndarray")
        }
        BackendKind::Flex => {
            keep_freed_memory_for_reuse();
            task.run::<Autodiff<Flex>>(FlexDevice, "flex")
        }
        BackendKind::Wgpu => run_wgpu(task),
        BackendKind::Cuda => run_cuda(task),
    }
}

/// A CPU step allocates and frees the same few-MiB tensors (activations [B·T, d_ff], attention
/// [B, H, T, T], logits [B·T, V]) over and over. glibc serves blocks that large with `mmap` and
/// gives freed heap tops back to the kernel, so each step page-faulted and zeroed its memory
/// anew (~7% of a step under `perf`). Raising both thresholds once keeps freed blocks in the
/// heap for the next step; the values computed do not change.
fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // 32 MiB is glibc's largest mmap threshold on 64-bit; larger blocks are still mapped.
            const MMAP_THRESHOLD: libc::c_int = 32 << 20;
            const TRIM_THRESHOLD: libc::c_int = 1 << 30;
            // SAFETY: mallopt only sets allocator parameters; it is called before the
            // backend's threads start and returns 0 (ignored: a slower step) if refused.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            }
        });
    }
}

/// burn's `Wgpu` and `Cuda` types wrap the backend in `Fusion`, which the kernels cannot
/// reach through; mixtrain runs the plain `CubeBackend` (as burn's custom-kernel example does).
#[cfg(feature = "wgpu")]
pub type WgpuBackend =
    mixtrain_kernels::cube::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

#[cfg(feature = "cuda")]
pub(crate) type CudaBackend =
    mixtrain_kernels::cube::CubeBackend<mixtrain_kernels::cube::CudaRuntime, f32, i32, u8>;

#[cfg(feature = "wgpu")]
fn run_wgpu<T: BackendTask>(task: T) -> Result<T::Output> {
    use burn::backend::wgpu::WgpuDevice;
    task.run::<Autodiff<WgpuBackend>>(WgpuDevice::default(), "wgpu")
}

#[cfg(not(feature = "wgpu"))]
fn run_wgpu<T: BackendTask>(_task: T) -> Result<T::Output> {
    Err(crate::error::Error::Backend(
        "\"wgpu\" is not compiled in; rebuild with `cargo build --release --features wgpu`".into(),
    ))
}

#[cfg(feature = "cuda")]
fn run_cuda<T: BackendTask>(task: T) -> Result<T::Output> {
    use burn::backend::cuda::CudaDevice;
    check_cuda_driver()?;
    task.run::<Autodiff<CudaBackend>>(CudaDevice::default(), "cuda")
}

/// cudarc loads the driver library on first use and panics when it is missing: say so first.
#[cfg(feature = "cuda")]
fn check_cuda_driver() -> Result<()> {
    let found = ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        let name = std::ffi::CString::new(*name).expect("no NUL");
        // SAFETY: dlopen with a valid C string; the handle is kept (the driver stays loaded).
        !unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY) }.is_null()
    });
    if found {
        return Ok(());
    }
    Err(crate::error::Error::Backend(
        "\"cuda\": no CUDA driver on this machine (libcuda.so.1 not found; is an NVIDIA GPU \
         and its driver installed, and LD_LIBRARY_PATH set?)"
            .into(),
    ))
}

#[cfg(not(feature = "cuda"))]
fn run_cuda<T: BackendTask>(_task: T) -> Result<T::Output> {
    Err(crate::error::Error::Backend(
        "\"cuda\" is not compiled in; rebuild with `cargo build --release --features cuda`".into(),
    ))
}
