//! The U-Net forward pass of both diffusers classes, `UNet2DModel` and `UNet2DConditionModel`:
//! time (+ class, + SDXL text_time) embedding, `conv_in`, down blocks pushing skips, mid block,
//! up blocks popping them, `conv_norm_out` → SiLU → `conv_out`.
//!
//! Non-finite values never leave a call: its inputs are checked first (naming the tensor and the
//! first bad index), then every block boundary (`time_proj`, `time_embedding`, `conv_in`, each
//! down-block resnet/attention/downsampler output, `mid_block`, each up block, `conv_norm_out`,
//! `conv_out`) where the backend can look cheaply (the CPU), so the error names the first module
//! whose output holds a NaN or infinity; on the GPU the output is checked once downloaded.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use smallvec::SmallVec;

use super::embeddings::{TimestepEmbedding, Timesteps};
use super::unet_2d_blocks::{BlockInputs, DownBlock2D, Skips, UNetMidBlock2D, UpBlock2D};
use super::{Denoiser, Placement};
use crate::backend::{Backend, Epilogue};
use crate::boosters::Boosters;
use crate::config::{BlockKind, MidBlockKind, ModelClass, UNetConfig};
use crate::device::Exec;
use crate::error::{Error, Result};
use crate::nn::{Conv2d, Embedding, GroupNorm, LayerCtx};
use crate::safetensors_io;
use crate::shape::Shape;
use crate::tensor::{Mapping, Tensor};
use crate::weights::{Checkpoint, LoadOptions, ModelFiles, WeightSource};

/// The inputs of one forward call, as diffusers' `UNet*.forward` takes them.
#[derive(Clone, Debug)]
pub struct UNetInputs {
    /// [B, in_channels, H, W].
    pub sample: Tensor,
    /// One timestep for the whole batch, or one per sample.
    pub timesteps: Vec<f32>,
    /// [B, M, cross_attention_dim], for UNet2DConditionModel.
    pub encoder_hidden_states: Option<Tensor>,
    /// `[B]` integer labels, for class-conditional models.
    pub class_labels: Option<Vec<f32>>,
    /// SDXL added conditioning: [B, E] pooled text embeddings.
    pub text_embeds: Option<Tensor>,
    /// SDXL added conditioning: [B, 6] size/crop ids.
    pub time_ids: Option<Tensor>,
}

impl UNetInputs {
    /// The inputs of the samples `idx` (in that order).
    pub fn select(&self, idx: &[usize]) -> Result<Self> {
        let b = self.sample.shape().first().copied().unwrap_or(0);
        let rows = |t: &Tensor, what: &str| -> Result<Tensor> {
            if t.shape().first() != Some(&b) {
                return Err(Error::input(
                    what,
                    format!("batch {:?}, sample has {b}", t.shape().first()),
                ));
            }
            let per = t.numel() / b.max(1);
            let data = idx
                .iter()
                .flat_map(|&i| t.data()[i * per..(i + 1) * per].iter().copied())
                .collect();
            let mut shape = crate::Shape::from(t.shape());
            shape[0] = idx.len();
            Tensor::new(shape, data)
        };
        let pick = |v: &Vec<f32>| -> Vec<f32> {
            if v.len() == 1 {
                v.clone()
            } else {
                idx.iter().map(|&i| v[i]).collect()
            }
        };
        Ok(UNetInputs {
            sample: rows(&self.sample, "sample")?,
            timesteps: pick(&self.timesteps),
            encoder_hidden_states: self
                .encoder_hidden_states
                .as_ref()
                .map(|t| rows(t, "encoder_hidden_states"))
                .transpose()?,
            class_labels: self.class_labels.as_ref().map(pick),
            text_embeds: self
                .text_embeds
                .as_ref()
                .map(|t| rows(t, "text_embeds"))
                .transpose()?,
            time_ids: self
                .time_ids
                .as_ref()
                .map(|t| rows(t, "time_ids"))
                .transpose()?,
        })
    }

    /// `sample` ([B, in_channels, H, W]) at one `timestep` for the whole batch, with no
    /// conditioning: set the optional fields a model needs.
    pub fn new(sample: Tensor, timestep: f32) -> Self {
        UNetInputs {
            sample,
            timesteps: vec![timestep],
            encoder_hidden_states: None,
            class_labels: None,
            text_embeds: None,
            time_ids: None,
        }
    }

    /// One tensor of a safetensors file, or an error naming file and tensor.
    pub fn load_tensor(path: &Path, name: &str) -> Result<Tensor> {
        Self::load_optional(path, name)?
            .ok_or_else(|| Error::input(name, format!("{} has no tensor `{name}`", path.display())))
    }

    /// One tensor of a safetensors file, if present; a NaN or infinity in it is an error naming
    /// the tensor and the first bad index.
    pub fn load_optional(path: &Path, name: &str) -> Result<Option<Tensor>> {
        let stored = safetensors_io::load(path)?.remove(name);
        stored.map(|s| finite_input(path, name, s)).transpose()
    }

