//! MaskUNet's training-based variant: a small hyper-network per up block computes each masked
//! layer's mask inside the U-Net call, from that call's block input, skip and time embedding.
//! Parameter names are those of the official `training/hyperunet.py`
//! (`mask_generators.{i}.*`, `adapters.{i}.{layer}.*`); `tools/convert_maskunet_checkpoint.py`
//! turns the official `.pth` files into one safetensors file.
//!
//! Per up block i, with Cin/Cout the channels of its first resnet's conv1, I4 = Cin/4, O4 = Cout/4:
//! `x = GAP(cat[sample, skip]) + proj_temb(emb)`, `M = relu(conv2(relu(conv0(x))))` viewed as
//! [O4, I4]; per masked layer (out_f × in_f) the adapter gives logits
//! `L = W_in·M·W_outᵀ + b_in·1ᵀ·W_outᵀ + 1·b_outᵀ` (conv_in along O4, then conv_out along I4), and
//! the mask is the hard Gumbel-sigmoid: `1[L + g > 0]` with g = −ln(E), E ~ Exp(1) (one Gumbel
//! sample, as the official code draws it), or `1[L > 0]` with the noise off.

use std::collections::BTreeMap;
use std::path::Path;

use super::masks::{MaskSet, WeightMask};
use crate::backend::cpu::gemm::{sgemm, Mat, Precision, Threads};
use crate::error::{Error, Result};
use crate::models::unet_2d::UNet;
use crate::nn::{LayerCtx, Linear};
use crate::rng::Rng;
use crate::safetensors_io::{first_non_finite, non_finite_words};
use crate::tensor::Tensor;
use crate::weights::{Checkpoint, WeightSource};

/// Gumbel noise of the hard Gumbel-sigmoid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gumbel {
    /// Deterministic masks, `logit > 0`.
    Off,
    /// Noise from this seed, mixed with the sampler step, layer and sample, so every call of a
    /// sampling run draws fresh noise and a run is reproducible.
    Seeded(u64),
}

/// Module names (relative to the up block) that the official code never masks.
const UNMASKED: [&str; 5] = [
    "time_emb_proj",
    "ff",
    "conv_shortcut",
    "proj_in",
    "proj_out",
];

/// The linear layers MaskUNet masks, by up block: every linear of `up_blocks.{i}` whose module
/// name contains none of `UNMASKED`. Values are (weight name, [out, in]).
pub fn maskunet_layers(unet: &UNet) -> BTreeMap<usize, Vec<(String, [usize; 2])>> {
    let mut by_block: BTreeMap<usize, Vec<(String, [usize; 2])>> = BTreeMap::new();
    for (name, shape) in unet.layers() {
        let Some(rest) = name.strip_prefix("up_blocks.") else {
            continue;
        };
        let Some((idx, module)) = rest.split_once('.') else {
            continue;
        };
        let (Ok(i), &[out, inp]) = (idx.parse::<usize>(), &shape[..]) else {
            continue;
        };
        let module = module.trim_end_matches(".weight");
        if UNMASKED.iter().all(|u| !module.contains(u)) {
            by_block
                .entry(i)
                .or_default()
                .push((name.clone(), [out, inp]));
        }
    }
    by_block
}

struct Adapter {
    weight_name: String,
    conv_in: Linear,
    conv_out: Linear,
}

struct BlockGenerator {
    proj_temb: Linear,
    conv0: Linear,
    conv2: Linear,
    o4: usize,
    i4: usize,
    adapters: Vec<Adapter>,
}

/// MaskUNet's hyper-network for one U-Net: per up block with masked layers, the generator and
/// its per-layer adapters (see the module docs). Computes masks inside each call
/// (`Boosters::mask_generator`); equality is identity.
pub struct MaskGenerator {
    blocks: BTreeMap<usize, BlockGenerator>,
    /// The Gumbel noise of the hard Gumbel-sigmoid.
    pub gumbel: Gumbel,
}

impl std::fmt::Debug for MaskGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskGenerator")
            .field("blocks", &self.blocks.keys().collect::<Vec<_>>())
            .field("gumbel", &self.gumbel)
            .finish()
    }
}

