//! MaskUNet masks: goldens (per-sample `bmm` with `W ⊙ M_b`, as the official code does), the
//! masked GEMM path against naive references, and the errors a mask file can cause.

mod common;

use std::sync::Arc;

use common::{fixture, random_mask_bytes, scratch, write_raw_safetensors};
use freelunch::backend::cpu::{self, masked, Padding};
use freelunch::boosters::masks::{MaskSet, WeightMask};
use freelunch::boosters::Boosters;
use freelunch::{Tensor, UNet, UNetInputs};
use proptest::prelude::*;

fn golden(case: &str) {
    let mut models = common::goldens::Models::default();
    let g = common::goldens::mask_golden(case, &mut models);
    let unet = models.get(&g.model);
    let out = unet.forward_with(&g.inputs, &g.boosters).unwrap();
    let err = out.rel_l2(&g.expected);
    eprintln!("{case}: rel L2 {err:.3e}");
    assert!(err <= 1e-4, "{case}: rel L2 {err:.3e}");
    // The masks matter: the plain output is far from the reference.
    assert!(unet.forward(&g.inputs).unwrap().rel_l2(&g.expected) > 1e-2);
}

#[test]
fn shared_u8_masks() {
    golden("sd15_shared_u8");
}

#[test]
fn per_sample_bool_masks_on_linear_and_conv() {
    golden("sd15_per_sample_bool");
}

#[test]
fn per_step_masks_select_the_step() {
    golden("sdxl_per_step");
}

#[test]
fn unet2dmodel_per_sample_masks() {
    golden("ddpm_per_sample");
}