    /// Reads `sample`, `timestep` and the optional conditioning tensors from a safetensors file.
    /// Each must be finite: a NaN or infinity is an error naming the tensor and its first bad
    /// index (an f64 value too large for f32 included).
    pub fn load(path: &Path) -> Result<Self> {
        let mut tensors = safetensors_io::load(path)?;
        let mut take = |name: &str| -> Result<Option<Tensor>> {
            tensors
                .remove(name)
                .map(|s| finite_input(path, name, s))
                .transpose()
        };
        let sample = take("sample")?.ok_or_else(|| {
            Error::input(
                "sample",
                format!("{} has no tensor `sample`", path.display()),
            )
        })?;
        let timestep = take("timestep")?.ok_or_else(|| {
            Error::input(
                "timestep",
                format!("{} has no tensor `timestep`", path.display()),
            )
        })?;
        if timestep.rank() > 1 {
            return Err(Error::input(
                "timestep",
                format!("expected a scalar or [B], got shape {:?}", timestep.shape()),
            ));
        }
        Ok(UNetInputs {
            sample,
            timesteps: timestep.into_data(),
            encoder_hidden_states: take("encoder_hidden_states")?,
            class_labels: take("class_labels")?.map(|t| t.into_data()),
            text_embeds: take("text_embeds")?,
            time_ids: take("time_ids")?,
        })
    }

