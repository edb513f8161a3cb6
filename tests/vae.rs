//! The VAE (AutoencoderKL) against diffusers on the goldens of `tools/gen_vae_goldens.py`: decode,
//! tiled decode, the 8-bit image, encode; `freelunch decode` end to end; hostile configs, inputs
//! and checkpoints; and the CUDA backend (on the PTX executor with `FREELUNCH_DEVICE=emu`) against
//! the CPU.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::gpu::{compare, gpus};
use common::{fixture, freelunch_bin, scratch};
use freelunch::backend::{Backend, Cpu};
use freelunch::device::{DType, Exec};
use freelunch::image::{postprocess, to_u8};
use freelunch::models::autoencoders::{AutoencoderKL, AutoencoderKLConfig, Tiling};
use freelunch::weights::LoadOptions;
use freelunch::{Error, Tensor};

const CASES: [&str; 2] = ["vae_sd_like", "vae_sd3_like"];

/// Relative L2 the CPU decode and encode must reach against diffusers (f32 both sides).
const TOL: f64 = 1e-5;

fn goldens(case: &str) -> BTreeMap<String, Tensor> {
    let path = fixture(case).join("goldens.safetensors");
    freelunch::safetensors_io::load(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .map(|(k, v)| (k, v.tensor))
        .collect()
}

fn vae(case: &str) -> AutoencoderKL {
    AutoencoderKL::from_dir(&fixture(case)).unwrap_or_else(|e| panic!("{case}: {e}"))
}

fn close(what: &str, got: &Tensor, want: &Tensor, tol: f64) -> f64 {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert!(
        want.data().iter().any(|v| *v != 0.0),
        "{what}: the reference is all zeros"
    );
    let err = got.rel_l2(want);
    assert!(err <= tol, "{what}: rel L2 {err:.3e} > {tol:.0e}");
    println!("{what}: rel L2 {err:.2e}");
    err
}

#[test]
fn decode_matches_diffusers() {
    for case in CASES {
        let g = goldens(case);
        let vae = vae(case);
        // Small latents: Auto must decode whole, as diffusers' default decode.
        let out = vae
            .decode_latents(&Exec::cpu(), &g["latents"], Tiling::Auto)
            .unwrap();
        close(&format!("{case} decode"), &out, &g["decoded"], TOL);
        let never = vae
            .decode_latents(&Exec::cpu(), &g["latents"], Tiling::Never)
            .unwrap();
        assert_eq!(never, out, "{case}: Auto tiled latents within one tile");
    }
}

#[test]
fn scaling_round_trips_and_the_model_is_shareable() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<AutoencoderKL>();
    for case in CASES {
        let vae = vae(case);
        let z = goldens(case)["latents"].clone();
        let back = vae
            .scale_latents(&vae.unscale_latents(&z).unwrap())
            .unwrap();
        assert!(back.rel_l2(&z) < 1e-6, "{case}");
        assert!(
            vae.unscale_latents(&z).unwrap().rel_l2(&z) > 0.2,
            "{case}: unscaling is a no-op"
        );
    }
    // One loaded VAE decoding from several threads at once gives what one thread does.
    let vae = std::sync::Arc::new(vae("vae_sd_like"));
    let z = goldens("vae_sd_like")["latents"].clone();
    let want = vae.decode_latents(&Exec::cpu(), &z, Tiling::Auto).unwrap();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (vae, z) = (vae.clone(), z.clone());
            std::thread::spawn(move || vae.decode_latents(&Exec::cpu(), &z, Tiling::Auto).unwrap())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), want);
    }
}

#[test]
fn config_fields_are_read() {
    let sd = vae("vae_sd_like").config;
    assert_eq!(
        (sd.scaling_factor, sd.shift_factor, sd.latent_channels),
        (0.18215, None, 4)
    );
    assert!(sd.use_quant_conv && sd.use_post_quant_conv && sd.mid_block_add_attention);
    assert_eq!(sd.tile_latent_min_size(), 8);
    let sd3 = vae("vae_sd3_like").config;
    assert_eq!(
        (sd3.scaling_factor, sd3.shift_factor, sd3.latent_channels),
        (1.5305, Some(0.0609), 16)
    );
    assert!(!sd3.use_quant_conv && !sd3.use_post_quant_conv && !sd3.mid_block_add_attention);
    assert!(!sd3.force_upcast);
    assert_eq!(sd3.tile_latent_min_size(), 8);
}

