//! The U-Net, module by module as diffusers lays it out (`embeddings`, `resnet`,
//! `attention_processor`, `attention`, `transformer_2d`, `unet_2d_blocks`, `unet_2d`), so a
//! state-dict key maps to the code that uses it at a glance; the VAE (`autoencoders`), built
//! from the same resnets and attention; and CLIP's tokenizer and text encoders as transformers
//! lays them out (`tokenization_clip`, `modeling_clip`), with diffusers' `encode_prompt` over
//! them (`encode_prompt`); MaskDM's U-ViT as its `mask_uvit.py` lays it out (`mask_uvit`).

pub mod attention;
pub mod attention_processor;
pub mod autoencoders;
pub mod embeddings;
pub mod encode_prompt;
pub mod mask_uvit;
pub mod modeling_clip;
pub mod resnet;
pub mod tokenization_clip;
pub mod transformer_2d;
pub mod unet_2d;
pub mod unet_2d_blocks;

use crate::boosters::Boosters;
use crate::device::Exec;
use crate::error::Result;
use crate::tensor::Tensor;
use unet_2d::UNetInputs;

/// A noise-prediction network: one U-Net, routed DeMe experts, or an engine's own model. This is
/// the one trait models run through: samplers take any `Denoiser`, and it is implemented for
/// `&M`, `Box<M>` and `Arc<M>` of every `M` that has it, so one loaded model can be shared by
/// threads and wrappers. A model runs where it was placed ([`UNet::to`](unet_2d::UNet2DConditionModel::to)).
pub trait Denoiser: Send + Sync {
    /// The model output for `inputs` with this call's boosters, as a host tensor.
    fn forward_with(&self, inputs: &UNetInputs, boosters: &Boosters) -> Result<Tensor>;

    /// Checks `inputs` against the model without computing anything, so a sampling loop can
    /// refuse conditioning the model cannot take before its first step (default: no checks;
    /// `forward_with` still checks).
    fn check(&self, _inputs: &UNetInputs) -> Result<()> {
        Ok(())
    }

    /// Does now what a first call would otherwise do on the way (uploading weights to the
    /// device, compiling and loading kernels, widening 16-bit weights for the CPU), so the first
    /// real call is as fast as the rest (default: nothing to do).
    fn warm_up(&self) -> Result<()> {
        Ok(())
    }
}

macro_rules! forward_denoiser {
    ($($ptr:ty),*) => {$(
        impl<M: Denoiser + ?Sized> Denoiser for $ptr {
            fn forward_with(&self, inputs: &UNetInputs, boosters: &Boosters) -> Result<Tensor> {
                (**self).forward_with(inputs, boosters)
            }

            fn check(&self, inputs: &UNetInputs) -> Result<()> {
                (**self).check(inputs)
            }

            fn warm_up(&self) -> Result<()> {
                (**self).warm_up()
            }
        }
    )*};
}

forward_denoiser!(&M, Box<M>, std::sync::Arc<M>);

/// The GPUs a model's handles were placed on, kept weakly: when the model's last handle goes,
/// its layers' copies there (and the CPU's packed weights of them) are freed.
#[derive(Default)]
pub(crate) struct PlacedOn(std::sync::Mutex<Vec<std::sync::Weak<crate::backend::cuda::Gpu>>>);

impl PlacedOn {
    /// Notes `exec`'s GPU, once (a CPU placement needs nothing).
    pub(crate) fn note(&self, exec: &Exec) {
        if let Exec::Cuda(gpu) = exec {
            let mut gpus = self.0.lock().unwrap_or_else(|p| p.into_inner());
            gpus.retain(|g| g.strong_count() > 0);
            if !gpus
                .iter()
                .any(|g| std::ptr::eq(g.as_ptr(), std::sync::Arc::as_ptr(gpu)))
            {
                gpus.push(std::sync::Arc::downgrade(gpu));
            }
        }
    }

    /// Frees the layers `uids` on every GPU noted and in the CPU's packed-weight cache (the
    /// model's drop).
    pub(crate) fn evict(&mut self, uids: &[u64]) {
        let gpus = self.0.get_mut().map(std::mem::take).unwrap_or_default();
        for gpu in gpus.iter().filter_map(std::sync::Weak::upgrade) {
            gpu.cache.evict(uids);
        }
        crate::backend::cpu::pack_cache::evict(uids);
    }
}

/// Where a model runs: the device, and the CPU threads its calls may use.
#[derive(Clone)]
pub struct Placement {
    /// The device every call runs on.
    pub exec: Exec,
    /// The model's own CPU thread pool (`with_threads`); `None` runs on the caller's pool
    /// (rayon's global one unless the caller installed another).
    pool: Option<std::sync::Arc<rayon::ThreadPool>>,
    /// Host buffers every call reuses (`with_workspace`); `None` allocates afresh.
    workspace: Option<crate::workspace::Workspace>,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            exec: Exec::cpu(),
            pool: None,
            workspace: None,
        }
    }
}

impl Placement {
    /// On `exec`, with the caller's threads.
    pub fn on(exec: Exec) -> Self {
        Placement {
            exec,
            pool: None,
            workspace: None,
        }
    }

    /// As this one, with CPU work on a pool of `threads` threads of its own (0: the caller's).
    pub fn with_threads(self, threads: usize) -> Result<Self> {
        if threads == 0 {
            return Ok(Placement { pool: None, ..self });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("freelunch-{i}"))
            .build()
            .map_err(|e| {
                crate::Error::system(format!("starting {threads} threads"), e.to_string())
            })?;
        Ok(Placement {
            pool: Some(std::sync::Arc::new(pool)),
            ..self
        })
    }

    /// As this one, with every call's host buffers taken from and given back to `workspace`
    /// (shared with whoever else holds it), so repeated calls of one shape reuse them.
    pub fn with_workspace(self, workspace: crate::workspace::Workspace) -> Self {
        Placement {
            workspace: Some(workspace),
            ..self
        }
    }

    /// The workspace calls reuse buffers from, if any.
    pub fn workspace(&self) -> Option<&crate::workspace::Workspace> {
        self.workspace.as_ref()
    }

    /// The CPU threads a call gets: the model's own, or the caller's.
    pub fn threads(&self) -> usize {
        match &self.pool {
            Some(p) => p.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    /// `f` on this placement's threads.
    pub(crate) fn install<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        // The workspace serves the thread the call runs on, so it is entered inside the pool.
        let run = || match &self.workspace {
            Some(ws) => ws.scope(f),
            None => f(),
        };
        match &self.pool {
            Some(p) => p.install(run),
            // A CPU call from outside the pool runs on one of its threads: each op's parallel
            // loop then queues its tasks there, rather than handing every op to the pool from
            // outside (which allocates the pool's queue blocks as it goes, and wakes a thread
            // per op). GPU calls stay on the caller's thread, where its CUDA context is current.
            None if matches!(self.exec, Exec::Cpu(_))
                && rayon::current_thread_index().is_none() =>
            {
                rayon::scope(|_| run())
            }
            None => run(),
        }
    }
}