    /// Every tensor of the call, by its input name (`timestep` and `class_labels` as [N]).
    fn named(&self) -> SmallVec<[(&'static str, Shape, &[f32]); 6]> {
        let mut out: SmallVec<[_; 6]> = SmallVec::new();
        out.push((
            "sample",
            Shape::from(self.sample.shape()),
            self.sample.data(),
        ));
        out.push((
            "timestep",
            Shape::from([self.timesteps.len()]),
            &self.timesteps[..],
        ));
        let opt = [
            ("encoder_hidden_states", &self.encoder_hidden_states),
            ("text_embeds", &self.text_embeds),
            ("time_ids", &self.time_ids),
        ];
        for (name, t) in opt {
            if let Some(t) = t {
                out.push((name, Shape::from(t.shape()), t.data()));
            }
        }
        if let Some(l) = &self.class_labels {
            out.push(("class_labels", Shape::from([l.len()]), &l[..]));
        }
        out
    }

    /// The first input holding a NaN or infinity, as an error naming it and the index.
    pub fn check_finite(&self) -> Result<()> {
        for (name, shape, data) in self.named() {
            if let Some(bad) = safetensors_io::first_non_finite(data) {
                return Err(Error::input(
                    name,
                    format!(
                        "holds {}; inputs must be finite numbers",
                        safetensors_io::non_finite_words(&shape, bad)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A stored input tensor, refused if it holds a NaN or infinity.
fn finite_input(path: &Path, name: &str, s: safetensors_io::StoredTensor) -> Result<Tensor> {
    match safetensors_io::check_finite(&s.tensor) {
        Ok(()) => Ok(s.tensor),
        Err(bad) => Err(Error::input(
            name,
            format!(
                "{} holds {bad} (stored as {:?}); inputs must be finite numbers",
                path.display(),
                s.dtype
            ),
        )),
    }
}

/// A diffusers U-Net with its weights: `UNet2DModel` and `UNet2DConditionModel` both load into
/// this one type (alias [`UNet`]), built module by module with diffusers' names. Load once, then
/// call it any number of times from any thread (`Send + Sync`, `forward` takes `&self`);
/// boosters are per call. A loaded model runs on the CPU; [`to`](Self::to) places a handle on
/// the same weights on another device (or with threads of its own), and every call of that
/// handle runs there.
#[derive(Clone)]
pub struct UNet2DConditionModel {
    /// The config the network was built from (validated).
    pub config: UNetConfig,
    /// The modules and their weights, shared by every placement of this model.
    modules: Arc<Modules>,
    /// Where this handle's calls run.
    placement: Placement,
}

/// The network's modules, with diffusers' names.
struct Modules {
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    class_embedding: Option<Embedding>,
    add_time_proj: Option<Timesteps>,
    add_embedding: Option<TimestepEmbedding>,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock2D>,
    mid_block: Option<UNetMidBlock2D>,
    up_blocks: Vec<UpBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    /// Every linear and convolution weight, name → shape (what masks may name).
    layers: BTreeMap<String, Vec<usize>>,
    /// DeMe's channel projections (`adapter_list.{k}`), when the checkpoint has them.
    adapters: Option<ChannelProjections>,
    /// The keys of every layer's parameters, as device caches hold them.
    uids: Vec<u64>,
    /// The mapped checkpoint bytes the weights are read from in place.
    mapped: Vec<(Arc<Mapping>, Range<usize>)>,
    /// The GPUs this model was placed on, so dropping it frees its copies there.
    gpus: super::PlacedOn,
}

impl Drop for Modules {
    fn drop(&mut self) {
        self.gpus.evict(&self.uids);
    }
}

/// DeMe's bias-free 1×1 projections of the running sample (never of the skips): one after each
/// down block, one after the mid block, one after each up block, in that order
/// (`adapter_list.{k}` of DeMe's `UNet2DModel.add_adapters`).
struct ChannelProjections {
    after_down: Vec<Conv2d>,
    after_mid: Conv2d,
    after_up: Vec<Conv2d>,
}

impl ChannelProjections {
    fn load(ws: &mut dyn WeightSource, cfg: &UNetConfig) -> Result<Option<Self>> {
        if !ws.has("adapter_list.0.weight") {
            return Ok(None);
        }
        let widths: Vec<usize> = cfg.levels.iter().map(|l| l.out_channels).collect();
        let n = widths.len();
        let mut k = 0;
        let mut next = |ws: &mut dyn WeightSource, c: usize| {
            let conv = Conv2d::load(ws, &format!("adapter_list.{k}"), c, c, 1, 1, 0, false);
            k += 1;
            conv
        };
        let after_down = widths
            .iter()
            .map(|&c| next(ws, c))
            .collect::<Result<Vec<_>>>()?;
        let after_mid = next(ws, widths[n - 1])?;
        let after_up = widths
            .iter()
            .rev()
            .map(|&c| next(ws, c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(ChannelProjections {
            after_down,
            after_mid,
            after_up,
        }))
    }
}

/// Notes the name and shape of every linear and convolution weight a builder takes.
struct Recording<'a> {
    inner: &'a mut dyn WeightSource,
    layers: BTreeMap<String, Vec<usize>>,
    mapped: Vec<(Arc<Mapping>, Range<usize>)>,
}

impl WeightSource for Recording<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.inner.take(name, shape)?;
        if let Some(bytes) = t.mapped_bytes() {
            self.mapped.push(bytes);
        }
        let is_layer = name.ends_with(".weight")
            && matches!(shape.len(), 2 | 4)
            && !name.starts_with("class_embedding");
        if is_layer {
            self.layers.insert(name.to_string(), shape.to_vec());
        }
        Ok(t)
    }

    fn has(&self, name: &str) -> bool {
        self.inner.has(name)
    }
}

/// Both classes run the same code; the name says which one a reader of diffusers should map to.
pub type UNet = UNet2DConditionModel;

/// diffusers' `UNet2DModel` (unconditional and class-conditional pixel models): the same type as
/// `UNet2DConditionModel`, which loads either class (`config.class` says which a folder holds).
pub type UNet2DModel = UNet2DConditionModel;

impl UNet2DConditionModel {
    /// Loads a diffusers model folder (or a pipeline folder's `unet/`), with its full-precision
    /// weights, else the folder's only variant: `from_pretrained` with the default options.
    ///
    /// ```
    /// use freelunch::UNet;
    ///
    /// let unet = UNet::from_dir("tests/fixtures/sd15_like".as_ref())?;
    /// assert!(unet.config.is_conditional());
    /// // A pipeline folder (`model_index.json` beside `unet/`), here with sharded weights.
    /// let unet = UNet::from_dir("tests/fixtures/ddpm_noattn_sharded/model".as_ref())?;
    /// assert!(!unet.config.is_conditional());
    /// # Ok::<(), freelunch::Error>(())
    /// ```
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_pretrained(dir, &LoadOptions::default())
    }

    /// Loads the model `arg` names, as diffusers' `from_pretrained` does from disk: a model or
    /// pipeline folder, a Hugging Face cache repo folder or a repo id in the cache, with the
    /// variant and revision of `opts` (`ModelFiles::find`). The config is checked, and the
    /// weights' size against the memory available, before any weight is read.
    ///
    /// ```
    /// use freelunch::weights::LoadOptions;
    /// use freelunch::UNet;
    ///
    /// let opts = LoadOptions {
    ///     variant: Some("fp16".into()),
    ///     ..LoadOptions::default()
    /// };
    /// let unet = UNet::from_pretrained("tests/fixtures/ddpm_scale_shift_class".as_ref(), &opts)?;
    /// assert_eq!(unet.config.num_class_embeds, Some(10));
    /// # Ok::<(), freelunch::Error>(())
    /// ```
    pub fn from_pretrained(arg: &Path, opts: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::find(arg, opts)?;
        let config = UNetConfig::from_file(&files.config)?;
        config.ensure_weights_fit()?;
        let mut ckpt = Checkpoint::load_keeping(&files.weights, opts.keep)?;
        Self::load(config, &mut ckpt)
    }

    /// Builds the network of `config`, taking every parameter from `ws`.
    pub fn load(config: UNetConfig, ws: &mut dyn WeightSource) -> Result<Self> {
        config.validate("config")?;
        // Whatever the source (a checkpoint, random weights), the model's f32 weights must fit.
        config.ensure_weights_fit()?;
        let mut rec = Recording {
            inner: ws,
            layers: BTreeMap::new(),
            mapped: Vec::new(),
        };
        let (modules, uids) = crate::nn::taking_uids(|| Self::build(&config, &mut rec));
        let mut modules = modules?;
        modules.layers = rec.layers;
        modules.mapped = rec.mapped;
        modules.uids = uids;
        Ok(UNet2DConditionModel {
            config,
            modules: Arc::new(modules),
            placement: Placement::default(),
        })
    }

    /// Linear and convolution weights by name, with their shapes: what a mask file may name.
    pub fn layers(&self) -> &BTreeMap<String, Vec<usize>> {
        &self.modules.layers
    }

    fn build(cfg: &UNetConfig, ws: &mut dyn WeightSource) -> Result<Modules> {
        let c0 = cfg.levels[0].out_channels;
        let n = cfg.levels.len();
        let ted = cfg.time_embed_dim;
        let time_proj = Timesteps {
            dim: c0,
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            downscale_freq_shift: cfg.freq_shift,
        };
        let time_embedding = TimestepEmbedding::load(ws, "time_embedding", c0, ted)?;
        let class_embedding = match cfg.num_class_embeds {
            Some(k) => Some(Embedding::load(ws, "class_embedding", k, ted)?),
            None => None,
        };
        let (add_time_proj, add_embedding) = match &cfg.text_time {
            Some(tt) => (
                Some(Timesteps {
                    dim: tt.addition_time_embed_dim,
                    flip_sin_to_cos: cfg.flip_sin_to_cos,
                    downscale_freq_shift: cfg.freq_shift,
                }),
                Some(TimestepEmbedding::load(
                    ws,
                    "add_embedding",
                    tt.projection_class_embeddings_input_dim,
                    ted,
                )?),
            ),
            None => (None, None),
        };
        let k_in = cfg.conv_in_kernel;
        let conv_in = Conv2d::load(
            ws,
            "conv_in",
            cfg.in_channels,
            c0,
            k_in,
            1,
            (k_in - 1) / 2,
            true,
        )?;

        let mut down_blocks = Vec::with_capacity(n);
        let mut prev = c0;
        for (i, (&kind, level)) in cfg.down_blocks.iter().zip(&cfg.levels).enumerate() {
            down_blocks.push(DownBlock2D::load(
                ws,
                &format!("down_blocks.{i}"),
                kind,
                prev,
                level,
                i + 1 < n,
                cfg,
            )?);
            prev = level.out_channels;
        }

        let inner = &cfg.levels[n - 1];
        let mid_block = match cfg.mid_block {
            None => None,
            Some(kind) => {
                // UNetMidBlock2DCrossAttn takes no `only_cross_attention`.
                let mut level = inner.clone();
                level.only_cross_attention = false;
                let (block_kind, attn_layers) = match (kind, cfg.class) {
                    (MidBlockKind::CrossAttn, _) => (BlockKind::CrossAttn, 1),
                    (MidBlockKind::Plain, ModelClass::UNet2DModel) => (BlockKind::Attn, 1),
                    // diffusers builds UNet2DConditionModel's UNetMidBlock2D with no layers.
                    (MidBlockKind::Plain, ModelClass::UNet2DConditionModel) => (BlockKind::Attn, 0),
                };
                Some(UNetMidBlock2D::load(
                    ws,
                    "mid_block",
                    block_kind,
                    attn_layers,
                    cfg.mid_add_attention,
                    &level,
                    cfg,
                )?)
            }
        };

        let mut up_blocks = Vec::with_capacity(n);
        let mut prev_out = inner.out_channels;
        for (i, &kind) in cfg.up_blocks.iter().enumerate() {
            let level = &cfg.levels[n - 1 - i];
            let input_channels = cfg.levels[(n - 1 - i).saturating_sub(1)].out_channels;
            up_blocks.push(UpBlock2D::load(
                ws,
                &format!("up_blocks.{i}"),
                kind,
                input_channels,
                prev_out,
                level,
                cfg.up_attn_head_dim[i],
                i + 1 < n,
                cfg,
            )?);
            prev_out = level.out_channels;
        }
        let conv_norm_out =
            GroupNorm::load(ws, "conv_norm_out", cfg.norm_num_groups, c0, cfg.norm_eps)?;
        let k_out = cfg.conv_out_kernel;
        let adapters = ChannelProjections::load(ws, cfg)?;
        let conv_out = Conv2d::load(
            ws,
            "conv_out",
            c0,
            cfg.out_channels,
            k_out,
            1,
            (k_out - 1) / 2,
            true,
        )?;
        Ok(Modules {
            time_proj,
            time_embedding,
            class_embedding,
            add_time_proj,
            add_embedding,
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            layers: BTreeMap::new(),
            adapters,
            uids: Vec::new(),
            mapped: Vec::new(),
            gpus: super::PlacedOn::default(),
        })
    }

    fn has_transformers(&self) -> bool {
        let c = &self.config;
        c.down_blocks
            .iter()
            .chain(&c.up_blocks)
            .any(|k| *k == BlockKind::CrossAttn)
            || c.mid_block == Some(MidBlockKind::CrossAttn)
    }

    /// Checks every input against the model before any work is done.
    fn check_inputs(&self, x: &UNetInputs) -> Result<()> {
        let c = &self.config;
        let (b, ch, h, w) = x.sample.dims4("sample")?;
        if ch != c.in_channels {
            return Err(Error::input(
                "sample",
                format!("has {ch} channels; the model takes {}", c.in_channels),
            ));
        }
        if b == 0 || h == 0 || w == 0 {
            return Err(Error::input(
                "sample",
                format!("empty shape {:?}", x.sample.shape()),
            ));
        }
        if x.timesteps.len() != 1 && x.timesteps.len() != b {
            return Err(Error::input(
                "timestep",
                format!("{} values for a batch of {b}", x.timesteps.len()),
            ));
        }
        x.check_finite()?;
        let levels = c.levels.len() as u32 - 1;
        if c.class == ModelClass::UNet2DModel && (h % (1 << levels) != 0 || w % (1 << levels) != 0)
        {
            return Err(Error::input(
                "sample",
                format!(
                    "{h}×{w}: a UNet2DModel with {levels} downsamplers needs H and W divisible by {}",
                    1 << levels
                ),
            ));
        }
        if self.has_transformers() {
            let ehs = x.encoder_hidden_states.as_ref().ok_or_else(|| {
                Error::input(
                    "encoder_hidden_states",
                    "missing; this model has cross-attention",
                )
            })?;
            let want = c.levels[0].cross_attention_dim;
            match ehs.shape() {
                [eb, m, d]
                    if *eb == b
                        && *m > 0
                        && c.levels.iter().all(|l| l.cross_attention_dim == *d) => {}
                s => {
                    return Err(Error::input(
                        "encoder_hidden_states",
                        format!("shape {s:?}; expected [{b}, M, {want}]"),
                    ))
                }
            }
        } else if x.encoder_hidden_states.is_some() {
            // diffusers ignores it; a caller who passed a prompt and got an unconditional
            // sample would never know.
            return Err(Error::input(
                "encoder_hidden_states",
                "given, but the model has no cross-attention to use it",
            ));
        }
        match (&self.modules.class_embedding, &x.class_labels) {
            (Some(_), None) => {
                return Err(Error::input(
                    "class_labels",
                    "missing; the model is class-conditional",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::input(
                    "class_labels",
                    "given, but the model has no class embedding",
                ))
            }
            (Some(_), Some(l)) if l.len() != b => {
                return Err(Error::input(
                    "class_labels",
                    format!("{} labels for a batch of {b}", l.len()),
                ))
            }
            _ => {}
        }
        if let Some(tt) = &c.text_time {
            let te = x.text_embeds.as_ref().ok_or_else(|| {
                Error::input(
                    "text_embeds",
                    "missing; the model uses text_time conditioning",
                )
            })?;
            let ti = x.time_ids.as_ref().ok_or_else(|| {
                Error::input("time_ids", "missing; the model uses text_time conditioning")
            })?;
            let ti_cols = match ti.shape() {
                [tb, k] if *tb == b => *k,
                s => {
                    return Err(Error::input(
                        "time_ids",
                        format!("shape {s:?}; expected [{b}, K]"),
                    ))
                }
            };
            let want = tt.projection_class_embeddings_input_dim;
            match te.shape() {
                [tb, e] if *tb == b && e + ti_cols * tt.addition_time_embed_dim == want => {}
                s => {
                    return Err(Error::input(
                        "text_embeds",
                        format!(
                        "shape {s:?}: with {ti_cols} time ids of {} dims each, expected [{b}, {}]",
                        tt.addition_time_embed_dim,
                        want as i64 - (ti_cols * tt.addition_time_embed_dim) as i64
                    ),
                    ))
                }
            }
        } else {
            for (name, t) in [("text_embeds", &x.text_embeds), ("time_ids", &x.time_ids)] {
                if t.is_some() {
                    return Err(Error::input(
                        name,
                        "given, but the model has no text_time conditioning to use it",
                    ));
                }
            }
        }
        Ok(())
    }

    /// How many skips the encoder produces (`conv_in` + each down-block output).
    pub fn num_skips(&self) -> usize {
        1 + self
            .modules
            .down_blocks
            .iter()
            .map(DownBlock2D::num_outputs)
            .sum::<usize>()
    }

    /// diffusers' `model(sample, timestep, ...).sample`, on the CPU: every input is checked
    /// against the model first, and the memory the call needs against what is available.
    ///
    /// ```
    /// use std::path::Path;
    ///
    /// use freelunch::{UNet, UNetInputs};
    ///
    /// let dir = Path::new("tests/fixtures/sd15_like");
    /// let unet = UNet::from_dir(dir)?;
    /// let inputs = UNetInputs::load(&dir.join("inputs.safetensors"))?;
    /// let out = unet.forward(&inputs)?;
    /// // diffusers' output for the same weights and inputs.
    /// let expected = UNetInputs::load_tensor(&dir.join("expected.safetensors"), "sample")?;
    /// assert!(out.rel_l2(&expected) < 1e-4);
    /// # Ok::<(), freelunch::Error>(())
    /// ```
    pub fn forward(&self, inputs: &UNetInputs) -> Result<Tensor> {
        self.forward_with(inputs, &Boosters::default())
    }

    /// The forward pass with this call's boosters (checked against the model and the call
    /// before any work is done).
    ///
    /// ```
    /// use freelunch::boosters::{Boosters, FreeU, SkipScales};
    /// use freelunch::{Tensor, UNet, UNetInputs};
    ///
    /// let unet = UNet::from_dir("tests/fixtures/ddpm_basic".as_ref())?;
    /// let inputs = UNetInputs::new(Tensor::randn([1, 3, 16, 16], 0), 250.0);
    /// let plain = unet.forward(&inputs)?;
    /// let freeu = Boosters {
    ///     freeu: Some(FreeU::preset("sd15")?),
    ///     ..Boosters::default()
    /// };
    /// assert_ne!(unet.forward_with(&inputs, &freeu)?, plain);
    /// // Neutral settings give the plain output, bit for bit.
    /// let neutral = Boosters {
    ///     skip_scales: Some(SkipScales::Linear { top: 1.0, bottom: 1.0 }),
    ///     ..Boosters::default()
    /// };
    /// assert_eq!(unet.forward_with(&inputs, &neutral)?, plain);
    /// # Ok::<(), freelunch::Error>(())
    /// ```
    pub fn forward_with(&self, inputs: &UNetInputs, boosters: &Boosters) -> Result<Tensor> {
        Denoiser::forward_with(self, inputs, boosters)
    }

    /// [`Denoiser::warm_up`]: uploads the weights and loads the kernels now, so the first real
    /// call is as fast as the rest.
    pub fn warm_up(&self) -> Result<()> {
        Denoiser::warm_up(self)
    }
}

impl Denoiser for UNet2DConditionModel {
    fn forward_with(&self, inputs: &UNetInputs, boosters: &Boosters) -> Result<Tensor> {
        self.placement
            .install(|| self.forward_on_exec(&self.placement.exec, inputs, boosters))
    }

    fn check(&self, inputs: &UNetInputs) -> Result<()> {
        self.check_inputs(inputs)
    }

    /// One forward call at the smallest input the model takes, its result dropped: every
    /// weight is then on the device (or widened, on the CPU) and every kernel loaded.
    fn warm_up(&self) -> Result<()> {
        let inputs = self.smallest_inputs();
        self.forward_with(&inputs, &Boosters::default()).map(drop)
    }
}

impl UNet2DConditionModel {
    /// This model (sharing its weights with `self`) placed on `device`, storing weights and
    /// activations there in `dtype`: opens the device, uploads nothing yet ([`warm_up`] does,
    /// else the first call). The CPU computes in f32, or in bf16 (convolutions and linear layers) where it has AMX.
    ///
    /// [`warm_up`]: Denoiser::warm_up
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use freelunch::device::{DType, Device};
    /// use freelunch::models::Denoiser;
    /// use freelunch::{Tensor, UNet, UNetInputs};
    ///
    /// let unet = Arc::new(UNet::from_dir("tests/fixtures/ddpm_basic".as_ref())?);
    /// // Another handle on the same weights, with two CPU threads of its own.
    /// let two = unet.to(Device::Cpu, DType::F32)?.with_threads(2)?;
    /// two.warm_up()?;
    /// let inputs = UNetInputs::new(Tensor::randn([1, 3, 16, 16], 0), 250.0);
    /// assert!(two.forward(&inputs)?.rel_l2(&unet.forward(&inputs)?) < 1e-6);
    /// # Ok::<(), freelunch::Error>(())
    /// ```
    pub fn to(&self, device: crate::device::Device, dtype: crate::device::DType) -> Result<Self> {
        Ok(self.on(device.open(dtype)?))
    }

    /// This model (sharing its weights with `self`) placed on an opened device, which models
    /// placed on the same `Exec` share (one context, one stream).
    pub fn on(&self, exec: Exec) -> Self {
        self.modules.gpus.note(&exec);
        UNet2DConditionModel {
            placement: Placement {
                exec,
                ..self.placement.clone()
            },
            ..self.clone()
        }
    }

    /// This handle with CPU work (the CPU backend's GEMMs, convolutions and attention, and the
    /// host side of a GPU call) on a pool of `threads` threads of its own; 0 uses the caller's
    /// (rayon's global pool unless the caller installed another).
    pub fn with_threads(self, threads: usize) -> Result<Self> {
        Ok(UNet2DConditionModel {
            placement: self.placement.clone().with_threads(threads)?,
            ..self
        })
    }

    /// This handle with every call's host buffers (op outputs, concatenations) reused from
    /// `workspace`: after the first call of a shape, later calls of that shape take the
    /// buffers the first one freed. Outputs are bit-identical; see [`Workspace`] for what is
    /// pooled and what memory it keeps.
    ///
    /// [`Workspace`]: crate::workspace::Workspace
    pub fn with_workspace(self, workspace: crate::workspace::Workspace) -> Self {
        UNet2DConditionModel {
            placement: self.placement.clone().with_workspace(workspace),
            ..self
        }
    }

    /// The forward pass written into `out` (the output's length: `sample`'s, times
    /// `out_channels / in_channels`); with [`with_workspace`](Self::with_workspace), the
    /// output's own buffer is reused by the next call too.
    pub fn forward_into(
        &self,
        inputs: &UNetInputs,
        boosters: &Boosters,
        out: &mut [f32],
    ) -> Result<()> {
        if let [b, _, h, w] = inputs.sample.shape()[..] {
            let needed = b * self.config.out_channels * h * w;
            if needed != out.len() {
                return Err(Error::shape(
                    "forward_into",
                    format!(
                        "the output of a {:?} sample has {needed} values; `out` holds {}",
                        inputs.sample.shape(),
                        out.len()
                    ),
                ));
            }
        }
        // The copy and the drop happen on the thread the forward ran on, in the workspace's
        // scope, so the next call reuses the output's buffer too.
        self.placement.install(|| {
            let y = self.forward_on_exec(&self.placement.exec, inputs, boosters)?;
            if y.numel() != out.len() {
                return Err(Error::shape(
                    "forward_into",
                    format!(
                        "the output {:?} has {} values; `out` holds {}",
                        y.shape(),
                        y.numel(),
                        out.len()
                    ),
                ));
            }
            out.copy_from_slice(y.data());
            Ok(())
        })
    }

    /// Where this handle's calls run.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Frees this model's parameter copies on its device (a GPU; nothing on the CPU). The model
    /// stays usable: a later call uploads them again. Dropping the last handle of a model frees
    /// them on every GPU it was placed on.
    pub fn unload(&self) {
        if let Exec::Cuda(gpu) = &self.placement.exec {
            gpu.cache.evict(&self.modules.uids);
        }
    }

    /// Lets the memory-mapped checkpoint pages this model's weights are read from leave the
    /// process's resident memory: once the weights are on a GPU (after `warm_up`), the host
    /// needs them no more. Nothing is lost: the pages stay in the OS page cache and a later read
    /// (a CPU call, an upload to another device) faults them back in. Weights the loader copied
    /// (f32 where the file was not aligned, 16-bit widened at load) are not mapped and stay.
    pub fn release_host_memory(&self) {
        for (map, bytes) in &self.modules.mapped {
            map.release(bytes.clone());
        }
    }

    /// The model output for `inputs` on `exec` (a host tensor).
    fn forward_on_exec(
        &self,
        exec: &Exec,
        inputs: &UNetInputs,
        boosters: &Boosters,
    ) -> Result<Tensor> {
        match exec {
            Exec::Cpu(cpu) => self.forward_on(cpu, inputs, boosters),
            Exec::Cuda(gpu) => {
                let y = self.forward_on(gpu.as_ref(), inputs, boosters)?;
                let y = gpu.download(&y)?;
                // Block outputs were checked on the device (`watch_non_finite`); the output
                // is checked again here, on the host, as the last word.
                match safetensors_io::first_non_finite(y.data()) {
                    None => Ok(y),
                    Some(bad) => Err(Error::NonFinite {
                        at: "sample".into(),
                        msg: format!(
                        "non-finite value in the U-Net: its output `sample` computed on the GPU \
                         in {} holds {}{}",
                        gpu.dtype().suffix(),
                        safetensors_io::non_finite_words(y.shape(), bad),
                        if gpu.dtype() == crate::device::DType::F16 {
                            " (f16 overflows above 65504: --dtype bf16 or f32 may avoid it)"
                        } else {
                            ""
                        }
                    ),
                    }),
                }
            }
        }
    }

    /// The smallest inputs the model takes: one sample, the spatial size its downsamplers
    /// need, one conditioning token, and SDXL's six time ids where it has text_time.
    fn smallest_inputs(&self) -> UNetInputs {
        let c = &self.config;
        let side = 1usize << (c.levels.len() - 1);
        let mut inputs = UNetInputs::new(Tensor::zeros([1, c.in_channels, side, side]), 1.0);
        if self.has_transformers() {
            let d = c.levels[0].cross_attention_dim;
            inputs.encoder_hidden_states = Some(Tensor::zeros([1, 1, d]));
        }
        if self.modules.class_embedding.is_some() {
            inputs.class_labels = Some(vec![0.0]);
        }
        if let Some(tt) = &c.text_time {
            let want = tt.projection_class_embeddings_input_dim;
            let k = (want.saturating_sub(1) / tt.addition_time_embed_dim.max(1)).min(6);
            inputs.time_ids = Some(Tensor::zeros([1, k]));
            inputs.text_embeds = Some(Tensor::zeros([1, want - k * tt.addition_time_embed_dim]));
        }
        inputs
    }
}

impl UNet2DConditionModel {
    /// The forward pass on backend `be`; inputs and boosters are host-side. Masks are checked
    /// against this model's weights (names and shapes), and block outputs for non-finite values
    /// where `be.find_non_finite` looks (see the module docs).
    pub fn forward_on<B: Backend>(
        &self,
        be: &B,
        inputs: &UNetInputs,
        boosters: &Boosters,
    ) -> Result<B::Tensor> {
        self.check_inputs(inputs)?;
        // Every size of the graph and the memory plan, before anything is allocated.
        self.config
            .plan_forward_of(&inputs.sample, inputs.encoder_hidden_states.as_ref())?
            .ensure_fits(be.available_memory())?;
        boosters.validate(self.num_skips(), inputs.sample.shape()[0])?;
        if let Some(m) = &boosters.masks {
            m.check_layers(&self.modules.layers)?;
        }
        // The outputs watched, in order: where they were made and their shapes.
        let watched: SmallVec<[(Site, Shape); 32]> = SmallVec::new();
        let watch = std::cell::RefCell::new((be.new_watch()?, watched));
        let check = |site: Site, x: &B::Tensor| {
            let (w, sites) = &mut *watch.borrow_mut();
            sites.push((site, be.shape(x)));
            match be.watch_non_finite(w, x)? {
                None => Ok(()),
                Some(bad) => Err(non_finite_in(&self.site_name(site), &be.shape(x), bad)),
            }
        };
        let lc = LayerCtx {
            masks: boosters.masks.as_deref(),
            step: boosters.mask_step,
        };
        let c = &self.config;
        let b = inputs.sample.shape()[0];

        let timesteps: SmallVec<[f32; 32]> = if inputs.timesteps.len() == 1 {
            smallvec::smallvec![inputs.timesteps[0]; b]
        } else {
            SmallVec::from_slice(&inputs.timesteps)
        };
        let t_proj = be.timestep_embedding(&self.modules.time_proj, &timesteps)?;
        check(Site::Named("time_proj"), &t_proj)?;
        let mut emb = self.modules.time_embedding.forward(be, &t_proj, lc)?;
        check(Site::Named("time_embedding"), &emb)?;
        if let (Some(ce), Some(labels)) = (&self.modules.class_embedding, &inputs.class_labels) {
            let class_emb = be.upload(&ce.forward(labels, "class_labels")?)?;
            emb = be.add(&emb, &class_emb, 1.0)?;
            check(Site::Named("class_embedding"), &emb)?;
        }
        if let (Some(proj), Some(add), Some(te), Some(ti)) = (
            &self.modules.add_time_proj,
            &self.modules.add_embedding,
            &inputs.text_embeds,
            &inputs.time_ids,
        ) {
            // SDXL's added conditioning: a few hundred numbers, assembled on the host.
            let time_embeds = crate::backend::cpu::timestep_embedding(proj, ti.data())?;
            check_host("add_time_proj", &time_embeds)?;
            let per = time_embeds.numel() / b;
            let e = te.shape()[1];
            let mut cat = Vec::with_capacity(b * (e + per));
            for i in 0..b {
                cat.extend_from_slice(&te.data()[i * e..(i + 1) * e]);
                cat.extend_from_slice(&time_embeds.data()[i * per..(i + 1) * per]);
            }
            let cat = be.upload(&Tensor::from_parts([b, e + per], cat))?;
            let aug = add.forward(be, &cat, lc)?;
            emb = be.add(&emb, &aug, 1.0)?;
            check(Site::Named("add_embedding"), &emb)?;
        }
        let temb_act = be.silu(&emb)?;
        let context = match &inputs.encoder_hidden_states {
            Some(ehs) => Some(be.upload(ehs)?),
            None => None,
        };
        let block_inputs = BlockInputs {
            be,
            temb_act: &temb_act,
            context: context.as_ref(),
            boosters,
            lc,
            num_skips: self.num_skips(),
            base_channels: c.levels[0].out_channels,
        };

        let sample = if c.center_input_sample {
            let mut s = inputs.sample.clone();
            s.data_mut().iter_mut().for_each(|v| *v = 2.0 * *v - 1.0);
            be.upload(&s)?
        } else {
            be.upload(&inputs.sample)?
        };

        let adapters = self.modules.adapters.as_ref();
        let project =
            |conv: &Conv2d, x: &B::Tensor| be.conv2d(conv.params(lc), x, Epilogue::default());
        let mut skips: Skips<B::Tensor> = smallvec::smallvec![be.conv2d(
            self.modules.conv_in.params(lc),
            &sample,
            Epilogue::default()
        )?];
        check(Site::Named("conv_in"), &skips[0])?;
        let mut adapter_index = 0;
        let mut project_checked = |conv: &Conv2d, x: &B::Tensor| -> Result<B::Tensor> {
            let y = project(conv, x)?;
            check(Site::Adapter(adapter_index), &y)?;
            adapter_index += 1;
            Ok(y)
        };
        // The running sample is the last skip, unless a DeMe projection made its own copy.
        let mut projected: Option<B::Tensor> = None;
        for (i, block) in self.modules.down_blocks.iter().enumerate() {
            let input = projected
                .as_ref()
                .unwrap_or_else(|| skips.last().expect("conv_in"));
            let outs = block.forward(input, &block_inputs)?;
            for (j, out) in outs.iter().enumerate() {
                check(
                    Site::Down {
                        block: i,
                        output: j,
                    },
                    out,
                )?;
            }
            skips.extend(outs);
            projected = match adapters {
                Some(a) => Some(project_checked(
                    &a.after_down[i],
                    skips.last().expect("out"),
                )?),
                None => None,
            };
        }
        let running = projected
            .as_ref()
            .unwrap_or_else(|| skips.last().expect("non-empty"));
        let mut h = match &self.modules.mid_block {
            Some(mid) => {
                let h = mid.forward(running, &block_inputs)?;
                check(Site::Named("mid_block"), &h)?;
                h
            }
            None => running.clone(),
        };
        if let Some(a) = adapters {
            h = project_checked(&a.after_mid, &h)?;
        }
        // diffusers passes explicit upsample sizes when H or W is not a multiple of the overall
        // upsampling factor (odd latents); the UNet2DModel path was checked divisible above.
        let factor = 1usize << (self.modules.up_blocks.len() - 1);
        let forward_upsample_size = h_w_not_multiple(h_w(&inputs.sample), factor);
        let n_up = self.modules.up_blocks.len();
        // MaskUNet's hyper-network runs on the host, from the block input and first skip.
        let host_emb = match &boosters.mask_generator {
            Some(_) => Some(be.download(&emb)?),
            None => None,
        };
        for (i, block) in self.modules.up_blocks.iter().enumerate() {
            let remaining = skips.len() - block.num_skips();
            let size = (forward_upsample_size && i + 1 < n_up).then(|| {
                let s = be.shape(&skips[remaining - 1]);
                (s[2], s[3])
            });
            let generated = match (&boosters.mask_generator, &host_emb, skips.last()) {
                (Some(g), Some(emb), Some(skip)) => {
                    let (h_host, skip_host) = (be.download(&h)?, be.download(skip)?);
                    g.block_masks(i, &h_host, &skip_host, emb, boosters.mask_step)?
                }
                _ => None,
            };
            let inputs_i = match &generated {
                Some(set) => BlockInputs {
                    lc: LayerCtx {
                        masks: Some(set),
                        step: 0,
                    },
                    ..block_inputs
                },
                None => block_inputs,
            };
            h = block.forward(i, h, &mut skips, &inputs_i, size)?;
            check(Site::Up(i), &h)?;
            if let Some(a) = adapters {
                h = project_checked(&a.after_up[i], &h)?;
            }
        }
        debug_assert!(skips.is_empty());
        let h = be.group_norm(self.modules.conv_norm_out.params(), &h, None, true)?;
        check(Site::Named("conv_norm_out"), &h)?;
        let out = be.conv2d(self.modules.conv_out.params(lc), &h, Epilogue::default())?;
        check(Site::Named("conv_out"), &out)?;
        let (w, sites) = watch.into_inner();
        if let Some((k, i, v)) = be.first_watched(w)? {
            let (site, shape) = &sites[k];
            return Err(non_finite_in(&self.site_name(*site), shape, (i, v)));
        }
        Ok(out)
    }
}

/// Where in the forward an output is checked for non-finite values: its name is formatted only
/// when one is reported.
#[derive(Clone, Copy, Debug)]
enum Site {
    /// A module of the model's top level (`conv_in`, `mid_block`, ...).
    Named(&'static str),
    /// Output `output` of down block `block` (one of its resnets, attentions or downsampler).
    Down { block: usize, output: usize },
    /// Up block `i`'s output.
    Up(usize),
    /// Adapter projection `i` (DeMe's).
    Adapter(usize),
}

impl UNet2DConditionModel {
    /// The module name of `site`, as diffusers names its weights.
    fn site_name(&self, site: Site) -> String {
        match site {
            Site::Named(name) => name.to_string(),
            Site::Down { block, output } => {
                self.modules.down_blocks[block].output_name(&format!("down_blocks.{block}"), output)
            }
            Site::Up(i) => format!("up_blocks.{i}"),
            Site::Adapter(i) => format!("adapter_list.{i}"),
        }
    }
}

fn check_host(layer: &str, x: &Tensor) -> Result<()> {
    match safetensors_io::first_non_finite(x.data()) {
        None => Ok(()),
        Some(bad) => Err(non_finite_in(layer, x.shape(), bad)),
    }
}

fn non_finite_in(layer: &str, shape: &[usize], bad: (usize, f32)) -> Error {
    Error::NonFinite {
        at: layer.to_string(),
        msg: format!(
            "non-finite value in the U-Net: the output of `{layer}` holds {} although everything \
             before it was finite; values overflowing f32 inside `{layer}` (very large inputs, \
             weights or booster factors, or a config value that makes its maths undefined) cause \
             this",
            safetensors_io::non_finite_words(shape, bad)
        ),
    }
}

fn h_w(t: &Tensor) -> (usize, usize) {
    (t.shape()[2], t.shape()[3])
}

fn h_w_not_multiple((h, w): (usize, usize), factor: usize) -> bool {
    h % factor != 0 || w % factor != 0
}
