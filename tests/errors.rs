//! Every kind of bad input gives an `Err` whose message says what is wrong; none panics.

mod common;

use std::path::Path;

use common::{copy_fixture, fixture, write_raw_safetensors};
use freelunch::safetensors_io;
use freelunch::{Tensor, UNet, UNetConfig, UNetInputs};

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

fn load_err(dir: &Path) -> String {
    match UNet::from_dir(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let mut tensors: Vec<(String, Tensor)> = safetensors_io::load(&dir.join(WEIGHTS))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.tensor))
        .collect();
    edit(&mut tensors);
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors_io::save(&dir.join(WEIGHTS), &refs).unwrap();
}

#[test]
fn truncated_weights() {
    let dir = copy_fixture("sd15_like");
    let bytes = std::fs::read(dir.join(WEIGHTS)).unwrap();
    std::fs::write(dir.join(WEIGHTS), &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
    // Cut inside the header too.
    std::fs::write(dir.join(WEIGHTS), &bytes[..20]).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
}

#[test]
fn garbage_header() {
    let dir = copy_fixture("sd15_like");
    let mut bytes = 64u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[b'{'; 64]);
    std::fs::write(dir.join(WEIGHTS), &bytes).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
    std::fs::write(dir.join(WEIGHTS), u64::MAX.to_le_bytes()).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
}

#[test]
fn missing_tensor() {
    let dir = copy_fixture("sd15_like");
    let name = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    rewrite_weights(&dir, |t| t.retain(|(k, _)| k != name));
    let msg = load_err(&dir);
    assert!(
        msg.contains("missing weight") && msg.contains(name),
        "{msg}"
    );
}