#[test]
fn tiled_decode_matches_diffusers() {
    for case in CASES {
        let g = goldens(case);
        let vae = vae(case);
        let z = &g["tiled_latents"];
        // Larger than a tile: Auto tiles, as diffusers after enable_tiling().
        assert!(vae.decode_is_tiled(z.shape(), Tiling::Auto, None).unwrap());
        let auto = vae.decode_latents(&Exec::cpu(), z, Tiling::Auto).unwrap();
        close(
            &format!("{case} tiled decode"),
            &auto,
            &g["tiled_decoded"],
            TOL,
        );
        let explicit = vae
            .tiled_decode(&Exec::cpu(), &vae.unscale_latents(z).unwrap())
            .unwrap();
        assert_eq!(explicit, auto);
        // The whole decode differs from the tiled one (tiles see less context): the comparison
        // above could not pass by decoding whole.
        let whole = vae.decode_latents(&Exec::cpu(), z, Tiling::Never).unwrap();
        assert_eq!(whole.shape(), auto.shape());
        let gap = whole.rel_l2(&g["tiled_decoded"]);
        assert!(
            gap > 1e-3,
            "{case}: whole decode within {gap:.1e} of the tiled one"
        );
    }
}

#[test]
fn auto_tiles_when_the_whole_decode_does_not_fit() {
    let vae = vae("vae_sd_like");
    let need = vae.config.plan_decode(1, 6, 6).unwrap();
    assert!(need > 0);
    assert!(!vae
        .decode_is_tiled(&[1, 4, 6, 6], Tiling::Auto, Some(need))
        .unwrap());
    assert!(vae
        .decode_is_tiled(&[1, 4, 6, 6], Tiling::Auto, Some(need - 1))
        .unwrap());
    assert!(!vae
        .decode_is_tiled(&[1, 4, 60, 60], Tiling::Never, None)
        .unwrap());
    assert!(vae
        .decode_is_tiled(&[1, 4, 2, 2], Tiling::Always, None)
        .unwrap());
    // Bigger latents need more.
    assert!(vae.config.plan_decode(2, 12, 12).unwrap() > need);
}