impl PartialEq for MaskGenerator {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

const HIDDEN: usize = 64;

impl MaskGenerator {
    /// Loads the hyper-network for `unet` from a safetensors file.
    pub fn load(path: &Path, unet: &UNet, gumbel: Gumbel) -> Result<Self> {
        Self::from_source(&mut Checkpoint::load(&[path.to_path_buf()])?, unet, gumbel)
    }

    /// Builds the hyper-network for `unet`, taking its parameters from `ws`.
    pub fn from_source(ws: &mut dyn WeightSource, unet: &UNet, gumbel: Gumbel) -> Result<Self> {
        let t = unet.config.time_embed_dim;
        let mut blocks = BTreeMap::new();
        for (i, layers) in maskunet_layers(unet) {
            let conv1 = format!("up_blocks.{i}.resnets.0.conv1.weight");
            let shape = unet.layers().get(&conv1).ok_or_else(|| {
                Error::booster(
                    "mask_generator",
                    format!("up block {i} has no first resnet (`{conv1}`)"),
                )
            })?;
            let (cout, cin) = (shape[0], shape[1]);
            let (o4, i4) = (cout / 4, cin / 4);
            let g = |n: &str| format!("mask_generators.{i}.{n}");
            let mut adapters = Vec::new();
            for (weight_name, [out_f, in_f]) in layers {
                let module = weight_name
                    .trim_start_matches(&format!("up_blocks.{i}."))
                    .trim_end_matches(".weight")
                    .replace('.', "_");
                let a = |n: &str| format!("adapters.{i}.{module}.{n}");
                adapters.push(Adapter {
                    conv_in: Linear::load(ws, &a("conv_in"), o4, out_f, true)?,
                    conv_out: Linear::load(ws, &a("conv_out"), i4, in_f, true)?,
                    weight_name,
                });
            }
            blocks.insert(
                i,
                BlockGenerator {
                    proj_temb: Linear::load(ws, &g("proj_temb"), t, cin, false)?,
                    conv0: Linear::load(ws, &g("conv_kernel_mask.0"), cin, HIDDEN, true)?,
                    conv2: Linear::load(ws, &g("conv_kernel_mask.2"), HIDDEN, i4 * o4, true)?,
                    o4,
                    i4,
                    adapters,
                },
            );
        }
        if blocks.is_empty() {
            return Err(Error::booster(
                "mask_generator",
                "this model has no layers MaskUNet masks (linears of the up blocks)",
            ));
        }
        Ok(MaskGenerator { blocks, gumbel })
    }

