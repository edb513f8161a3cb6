//! Every U-Net golden the tools wrote, as (model, inputs, boosters, expected output) cases, so
//! the CPU tests and the GPU tests check the same list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use freelunch::backend::cpu::fourier::FilterForm;
use freelunch::boosters::mask_generator::{Gumbel, MaskGenerator};
use freelunch::boosters::{Boosters, FreeU, FreeUBlocks, MaskSet, SkipScales};
use freelunch::{Tensor, UNet, UNetInputs};
use serde_json::Value;

use super::fixture;

pub struct Golden {
    pub name: String,
    /// The model folder.
    pub model: PathBuf,
    pub inputs: UNetInputs,
    pub boosters: Boosters,
    pub expected: Tensor,
}

fn sample(path: &Path) -> Tensor {
    let t = super::load_sample(path);
    assert!(
        t.data().iter().any(|&v| v != 0.0),
        "{}: reference is all zeros",
        path.display()
    );
    t
}

/// The plain forward goldens of tools/gen_goldens.py: (case, model subfolder).
pub const MODEL_CASES: [(&str, &str); 7] = [
    ("ddpm_basic", ""),
    ("ddpm_scale_shift_class", ""),
    ("ddpm_noattn_sharded", "model"),
    ("sd15_like", ""),
    ("sd21_like", ""),
    ("sdxl_like", ""),
    ("sd_mid_only_cross", ""),
];

pub fn model_golden(case: &str, subdir: &str) -> Golden {
    let dir = fixture(case);
    Golden {
        name: case.to_string(),
        model: dir.join(subdir),
        inputs: UNetInputs::load(&dir.join("inputs.safetensors")).unwrap(),
        boosters: Boosters::default(),
        expected: sample(&dir.join("expected.safetensors")),
    }
}

/// tools/gen_booster_goldens.py: every variant of every case, each with both filter forms.
pub fn booster_goldens() -> Vec<Golden> {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap() as f32;
    let mut out = Vec::new();
    for case in sorted(&fixture("boosters"), |p| p.is_dir()) {
        for json_path in sorted(&case, |p| p.extension().is_some_and(|e| e == "json")) {
            let spec: Value =
                serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
            let skip_scales = if let Some(list) = spec["skip_scales"].as_array() {
                Some(SkipScales::Explicit(
                    list.iter().map(|v| v.as_f64().unwrap() as f32).collect(),
                ))
            } else if spec["skip_tuning"].is_object() {
                let st = &spec["skip_tuning"];
                Some(SkipScales::Linear {
                    top: f(st, "rho_top"),
                    bottom: f(st, "rho_bottom"),
                })
            } else {
                None
            };
            for form in [FilterForm::Direct, FilterForm::Fft] {
                let freeu = spec["freeu"].as_object().map(|_| {
                    let fu = &spec["freeu"];
                    let mut freeu = FreeU::new(f(fu, "b1"), f(fu, "b2"), f(fu, "s1"), f(fu, "s2"));
                    freeu.blocks = match fu["blocks"].as_str().unwrap() {
                        "stage" => FreeUBlocks::Stage,
                        "channels" => FreeUBlocks::Channels,
                        other => panic!("unknown blocks {other}"),
                    };
                    freeu.v2 = fu["v2"].as_bool().unwrap();
                    freeu.threshold = fu["threshold"].as_u64().unwrap() as usize;
                    freeu.filter = form;
                    freeu
                });
                out.push(Golden {
                    name: format!("{}: {form:?}", json_path.display()),
                    model: fixture(spec["model"].as_str().unwrap()),
                    inputs: UNetInputs::load(&case.join("inputs.safetensors")).unwrap(),
                    boosters: Boosters {
                        skip_scales: skip_scales.clone(),
                        freeu,
                        ..Boosters::default()
                    },
                    expected: sample(&json_path.with_extension("safetensors")),
                });
            }
        }
    }
    out
}

/// tools/gen_mask_goldens.py: masks from a file (the case's model names their layers).
pub fn mask_golden(case: &str, models: &mut Models) -> Golden {
    let dir = fixture("masks").join(case);
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let model = fixture(spec["model"].as_str().unwrap());
    let masks = MaskSet::load(&dir.join("masks.safetensors"), models.get(&model).layers()).unwrap();
    assert!(!masks.is_empty());
    Golden {
        name: format!("masks/{case}"),
        model,
        inputs: UNetInputs::load(&dir.join("inputs.safetensors")).unwrap(),
        boosters: Boosters {
            masks: Some(Arc::new(masks)),
            mask_step: spec["step"].as_u64().unwrap() as usize,
            ..Boosters::default()
        },
        expected: sample(&dir.join("expected.safetensors")),
    }
}

pub const MASK_CASES: [&str; 4] = [
    "sd15_shared_u8",
    "sd15_per_sample_bool",
    "sdxl_per_step",
    "ddpm_per_sample",
];

/// tools/gen_mask_generator_goldens.py: the hyper-network with its noise off.
pub fn mask_generator_golden(unet: &UNet) -> Golden {
    let dir = fixture("mask_generator").join("sd15_hyper");
    let gen = MaskGenerator::load(&dir.join("generator.safetensors"), unet, Gumbel::Off).unwrap();
    Golden {
        name: "mask_generator/sd15_hyper".into(),
        model: fixture("sd15_like"),
        inputs: UNetInputs::load(&dir.join("inputs.safetensors")).unwrap(),
        boosters: Boosters {
            mask_generator: Some(Arc::new(gen)),
            ..Boosters::default()
        },
        expected: sample(&dir.join("expected.safetensors")),
    }
}

/// tools/gen_deme_goldens.py: DeMe's channel projections.
pub fn deme_golden() -> Golden {
    let dir = fixture("deme").join("ddpm_adapters");
    Golden {
        name: "deme/ddpm_adapters".into(),
        model: dir.clone(),
        inputs: UNetInputs::load(&dir.join("inputs.safetensors")).unwrap(),
        boosters: Boosters::default(),
        expected: sample(&dir.join("expected.safetensors")),
    }
}

/// Models by folder, loaded once.
#[derive(Default)]
pub struct Models(BTreeMap<PathBuf, UNet>);

impl Models {
    pub fn get(&mut self, dir: &Path) -> &UNet {
        self.0.entry(dir.to_path_buf()).or_insert_with(|| {
            UNet::from_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        })
    }
}

fn sorted(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| keep(p))
        .collect();
    v.sort();
    v
}