#[test]
fn tensor_of_wrong_shape() {
    let dir = copy_fixture("sd15_like");
    let name = "down_blocks.0.resnets.1.conv1.weight";
    rewrite_weights(&dir, |t| {
        let (_, w) = t.iter_mut().find(|(k, _)| k == name).unwrap();
        let s = w.shape().to_vec();
        *w = Tensor::randn([s[0], s[1], 1, 9], 1);
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains(name) && msg.contains("expected shape"),
        "{msg}"
    );
}

#[test]
fn tensor_of_wrong_dtype() {
    let dir = copy_fixture("sd15_like");
    let mut tensors: Vec<(String, String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (k, v) in safetensors_io::load(&dir.join(WEIGHTS)).unwrap() {
        let (dtype, bytes) = if k == "conv_in.weight" {
            let ints: Vec<u8> = v
                .tensor
                .data()
                .iter()
                .flat_map(|&x| (x as i32).to_le_bytes())
                .collect();
            ("I32".to_string(), ints)
        } else {
            (
                "F32".to_string(),
                v.tensor
                    .data()
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            )
        };
        tensors.push((k, dtype, v.tensor.shape().to_vec(), bytes));
    }
    let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.clone(), d.clone()))
        .collect();
    write_raw_safetensors(&dir.join(WEIGHTS), &refs);
    let msg = load_err(&dir);
    assert!(
        msg.contains("conv_in.weight") && msg.contains("floating point"),
        "{msg}"
    );
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn unknown_block_type() {
    let dir = copy_fixture("sd15_like");
    edit_config(&dir, |v| {
        v["down_block_types"][1] = "SimpleCrossAttnDownBlock2D".into()
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains("down_block_types") && msg.contains("SimpleCrossAttnDownBlock2D"),
        "{msg}"
    );
}

#[test]
fn unsupported_config_values_name_field_and_value() {
    let cases: [(&str, serde_json::Value); 6] = [
        ("act_fn", "mish".into()),
        ("resnet_time_scale_shift", "spatial".into()),
        ("time_embedding_type", "fourier".into()),
        ("encoder_hid_dim_type", "text_proj".into()),
        ("some_future_option", 3.into()),
        ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn".into()),
    ];
    for (field, value) in cases {
        let dir = copy_fixture("sd15_like");
        let shown = value.to_string();
        edit_config(&dir, |v| v[field] = value);
        let msg = load_err(&dir);
        assert!(
            msg.contains(field) && msg.contains(&shown),
            "{field}: {msg}"
        );
    }
}

#[test]
fn malformed_config() {
    let dir = copy_fixture("sd15_like");
    std::fs::write(
        dir.join("config.json"),
        "{\"_class_name\": \"UNet2DConditionModel\",",
    )
    .unwrap();
    assert!(load_err(&dir).contains("invalid JSON"));
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    assert!(load_err(&dir).contains("_class_name"));
    edit_config(&dir, |v| {
        *v = serde_json::json!({"_class_name": "UNet3DConditionModel"})
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains("_class_name") && msg.contains("UNet3DConditionModel"),
        "{msg}"
    );
    edit_config(
        &dir,
        |v| *v = serde_json::json!({"_class_name": "UNet2DModel", "block_out_channels": "wide"}),
    );
    let msg = load_err(&dir);
    assert!(msg.contains("block_out_channels"), "{msg}");
    edit_config(
        &dir,
        |v| *v = serde_json::json!({"_class_name": "UNet2DModel", "block_out_channels": [30, 64, 64, 64]}),
    );
    let msg = load_err(&dir);
    assert!(msg.contains("norm_num_groups"), "{msg}");
}

#[test]
fn config_of_one_model_with_weights_of_another() {
    let dir = copy_fixture("sd15_like");
    std::fs::copy(fixture("sdxl_like/config.json"), dir.join("config.json")).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("weight"), "{msg}");
}

fn forward_err(case: &str, edit: impl FnOnce(&mut UNetInputs)) -> String {
    let dir = fixture(case);
    let unet = UNet::from_dir(&dir).unwrap();
    let mut inputs = UNetInputs::load(&dir.join("inputs.safetensors")).unwrap();
    edit(&mut inputs);
    match unet.forward(&inputs) {
        Ok(_) => panic!("forward should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn wrong_inputs() {
    let msg = forward_err("sd15_like", |i| i.sample = Tensor::randn([2, 3, 16, 16], 0));
    assert!(
        msg.contains("sample") && msg.contains("3 channels"),
        "{msg}"
    );
    let msg = forward_err("sd15_like", |i| i.sample = Tensor::randn([2, 4, 16], 0));
    assert!(msg.contains("rank-4"), "{msg}");
    let msg = forward_err("sd15_like", |i| i.encoder_hidden_states = None);
    assert!(
        msg.contains("encoder_hidden_states") && msg.contains("missing"),
        "{msg}"
    );
    let msg = forward_err("sd15_like", |i| {
        i.encoder_hidden_states = Some(Tensor::randn([2, 7, 47], 0))
    });
    assert!(msg.contains("encoder_hidden_states"), "{msg}");
    let msg = forward_err("sd15_like", |i| i.timesteps = vec![1.0, 2.0, 3.0]);
    assert!(msg.contains("timestep"), "{msg}");
    let msg = forward_err("sd15_like", |i| i.sample.data_mut()[5] = f32::NAN);
    assert!(msg.contains("NaN"), "{msg}");
    let msg = forward_err("ddpm_basic", |i| {
        i.sample = Tensor::randn([2, 3, 14, 16], 0)
    });
    assert!(msg.contains("divisible"), "{msg}");
    let msg = forward_err("ddpm_scale_shift_class", |i| i.class_labels = None);
    assert!(msg.contains("class_labels"), "{msg}");
    let msg = forward_err("ddpm_scale_shift_class", |i| {
        i.class_labels = Some(vec![3.0, 10.0])
    });
    assert!(msg.contains("class_labels") && msg.contains("10"), "{msg}");
    let msg = forward_err("sdxl_like", |i| i.time_ids = None);
    assert!(msg.contains("time_ids"), "{msg}");
    let msg = forward_err("sdxl_like", |i| {
        i.text_embeds = Some(Tensor::randn([2, 31], 0))
    });
    assert!(msg.contains("text_embeds"), "{msg}");
}

#[test]
fn input_file_without_sample() {
    let dir = common::scratch("inputs");
    let path = dir.join("in.safetensors");
    safetensors_io::save(&path, &[("timestep", &Tensor::randn([1], 0))]).unwrap();
    let msg = UNetInputs::load(&path).unwrap_err().to_string();
    assert!(msg.contains("sample"), "{msg}");
}

#[test]
fn no_weights_in_folder() {
    let dir = copy_fixture("sd15_like");
    std::fs::remove_file(dir.join(WEIGHTS)).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("no weights found"), "{msg}");
    let _ = UNetConfig::from_file(&dir.join("config.json")).unwrap();
}