fn naive_masked_rows(w: &[f32], bytes: &[u8]) -> Vec<f32> {
    w.iter()
        .zip(bytes)
        .map(|(&w, &m)| if m != 0 { w } else { 0.0 })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn masked_linear_matches_per_sample_dense(
        b in 1usize..4, rows in 1usize..9, fin in 1usize..150, fout in 1usize..140,
        bias in any::<bool>(), shared in any::<bool>(), seed in any::<u64>(),
    ) {
        let x = Tensor::randn([b, rows, fin], seed);
        let w = Tensor::randn([fout, fin], seed ^ 1);
        let bv: Vec<f32> = Tensor::randn([fout], seed ^ 2).data().to_vec();
        let nb = if shared { 1 } else { b };
        let bytes = common::random_mask_bytes(nb * fout * fin, 0.7, seed ^ 3);
        let mask = WeightMask::from_bytes(vec![fout, fin], None, (!shared).then_some(b), &bytes).unwrap();
        let got = masked::masked_linear(&x, &w, bias.then_some(&bv[..]), Some(&|s| mask.view(0, s)));
        for s in 0..b {
            let mb = &bytes[(if shared { 0 } else { s }) * fout * fin..][..fout * fin];
            let wm = Tensor::new([fout, fin], naive_masked_rows(w.data(), mb)).unwrap();
            let xs = Tensor::new([rows, fin], x.data()[s * rows * fin..(s + 1) * rows * fin].to_vec()).unwrap();
            let want = cpu::linear(&xs, &wm, bias.then_some(&bv[..]));
            let gots = Tensor::new([rows, fout], got.data()[s * rows * fout..(s + 1) * rows * fout].to_vec()).unwrap();
            prop_assert!(gots.rel_l2(&want) <= 1e-5 || want.data().iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn all_ones_masks_are_the_dense_layer_bit_for_bit(
        b in 1usize..4, rows in 1usize..20, fin in 1usize..200, fout in 1usize..200, seed in any::<u64>(),
    ) {
        let x = Tensor::randn([b, rows, fin], seed);
        let w = Tensor::randn([fout, fin], seed ^ 1);
        let bv: Vec<f32> = Tensor::randn([fout], seed ^ 2).data().to_vec();
        let mask = WeightMask::from_bytes(vec![fout, fin], None, Some(b), &vec![1u8; b * fout * fin]).unwrap();
        let got = masked::masked_linear(&x, &w, Some(&bv), Some(&|s| mask.view(0, s)));
        prop_assert_eq!(got, masked::masked_linear(&x, &w, Some(&bv), None));
    }

    #[test]
    fn all_ones_conv_masks_are_the_dense_conv_bit_for_bit(
        b in 1usize..4, cin in 1usize..40, cout in 1usize..150, h in 1usize..12, w in 1usize..12,
        k in prop::sample::select(vec![1usize, 3]), stride in 1usize..3, seed in any::<u64>(),
    ) {
        let pad = Padding::same(k / 2);
        let x = Tensor::randn([b, cin, h, w], seed);
        let wt = Tensor::randn([cout, cin, k, k], seed ^ 1);
        let bv: Vec<f32> = Tensor::randn([cout], seed ^ 2).data().to_vec();
        let mask = WeightMask::from_bytes(vec![cout, cin, k, k], None, Some(b), &vec![1u8; b * wt.numel()]).unwrap();
        let got = cpu::conv::conv2d_masked(&x, &wt, Some(&bv), stride, pad, Some(&|s| mask.view(0, s)));
        prop_assert_eq!(got, cpu::conv2d(&x, &wt, Some(&bv), stride, pad));
    }

    /// As above on images past the direct path (the implicit GEMM's single product over all taps).
    #[test]
    fn all_ones_conv_masks_are_the_dense_conv_bit_for_bit_on_large_images(
        cin in 1usize..40, cout in 1usize..100, h in 17usize..24, w in 17usize..24, seed in any::<u64>(),
    ) {
        let (b, k) = (2, 3);
        let pad = Padding::same(1);
        let x = Tensor::randn([b, cin, h, w], seed);
        let wt = Tensor::randn([cout, cin, k, k], seed ^ 1);
        let bv: Vec<f32> = Tensor::randn([cout], seed ^ 2).data().to_vec();
        let mask = WeightMask::from_bytes(vec![cout, cin, k, k], None, Some(b), &vec![1u8; b * wt.numel()]).unwrap();
        let got = cpu::conv::conv2d_masked(&x, &wt, Some(&bv), 1, pad, Some(&|s| mask.view(0, s)));
        prop_assert_eq!(got, cpu::conv2d(&x, &wt, Some(&bv), 1, pad));
    }

    #[test]
    fn masked_conv_matches_per_sample_dense(
        b in 1usize..3, cin in 1usize..5, cout in 1usize..70, hw in 2usize..8,
        k in prop::sample::select(vec![1usize, 3]), stride in 1usize..3, seed in any::<u64>(),
    ) {
        let pad = Padding::same(k / 2);
        let x = Tensor::randn([b, cin, hw, hw], seed);
        let w = Tensor::randn([cout, cin, k, k], seed ^ 1);
        let bv: Vec<f32> = Tensor::randn([cout], seed ^ 2).data().to_vec();
        let n = cout * cin * k * k;
        let bytes = common::random_mask_bytes(b * n, 0.6, seed ^ 3);
        let mask = WeightMask::from_bytes(vec![cout, cin, k, k], None, Some(b), &bytes).unwrap();
        let got = cpu::conv::conv2d_masked(&x, &w, Some(&bv), stride, pad, Some(&|s| mask.view(0, s)));
        for s in 0..b {
            let wm = Tensor::new([cout, cin, k, k], naive_masked_rows(w.data(), &bytes[s * n..(s + 1) * n])).unwrap();
            let xs = Tensor::new([1, cin, hw, hw], x.data()[s * cin * hw * hw..(s + 1) * cin * hw * hw].to_vec()).unwrap();
            let want = cpu::conv2d(&xs, &wm, Some(&bv), stride, pad);
            let per = want.numel();
            let gots = Tensor::new(want.shape().to_vec(), got.data()[s * per..(s + 1) * per].to_vec()).unwrap();
            prop_assert!(gots.rel_l2(&want) <= 1e-5);
        }
    }
}

/// An all-ones mask on every maskable layer leaves the model's output unchanged, bit for bit.
#[test]
fn all_ones_masks_on_a_model_give_the_plain_output() {
    let dir = fixture("sd15_like");
    let unet = UNet::from_dir(&dir).unwrap();
    let inputs = UNetInputs::load(&dir.join("inputs.safetensors")).unwrap();
    let mut set = MaskSet::new();
    for (name, shape) in unet.layers() {
        let n: usize = shape.iter().product();
        set.insert(
            name.clone(),
            WeightMask::from_bytes(shape.clone(), None, Some(2), &vec![1u8; 2 * n]).unwrap(),
        )
        .unwrap();
    }
    let b = Boosters {
        masks: Some(Arc::new(set)),
        ..Boosters::default()
    };
    assert_eq!(
        unet.forward_with(&inputs, &b).unwrap(),
        unet.forward(&inputs).unwrap()
    );
}

fn mask_file_error(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> String {
    let unet = UNet::from_dir(&fixture("sd15_like")).unwrap();
    let path = scratch("masks").join("m.safetensors");
    write_raw_safetensors(&path, tensors);
    MaskSet::load(&path, unet.layers()).unwrap_err().to_string()
}

const Q: &str = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight";

#[test]
fn mask_errors() {
    let msg = mask_file_error(&[(Q, "U8", vec![3, 16, 15], vec![1; 3 * 16 * 15])]);
    assert!(msg.contains(Q) && msg.contains("fits no rule"), "{msg}");
    let name = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_z.weight";
    let msg = mask_file_error(&[(name, "U8", vec![16, 16], vec![1; 256])]);
    assert!(msg.contains(name) && msg.contains("names no"), "{msg}");
    let msg = mask_file_error(&[(Q, "F32", vec![16, 16], vec![0; 1024])]);
    assert!(msg.contains("u8 or bool"), "{msg}");
    let msg = mask_file_error(&[(Q, "U8", vec![16, 16], vec![1; 100])]);
    assert!(msg.contains("not a valid safetensors"), "{msg}");

    // Batch and step are checked against the call.
    let dir = fixture("sd15_like");
    let unet = UNet::from_dir(&dir).unwrap();
    let inputs = UNetInputs::load(&dir.join("inputs.safetensors")).unwrap();
    let call = |mask: WeightMask, step: usize| {
        let mut set = MaskSet::new();
        set.insert(Q.to_string(), mask).unwrap();
        let b = Boosters {
            masks: Some(Arc::new(set)),
            mask_step: step,
            ..Boosters::default()
        };
        unet.forward_with(&inputs, &b).unwrap_err().to_string()
    };
    let msg = call(
        WeightMask::from_bytes(vec![16, 16], None, Some(3), &[1; 768]).unwrap(),
        0,
    );
    assert!(
        msg.contains("batch of 3") && msg.contains("batch is 2"),
        "{msg}"
    );
    let msg = call(
        WeightMask::from_bytes(vec![16, 16], Some(2), Some(2), &[1; 1024]).unwrap(),
        2,
    );
    assert!(msg.contains("2 steps") && msg.contains("step 2"), "{msg}");
}

#[test]
fn forward_cli_takes_masks() {
    let case = fixture("masks").join("sd15_shared_u8");
    let out = scratch("mask-cli").join("out.safetensors");
    let model = fixture("sd15_like");
    let got = common::cli_sample(
        [
            "forward".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--input".as_ref(),
            case.join("inputs.safetensors").as_os_str(),
            "--masks".as_ref(),
            case.join("masks.safetensors").as_os_str(),
        ],
        &out,
    );
    let want = common::load_sample(&case.join("expected.safetensors"));
    assert!(got.rel_l2(&want) <= 1e-4);
}

/// MaskUNet's hyper-network with the Gumbel noise off, against a PyTorch reference of the
/// official `training/hyperunet.py` (which it reproduces exactly with its noise zeroed).
#[test]
fn mask_generator_golden() {
    let unet = UNet::from_dir(&fixture("sd15_like")).unwrap();
    let g = common::goldens::mask_generator_golden(&unet);
    let out = unet.forward_with(&g.inputs, &g.boosters).unwrap();
    let err = out.rel_l2(&g.expected);
    assert!(err <= 1e-4, "rel L2 {err:.3e}");
    assert!(unet.forward(&g.inputs).unwrap().rel_l2(&g.expected) > 1e-2);
}

/// With noise, masks are reproducible for a seed and step, and change with either.
#[test]
fn mask_generator_noise_is_seeded() {
    use freelunch::boosters::mask_generator::{Gumbel, MaskGenerator};
    let dir = fixture("mask_generator").join("sd15_hyper");
    let unet = UNet::from_dir(&fixture("sd15_like")).unwrap();
    let inputs = UNetInputs::load(&dir.join("inputs.safetensors")).unwrap();
    let run = |gumbel, step| {
        let gen = MaskGenerator::load(&dir.join("generator.safetensors"), &unet, gumbel).unwrap();
        let b = Boosters {
            mask_generator: Some(Arc::new(gen)),
            mask_step: step,
            ..Boosters::default()
        };
        unet.forward_with(&inputs, &b).unwrap()
    };
    let a = run(Gumbel::Seeded(42), 0);
    assert_eq!(a, run(Gumbel::Seeded(42), 0));
    assert!(a.rel_l2(&run(Gumbel::Seeded(43), 0)) > 1e-3);
    assert!(a.rel_l2(&run(Gumbel::Seeded(42), 1)) > 1e-3);
    assert!(a.rel_l2(&run(Gumbel::Off, 0)) > 1e-3);
}

#[test]
fn mask_generator_errors() {
    use freelunch::boosters::mask_generator::{Gumbel, MaskGenerator};
    let dir = fixture("mask_generator").join("sd15_hyper");
    // A generator made for another model.
    let other = UNet::from_dir(&fixture("sdxl_like")).unwrap();
    let msg = MaskGenerator::load(&dir.join("generator.safetensors"), &other, Gumbel::Off)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("weight") || msg.contains("mask_generators"),
        "{msg}"
    );
    // Masks and a generator together.
    let unet = UNet::from_dir(&fixture("sd15_like")).unwrap();
    let gen = MaskGenerator::load(&dir.join("generator.safetensors"), &unet, Gumbel::Off).unwrap();
    let b = Boosters {
        mask_generator: Some(Arc::new(gen)),
        masks: Some(Arc::new(MaskSet::new())),
        ..Boosters::default()
    };
    let inputs = UNetInputs::load(&dir.join("inputs.safetensors")).unwrap();
    let msg = unet.forward_with(&inputs, &b).unwrap_err().to_string();
    assert!(msg.contains("exclusive"), "{msg}");
}

#[test]
fn forward_cli_takes_a_mask_generator() {
    let case = fixture("mask_generator").join("sd15_hyper");
    let out = scratch("gen-cli").join("out.safetensors");
    let model = fixture("sd15_like");
    let got = common::cli_sample(
        [
            "forward".as_ref(),
            "--no-gumbel".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--input".as_ref(),
            case.join("inputs.safetensors").as_os_str(),
            "--mask-generator".as_ref(),
            case.join("generator.safetensors").as_os_str(),
        ],
        &out,
    );
    let want = common::load_sample(&case.join("expected.safetensors"));
    assert!(got.rel_l2(&want) <= 1e-4);
}

/// A set made for a model checks each mask as it is inserted: a name the model lacks, a mask of
/// another shape than its weight, are errors naming the weight, and leave the set unchanged; a
/// set made for no model takes anything and the model's call refuses it.
#[test]
fn a_set_made_for_a_model_checks_masks_at_insert() {
    let unet = UNet::from_dir(&fixture("ddpm_basic")).unwrap();
    let name = "down_blocks.0.resnets.0.conv1.weight";
    let shape = unet.layers()[name].clone();
    let n: usize = shape.iter().product();
    let ok =
        WeightMask::from_bytes(shape.clone(), None, None, &random_mask_bytes(n, 0.5, 1)).unwrap();
    let mut wrong_shape = shape.clone();
    wrong_shape[1] += 1;
    let m = wrong_shape.iter().product();
    let wrong =
        WeightMask::from_bytes(wrong_shape, None, None, &random_mask_bytes(m, 0.5, 2)).unwrap();

    let mut set = MaskSet::for_layers(unet.layers());
    set.insert(name.into(), ok.clone()).unwrap();
    for (key, mask) in [
        ("down_blocks.0.resnets.0.conv9.weight", &ok),
        (name, &wrong),
    ] {
        match set.insert(key.into(), mask.clone()) {
            Err(freelunch::Error::Mask { name: n, .. }) => assert_eq!(n, key),
            other => panic!("{key}: {other:?}"),
        }
    }
    assert_eq!(set.len(), 1);
    assert_eq!(set.get(name), Some(&ok));

    let mut unbound = MaskSet::new();
    unbound.insert(name.into(), wrong).unwrap();
    let inputs = UNetInputs::new(Tensor::randn([1, 3, 16, 16], 0), 10.0);
    let b = Boosters {
        masks: Some(Arc::new(unbound)),
        ..Boosters::default()
    };
    assert!(matches!(
        unet.forward_with(&inputs, &b),
        Err(freelunch::Error::Mask { .. })
    ));
}