    /// The masks of up block `i`'s layers for this call, from the block's input `sample`, the
    /// skip its first resnet takes, and the time embedding `emb` ([B, T], before SiLU); `None`
    /// for a block without masked layers. A NaN or infinity in the hyper-network's features or
    /// logits is an error naming the module (a mask would silently drop those weights).
    pub fn block_masks(
        &self,
        i: usize,
        sample: &Tensor,
        skip: &Tensor,
        emb: &Tensor,
        step: usize,
    ) -> Result<Option<MaskSet>> {
        let Some(g) = self.blocks.get(&i) else {
            return Ok(None);
        };
        let finite = |what: String, data: &[f32], shape: &[usize]| match first_non_finite(data) {
            None => Ok(()),
            Some(bad) => Err(Error::NonFinite {
                msg: format!(
                    "non-finite value in the mask generator: `{what}` holds {}; its inputs were \
                     finite, so values overflow f32 there",
                    non_finite_words(shape, bad)
                ),
                at: what,
            }),
        };
        let b = match (sample.shape(), skip.shape(), emb.shape()) {
            ([b, _, _, _], [sb, _, _, _], [eb, _]) if sb == b && eb == b => *b,
            (s, k, e) => {
                return Err(Error::input(
                    "mask generator inputs",
                    format!(
                        "sample {s:?}, skip {k:?} and time embedding {e:?}; expected \
                         [B, C, H, W], [B, C', H', W'] and [B, T]"
                    ),
                ))
            }
        };
        let lc = LayerCtx::default();
        let mut x = Vec::with_capacity(b * (sample.shape()[1] + skip.shape()[1]));
        for bi in 0..b {
            for t in [sample, skip] {
                let (c, hw) = (t.shape()[1], t.shape()[2] * t.shape()[3]);
                for plane in t.data()[bi * c * hw..(bi + 1) * c * hw].chunks(hw) {
                    x.push((plane.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32);
                }
            }
        }
        let cin = x.len() / b;
        let mut x = Tensor::from_parts([b, cin], x);
        crate::backend::cpu::try_add_inplace(&mut x, &g.proj_temb.try_forward(emb, lc)?, 1.0)?;
        let relu = |mut t: Tensor| {
            t.data_mut().iter_mut().for_each(|v| *v = v.max(0.0));
            t
        };
        finite(
            format!("mask_generators.{i}.proj_temb"),
            x.data(),
            x.shape(),
        )?;
        let m = relu(
            g.conv2
                .try_forward(&relu(g.conv0.try_forward(&x, lc)?), lc)?,
        );
        finite(
            format!("mask_generators.{i}.conv_kernel_mask"),
            m.data(),
            m.shape(),
        )?;
        let (o4, i4) = (g.o4, g.i4);
        let mut set = MaskSet::new();
        for a in &g.adapters {
            let (out_f, in_f) = (a.conv_in.weight.shape()[0], a.conv_out.weight.shape()[0]);
            let mut bytes = vec![0u8; b * out_f * in_f];
            for bi in 0..b {
                // L1 = W_in · M_b + b_in (per row), L = L1 · W_outᵀ + b_out (per column).
                let mut l1 = vec![0f32; out_f * i4];
                sgemm(
                    out_f,
                    i4,
                    o4,
                    a.conv_in.weight.data(),
                    Mat::row_major(0, o4),
                    m.data(),
                    Mat::row_major(bi * o4 * i4, i4),
                    &mut l1,
                    Mat::row_major(0, i4),
                    false,
                    1.0,
                    Threads::Pool,
                    Precision::F32,
                );
                let b_in = a.conv_in.bias.as_ref().expect("loaded with bias").data();
                for (row, &bv) in l1.chunks_mut(i4).zip(b_in) {
                    row.iter_mut().for_each(|v| *v += bv);
                }
                let b_out = a.conv_out.bias.as_ref().expect("loaded with bias").data();
                let mut logits = b_out.repeat(out_f);
                sgemm(
                    out_f,
                    in_f,
                    i4,
                    &l1,
                    Mat::row_major(0, i4),
                    a.conv_out.weight.data(),
                    Mat::transposed(0, i4),
                    &mut logits,
                    Mat::row_major(0, in_f),
                    true,
                    1.0,
                    Threads::Pool,
                    Precision::F32,
                );
                finite(
                    format!("adapters.{i} (logits of `{}`)", a.weight_name),
                    &logits,
                    &[out_f, in_f],
                )?;
                let dst = &mut bytes[bi * out_f * in_f..(bi + 1) * out_f * in_f];
                match self.gumbel {
                    Gumbel::Off => {
                        for (d, &l) in dst.iter_mut().zip(&logits) {
                            *d = u8::from(l > 0.0);
                        }
                    }
                    Gumbel::Seeded(seed) => {
                        let mut rng = Rng::new(stream(seed, step, &a.weight_name, bi));
                        for (d, &l) in dst.iter_mut().zip(&logits) {
                            let e = -(1.0 - rng.uniform()).ln(); // Exp(1), never ln(0)
                            *d = u8::from(l as f64 - e.ln() > 0.0);
                        }
                    }
                }
            }
            set.insert(
                a.weight_name.clone(),
                WeightMask::from_bytes(vec![out_f, in_f], None, Some(b), &bytes)?,
            )?;
        }
        Ok(Some(set))
    }
}

/// The noise stream of one (seed, step, layer, sample).
fn stream(seed: u64, step: usize, layer: &str, sample: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in layer
        .bytes()
        .chain(step.to_le_bytes())
        .chain(sample.to_le_bytes())
    {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