/// Our bytes against diffusers': equal, or ±1 where our float lies within 1e-4 (in units of
/// bytes) of a rounding boundary, where diffusers' float may have fallen on the other side.
#[test]
fn image_bytes_match_diffusers() {
    for case in CASES {
        let g = goldens(case);
        let want = &g["image_u8"];
        // The golden floats give diffusers' bytes exactly: the rounding rule itself.
        let from_golden = postprocess(&g["decoded"]).unwrap();
        let [b, h, w, c] = want.shape()[..] else {
            panic!("image_u8 shape {:?}", want.shape())
        };
        assert_eq!(from_golden.len(), b);
        let want_bytes: Vec<u8> = want.data().iter().map(|v| *v as u8).collect();
        let golden_bytes: Vec<u8> = from_golden.iter().flat_map(|i| i.data.clone()).collect();
        assert_eq!(
            (
                from_golden[0].height,
                from_golden[0].width,
                from_golden[0].channels
            ),
            (h, w, c)
        );
        assert_eq!(
            golden_bytes, want_bytes,
            "{case}: bytes of the golden floats"
        );
        // One sample as its own PNG: the same bytes come back.
        let one = scratch("vae-png").join("one.png");
        freelunch::image::save_png(&one, &from_golden[1]).unwrap();
        let (pw, ph, back) = read_png(&one);
        assert_eq!((ph as usize, pw as usize), (h, w));
        assert_eq!(back, from_golden[1].data);
        let decoded = vae(case)
            .decode_latents(&Exec::cpu(), &g["latents"], Tiling::Auto)
            .unwrap();
        let ours: Vec<u8> = postprocess(&decoded)
            .unwrap()
            .iter()
            .flat_map(|i| i.data.clone())
            .collect();
        let (mut off_by_one, mut distinct) = (0, std::collections::BTreeSet::new());
        for (i, (&o, &d)) in ours.iter().zip(&want_bytes).enumerate() {
            distinct.insert(d);
            if o == d {
                continue;
            }
            // Element i of HWC sample s is channel ch of pixel p.
            let (s, rest) = (i / (h * w * c), i % (h * w * c));
            let (p, ch) = (rest / c, rest % c);
            let v = decoded.data()[(s * c + ch) * h * w + p];
            let scaled = (v * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0;
            let to_boundary = (scaled - scaled.floor() - 0.5).abs();
            assert!(
                o.abs_diff(d) == 1 && to_boundary < 1e-4,
                "{case}: byte {i} is {o}, diffusers {d} (value {v}, {to_boundary:.1e} from a \
                 rounding boundary)"
            );
            off_by_one += 1;
        }
        assert!(distinct.len() > 64, "{case}: too few byte values to test");
        println!(
            "{case}: {} bytes, {off_by_one} off by one at a rounding boundary",
            ours.len()
        );
    }
}

#[test]
fn rounding_is_diffusers() {
    assert_eq!(to_u8(-1.0), 0);
    assert_eq!(to_u8(1.0), 255);
    assert_eq!(to_u8(-7.0), 0);
    assert_eq!(to_u8(f32::MAX), 255);
    // 0.5 · 255 = 127.5 exactly: numpy rounds half to even.
    assert_eq!(to_u8(0.0), 128);
    // Every input near a half-integer byte whose f32 product (x·0.5 + 0.5)·255 is exactly
    // k + 0.5 rounds to the even neighbour, and every other input to the nearest byte.
    let (mut ties, mut odd_ties) = (0, 0);
    for k in 0..255u32 {
        let centre = (k as f32 + 0.5) / 127.5 - 1.0;
        for d in -64i32..=64 {
            let x = f32::from_bits((centre.to_bits() as i32 + d) as u32);
            let v = (x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0;
            let want = if v.fract() == 0.5 {
                ties += 1;
                odd_ties += u32::from(v.floor() as u32 % 2 == 1);
                (v.floor() as u32 + v.floor() as u32 % 2) as u8
            } else {
                v.round() as u8
            };
            assert_eq!(to_u8(x), want, "x = {x:e}, v = {v}");
        }
    }
    // Ties exist in f32 and some of them fall on odd bytes, where half-away rounding would
    // differ.
    assert!(
        ties > 0 && odd_ties > 0,
        "{ties} ties, {odd_ties} at odd bytes"
    );
}

#[test]
fn encode_matches_diffusers() {
    for case in CASES {
        let g = goldens(case);
        let vae = vae(case);
        let dist = vae.encode(&Exec::cpu(), &g["pixels"]).unwrap();
        close(
            &format!("{case} encode mean"),
            &dist.mean,
            &g["encode_mean"],
            TOL,
        );
        close(
            &format!("{case} encode logvar"),
            &dist.logvar,
            &g["encode_logvar"],
            TOL,
        );
        let sample = dist.sample(&g["noise"]).unwrap();
        close(
            &format!("{case} encode sample"),
            &sample,
            &g["encode_sample"],
            TOL,
        );
        assert!(dist.sample(&Tensor::randn([1, 1, 1, 1], 0)).is_err());
    }
}

fn run_cli(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(freelunch_bin()).args(args).output().unwrap()
}

fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn cli_decode_end_to_end() {
    let dir = scratch("vae-cli");
    let g = goldens("vae_sd_like");
    // What `freelunch sample --output X.safetensors` writes: the latents as `sample`.
    let latents = dir.join("latents.safetensors");
    freelunch::safetensors_io::save(&latents, &[("sample", &g["latents"])]).unwrap();
    let png_out = dir.join("out.png");
    let vae_dir = fixture("vae_sd_like");
    let o = run_cli(&[
        "decode".as_ref(),
        "--vae".as_ref(),
        vae_dir.as_os_str(),
        "--latents".as_ref(),
        latents.as_os_str(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--output".as_ref(),
        png_out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrote"));
    // Two samples side by side (the grid `sample` writes: ⌈√2⌉ = 2 columns).
    let (w, h, bytes) = read_png(&png_out);
    let want = &g["image_u8"];
    let [b, ih, iw, c] = want.shape()[..] else {
        panic!()
    };
    assert_eq!((w as usize, h as usize), (b * iw, ih));
    let mut mismatched = 0;
    for s in 0..b {
        for y in 0..ih {
            for x in 0..iw {
                for ch in 0..c {
                    let got = bytes[(y * w as usize + s * iw + x) * c + ch];
                    let d = want.data()[((s * ih + y) * iw + x) * c + ch] as u8;
                    assert!(got.abs_diff(d) <= 1, "pixel ({s}, {y}, {x}, {ch})");
                    mismatched += usize::from(got != d);
                }
            }
        }
    }
    // image_bytes_match_diffusers bounds where ±1 may happen; here the CLI must agree with it.
    assert!(mismatched <= 2, "{mismatched} bytes off by one");

    // .safetensors: the decoded floats, tiled on request.
    let st_out = dir.join("out.safetensors");
    let tiled_in = dir.join("tiled.safetensors");
    freelunch::safetensors_io::save(&tiled_in, &[("latents", &g["tiled_latents"])]).unwrap();
    let o = run_cli(&[
        "decode".as_ref(),
        "--vae".as_ref(),
        vae_dir.as_os_str(),
        "--latents".as_ref(),
        tiled_in.as_os_str(),
        "--tile".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--output".as_ref(),
        st_out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = common::load_sample(&st_out);
    close("cli tiled decode", &got, &g["tiled_decoded"], TOL);

    // The fp16-only SD3-like folder, with its variant named.
    let sd3_latents = dir.join("sd3.safetensors");
    let g3 = goldens("vae_sd3_like");
    freelunch::safetensors_io::save(&sd3_latents, &[("latents", &g3["latents"])]).unwrap();
    let o = run_cli(&[
        "decode".as_ref(),
        "--vae".as_ref(),
        fixture("vae_sd3_like").as_os_str(),
        "--variant".as_ref(),
        "fp16".as_ref(),
        "--latents".as_ref(),
        sd3_latents.as_os_str(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--output".as_ref(),
        st_out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    close(
        "cli sd3 decode",
        &common::load_sample(&st_out),
        &g3["decoded"],
        TOL,
    );
}

/// The intended use: `freelunch sample` writes latents, `freelunch decode` makes them a picture,
/// the same as the library's decode of those latents.
#[test]
fn cli_sample_then_decode() {
    let dir = scratch("vae-sample-decode");
    let case = fixture("samplers").join("cfg_ddim_sd15");
    let latents = dir.join("latents.safetensors");
    let o = run_cli(&[
        "sample".as_ref(),
        "--model".as_ref(),
        fixture("sd15_like").as_os_str(),
        "--scheduler".as_ref(),
        case.join("scheduler_config.json").as_os_str(),
        "--cond".as_ref(),
        case.join("cond.safetensors").as_os_str(),
        "--steps".as_ref(),
        "2".as_ref(),
        "--batch".as_ref(),
        "1".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--output".as_ref(),
        latents.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let z = common::load_sample(&latents);
    assert_eq!(z.shape()[1], 4);
    let png_out = dir.join("picture.png");
    let o = run_cli(&[
        "decode".as_ref(),
        "--vae".as_ref(),
        fixture("vae_sd_like").as_os_str(),
        "--latents".as_ref(),
        latents.as_os_str(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--output".as_ref(),
        png_out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let image = vae("vae_sd_like")
        .decode_latents(&Exec::cpu(), &z, Tiling::Auto)
        .unwrap();
    let want = &postprocess(&image).unwrap()[0];
    let (w, h, bytes) = read_png(&png_out);
    assert_eq!((h as usize, w as usize), (want.height, want.width));
    assert_eq!(
        (h as usize, w as usize),
        (z.shape()[2] * 2, z.shape()[3] * 2)
    );
    assert_eq!(bytes, want.data);
}

/// Copies the VAE fixture `case` (its `vae/` for a pipeline) into a scratch folder, config
/// edited by `edit`.
fn edited_copy(
    case: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let src = match fixture(case).join("vae") {
        p if p.is_dir() => p,
        _ => fixture(case),
    };
    let dst = scratch(&format!("{case}-edit"));
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    let path = dst.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, v.to_string()).unwrap();
    dst
}

fn load_err(dir: &Path) -> Error {
    match AutoencoderKL::from_pretrained(dir, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn hostile_configs_are_typed_errors() {
    use serde_json::json;
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("norm_num_groups", json!(5), "norm_num_groups"),
        ("norm_num_groups", json!(0), "norm_num_groups"),
        ("block_out_channels", json!([]), "block_out_channels"),
        ("block_out_channels", json!([8, -16]), "block_out_channels"),
        ("layers_per_block", json!(1.5), "layers_per_block"),
        ("scaling_factor", json!(0.0), "scaling_factor"),
        ("scaling_factor", json!("big"), "scaling_factor"),
        ("shift_factor", json!(1e39), "shift_factor"),
        (
            "up_block_types",
            json!(["UpDecoderBlock2D"]),
            "up_block_types",
        ),
        (
            "down_block_types",
            json!(["DownBlock2D", "DownBlock2D"]),
            "down_block_types",
        ),
        ("act_fn", json!("gelu"), "act_fn"),
        ("latents_mean", json!([0.0, 0.0, 0.0, 0.0]), "latents_mean"),
        ("sample_size", json!([16, 32]), "sample_size"),
        ("flux_capacitor", json!(1), "flux_capacitor"),
        ("_class_name", json!("UNet2DModel"), "_class_name"),
        ("use_quant_conv", json!("yes"), "use_quant_conv"),
    ];
    for (field, value, named) in cases {
        let dir = edited_copy("vae_sd_like", |m| {
            m.insert(field.to_string(), value.clone());
        });
        let e = load_err(&dir);
        assert!(
            matches!(e, Error::Config { .. } | Error::Unsupported { .. }),
            "{field} = {value}: {e:?}"
        );
        assert!(e.to_string().contains(named), "{field} = {value}: {e}");
    }
    // Not JSON at all.
    let dir = edited_copy("vae_sd_like", |_| {});
    std::fs::write(
        dir.join("config.json"),
        "{\"_class_name\": \"AutoencoderKL\",",
    )
    .unwrap();
    assert!(matches!(load_err(&dir), Error::Json { .. }));
    // A config that disagrees with the weights: a weight error naming the weight.
    let dir = edited_copy("vae_sd_like", |m| {
        m.insert("latent_channels".into(), json!(8));
    });
    match load_err(&dir) {
        Error::Weight { name, .. } => assert!(name.contains("conv"), "{name}"),
        e => panic!("{e:?}"),
    }
    // A tile smaller than two latents cannot advance: tiling is refused, the whole decode runs.
    let dir = edited_copy("vae_sd_like", |m| {
        m.insert("sample_size".into(), json!(3));
    });
    let small = AutoencoderKL::from_dir(&dir).unwrap();
    let z = Tensor::randn([1, 4, 6, 5], 0);
    match small.decode_latents(&Exec::cpu(), &z, Tiling::Always) {
        Err(Error::Config { msg, .. }) => assert!(msg.contains("sample_size = 3"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        small
            .decode_latents(&Exec::cpu(), &z, Tiling::Auto)
            .unwrap(),
        small
            .decode_latents(&Exec::cpu(), &z, Tiling::Never)
            .unwrap()
    );
    // Direct parsing names its origin.
    let e = AutoencoderKLConfig::from_json_str("[1]", "inline").unwrap_err();
    assert!(e.to_string().contains("inline"), "{e}");
}

#[test]
fn missing_weights_and_folders_are_typed_errors() {
    // A checkpoint without one tensor.
    let dir = edited_copy("vae_sd_like", |_| {});
    let st = dir.join("diffusion_pytorch_model.safetensors");
    let mut tensors: BTreeMap<String, Tensor> = freelunch::safetensors_io::load(&st)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.tensor))
        .collect();
    let gone = "decoder.up_blocks.1.resnets.1.conv2.weight";
    assert!(tensors.remove(gone).is_some());
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    freelunch::safetensors_io::save(&st, &named).unwrap();
    match load_err(&dir) {
        Error::MissingWeight(name) => assert_eq!(name, gone),
        e => panic!("{e:?}"),
    }
    // A non-finite weight.
    let mut bad = tensors.clone();
    bad.get_mut("decoder.conv_in.bias").unwrap().data_mut()[1] = f32::NAN;
    bad.insert(gone.into(), Tensor::randn([8, 8, 3, 3], 1));
    let named: Vec<(&str, &Tensor)> = bad.iter().map(|(k, v)| (k.as_str(), v)).collect();
    freelunch::safetensors_io::save(&st, &named).unwrap();
    match load_err(&dir) {
        Error::Weight { name, msg } => {
            assert_eq!(name, "decoder.conv_in.bias", "{msg}")
        }
        e => panic!("{e:?}"),
    }
    // A pipeline folder without vae/, and a folder that is no model.
    let p = scratch("vae-pipeline-novae");
    std::fs::write(p.join("model_index.json"), "{}").unwrap();
    let e = load_err(&p);
    assert!(
        matches!(e, Error::Input { .. }) && e.to_string().contains("vae/"),
        "{e}"
    );
    let empty = scratch("vae-empty");
    let e = load_err(&empty);
    assert!(e.to_string().contains("config.json"), "{e}");
}

#[test]
fn hostile_latents_are_typed_errors() {
    let vae = vae("vae_sd_like");
    let bad_latents = [
        (Tensor::randn([1, 3, 6, 6], 0), "3 channels"),
        (Tensor::randn([4, 6, 6], 0), "rank 4"),
        (Tensor::randn([0, 4, 6, 6], 0), "empty"),
    ];
    for (z, says) in bad_latents {
        for tiling in [Tiling::Auto, Tiling::Always, Tiling::Never] {
            match vae.decode_latents(&Exec::cpu(), &z, tiling) {
                Err(Error::Input { name, msg }) => {
                    assert_eq!(name, "latents");
                    assert!(msg.contains(says), "{msg}");
                }
                other => panic!("{:?}: {other:?}", z.shape()),
            }
        }
    }
    for v in [f32::NAN, f32::INFINITY] {
        let mut z = Tensor::randn([1, 4, 6, 6], 0);
        z.data_mut()[37] = v;
        match vae.decode_latents(&Exec::cpu(), &z, Tiling::Auto) {
            Err(Error::Input { name, msg }) => {
                assert_eq!(name, "latents");
                assert!(msg.contains("37") || msg.contains("[0, 1, 0, 1]"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Finite, but so large that the decoder overflows: the error names the first module.
    let mut z = Tensor::randn([1, 4, 6, 6], 0);
    z.data_mut().iter_mut().for_each(|v| *v *= 1e37);
    match vae.decode_latents(&Exec::cpu(), &z, Tiling::Auto) {
        Err(Error::NonFinite { at, msg }) => {
            assert!(
                at == "post_quant_conv" || at.starts_with("decoder."),
                "{at}: {msg}"
            );
            assert!(msg.contains(&at), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    // Finite, but overflowing once divided by scaling_factor.
    let mut z = Tensor::randn([1, 4, 6, 6], 0);
    z.data_mut()[0] = 3e38;
    assert!(matches!(
        vae.decode_latents(&Exec::cpu(), &z, Tiling::Auto),
        Err(Error::Input { .. })
    ));
    // An image of the wrong channel count to encode.
    assert!(matches!(
        vae.encode(&Exec::cpu(), &Tensor::randn([1, 4, 8, 8], 0)),
        Err(Error::Input { .. })
    ));
    // Sizes that overflow are refused too.
    assert!(matches!(
        vae.config.plan_decode(usize::MAX, 1 << 20, 1 << 20),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn hostile_cli_decode() {
    let dir = scratch("vae-cli-hostile");
    let vae_dir = fixture("vae_sd_like");
    let lat = dir.join("lat.safetensors");
    let mut z = Tensor::randn([1, 4, 6, 6], 3);
    z.data_mut()[5] = f32::NAN;
    freelunch::safetensors_io::save(&lat, &[("sample", &z)]).unwrap();
    let wrong = dir.join("wrong.safetensors");
    freelunch::safetensors_io::save(&wrong, &[("noise", &Tensor::randn([1, 4, 6, 6], 3))]).unwrap();
    let out = dir.join("o.png");
    let absent = dir.join("absent.safetensors");
    let cases: Vec<(Vec<&std::ffi::OsStr>, &str)> = vec![
        (vec![lat.as_os_str()], "latents"),
        (vec![wrong.as_os_str()], "no tensor `latents` or `sample`"),
        (vec![absent.as_os_str()], "absent.safetensors"),
    ];
    for (latents, says) in cases {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "decode".as_ref(),
            "--vae".as_ref(),
            vae_dir.as_os_str(),
            "--device".as_ref(),
            "cpu".as_ref(),
            "--output".as_ref(),
            out.as_os_str(),
            "--latents".as_ref(),
        ];
        args.extend(latents);
        let o = run_cli(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(err.contains(says), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists());
    }
    // Memory (capped for the child process only): a whole decode that cannot fit is refused
    // before it allocates; by default the same latents decode in tiles, which fit.
    let big = dir.join("big.safetensors");
    freelunch::safetensors_io::save(&big, &[("latents", &Tensor::randn([1, 4, 64, 64], 4))])
        .unwrap();
    let capped = |extra: &[&str]| {
        Command::new(freelunch_bin())
            .env("FREELUNCH_HOST_MEMORY_MB", "1")
            .args(["decode", "--device", "cpu", "--vae"])
            .arg(&vae_dir)
            .arg("--latents")
            .arg(&big)
            .arg("--output")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = capped(&["--no-tile"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("GiB available"),
        "{err}"
    );
    assert!(!out.exists());
    let o = capped(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (w, h, _) = read_png(&out);
    assert_eq!((w, h), (128, 128));
    std::fs::remove_file(&out).unwrap();
    // The output may not overwrite an input, and must be .png or .safetensors.
    for (output, says) in [
        (lat.as_os_str(), "lat.safetensors"),
        ("x.jpg".as_ref(), ".png"),
    ] {
        let o = run_cli(&[
            "decode".as_ref(),
            "--vae".as_ref(),
            vae_dir.as_os_str(),
            "--latents".as_ref(),
            lat.as_os_str(),
            "--output".as_ref(),
            output,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{err}");
    }
}

/// The CUDA backend against the CPU: whole and tiled decodes, and the encoder, f32 within 1e-4
/// (f16 and bf16 within their tolerances on the decode).
#[test]
fn gpu_decode_matches_cpu() {
    for (dtype, gpu) in gpus("gpu_decode_matches_cpu") {
        for case in CASES {
            let g = goldens(case);
            let vae = vae(case);
            let z = vae.unscale_latents(&g["latents"]).unwrap();
            let want = vae.decode_on(&Cpu, &z).unwrap();
            let got = vae.decode_on(gpu.as_ref(), &z).unwrap();
            let err = compare(gpu, &format!("{case} decode"), &got, &want)
                .unwrap_or_else(|e| panic!("{e}"));
            println!("{case} decode {dtype:?}: rel L2 {err:.2e} against the CPU");
            if *dtype != DType::F32 {
                continue;
            }
            let exec = Exec::Cuda(gpu.clone());
            let tz = vae.unscale_latents(&g["tiled_latents"]).unwrap();
            let tiled = vae.tiled_decode(&exec, &tz).unwrap();
            let err = tiled.rel_l2(&vae.tiled_decode(&Exec::cpu(), &tz).unwrap());
            assert!(err <= 1e-4, "{case} tiled: {err:.2e}");
            println!("{case} tiled decode f32: rel L2 {err:.2e} against the CPU");
            let params = vae.encode_on(gpu.as_ref(), &g["pixels"]).unwrap();
            let want = vae.encode_on(&Cpu, &g["pixels"]).unwrap();
            let err = compare(gpu, &format!("{case} encode"), &params, &want)
                .unwrap_or_else(|e| panic!("{e}"));
            println!("{case} encode f32: rel L2 {err:.2e} against the CPU");
            let dist = vae.encode(&exec, &g["pixels"]).unwrap();
            assert!(dist.mean.rel_l2(&g["encode_mean"]) < 1e-4);
        }
    }
    // `freelunch decode` on the executor: --dtype f16 of a force_upcast VAE decodes in f32, as
    // diffusers' pipelines do, so it meets the f32 tolerance.
    if std::env::var("FREELUNCH_DEVICE").is_ok_and(|d| d.starts_with("emu")) {
        let dir = scratch("vae-emu-cli");
        let g = goldens("vae_sd_like");
        let latents = dir.join("latents.safetensors");
        freelunch::safetensors_io::save(&latents, &[("latents", &g["latents"])]).unwrap();
        let out = dir.join("out.safetensors");
        let o = run_cli(&[
            "decode".as_ref(),
            "--vae".as_ref(),
            fixture("vae_sd_like").as_os_str(),
            "--latents".as_ref(),
            latents.as_os_str(),
            "--device".as_ref(),
            "emu".as_ref(),
            "--dtype".as_ref(),
            "f16".as_ref(),
            "--output".as_ref(),
            out.as_os_str(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(err.contains("force_upcast"), "{err}");
        close(
            "emu cli decode",
            &common::load_sample(&out),
            &g["decoded"],
            1e-4,
        );
        // No force_upcast: f16 it is, from the fp16 weights kept as stored.
        let g = goldens("vae_sd3_like");
        freelunch::safetensors_io::save(&latents, &[("latents", &g["latents"])]).unwrap();
        let o = run_cli(&[
            "decode".as_ref(),
            "--vae".as_ref(),
            fixture("vae_sd3_like").as_os_str(),
            "--latents".as_ref(),
            latents.as_os_str(),
            "--device".as_ref(),
            "emu".as_ref(),
            "--dtype".as_ref(),
            "f16".as_ref(),
            "--output".as_ref(),
            out.as_os_str(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && !err.contains("force_upcast"), "{err}");
        let got = common::load_sample(&out);
        let e = got.rel_l2(&g["decoded"]);
        assert!(e > 1e-5 && e <= 1e-2, "emu cli f16 decode: rel L2 {e:.2e}");
        println!("emu cli f16 decode: rel L2 {e:.2e}");
    }
}

/// Full-size VAEs (SD's four levels up to 512 channels; SD3/Flux's 16 latent channels without
/// quant convs): the loader takes exactly diffusers' state dict, every name and shape, none
/// left over; and so for the fixtures' checkpoints.
#[test]
fn loader_takes_exactly_diffusers_state_dict() {
    let path = fixture("vae_layouts.json");
    let layouts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (name, layout) in layouts.as_object().unwrap() {
        let config =
            AutoencoderKLConfig::from_json_str(&layout["config"].to_string(), name).unwrap();
        let tensors: BTreeMap<String, Tensor> = layout["weights"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, shape)| {
                let shape: Vec<usize> = serde_json::from_value(shape.clone()).unwrap();
                (k.clone(), Tensor::zeros(shape))
            })
            .collect();
        let count = tensors.len();
        assert!(count > 200, "{name}: {count} weights");
        let mut ckpt = freelunch::weights::Checkpoint::from_tensors(tensors);
        let vae = AutoencoderKL::load(config, &mut ckpt).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ckpt.remaining(), Vec::<String>::new(), "{name}: left over");
        assert_eq!(vae.decoder.up_blocks.len(), 4);
        assert_eq!(
            vae.config.tile_latent_min_size() * 8,
            vae.config.sample_size
        );
    }
    for case in CASES {
        let opts = LoadOptions::default();
        let files = AutoencoderKL::files(&fixture(case), &opts).unwrap();
        let config = AutoencoderKLConfig::from_file(&files.config).unwrap();
        let mut ckpt = freelunch::weights::Checkpoint::load(&files.weights).unwrap();
        AutoencoderKL::load(config, &mut ckpt).unwrap();
        assert_eq!(ckpt.remaining(), Vec::<String>::new(), "{case}: left over");
    }
}

/// The mid block's attention at a full-size VAE's width: one head of 512 channels (SD's and
/// SDXL's), which the fixtures' narrow heads do not reach; the CUDA backend against the CPU.
#[test]
fn gpu_full_width_vae_attention() {
    use freelunch::models::attention_processor::{Attention, AttentionSpec};
    use freelunch::nn::LayerCtx;
    let mut ws = freelunch::weights::RandomWeights::new(7);
    let spec = AttentionSpec {
        query_dim: 512,
        context_dim: 512,
        heads: 1,
        dim_head: 512,
        qkv_bias: true,
        group_norm: Some((32, 1e-6)),
        rescale_output_factor: 1.0,
    };
    let attn = Attention::load(&mut ws, "decoder.mid_block.attentions.0", spec).unwrap();
    let x = Tensor::randn([1, 512, 8, 6], 3);
    let want = attn.forward_spatial(&Cpu, &x, LayerCtx::default()).unwrap();
    assert!(want.rel_l2(&x) > 1e-2, "the attention changes its input");
    for (dtype, gpu) in gpus("gpu_full_width_vae_attention") {
        let xg = gpu.upload(&x).unwrap();
        let got = attn
            .forward_spatial(gpu.as_ref(), &xg, LayerCtx::default())
            .unwrap();
        let err = compare(gpu, "512-wide attention", &got, &want).unwrap_or_else(|e| panic!("{e}"));
        println!("512-wide VAE attention {dtype:?}: rel L2 {err:.2e} against the CPU");
    }
}
