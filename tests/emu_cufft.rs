//! The cuFFT stand-in of the PTX executor through cudarc, as the CUDA backend calls it: a batched
//! 2-D R2C plan writes cuFFT's packed half spectrum (checked against a direct DFT on the host),
//! C2R is the unnormalised inverse (C2R(R2C(x)) = H·W·x), and a C2R leaves its input overwritten
//! with NaN, as cuFFT may overwrite it.

use std::sync::Arc;

use cudarc::cufft::sys::{cufftType, float2};
use cudarc::cufft::CudaFft;
use freelunch::backend::cuda::Gpu;
use freelunch::device::DType;
use freelunch::Tensor;

fn gpu() -> Arc<Gpu> {
    Arc::new(
        Gpu::emulated(0, DType::F32).expect("the PTX executor (cargo build --release --workspace)"),
    )
}

#[test]
fn r2c_is_the_packed_dft_and_c2r_the_unnormalised_inverse_that_spoils_its_input() {
    let gpu = gpu();
    let stream = gpu.stream().clone();
    let (batch, h, w) = (3usize, 6usize, 5usize);
    let wh = w / 2 + 1;
    let x = Tensor::randn([batch, h, w], 5);
    let plan = |kind| {
        CudaFft::plan_many(
            &[h as i32, w as i32],
            None,
            1,
            0,
            None,
            1,
            0,
            kind,
            batch as i32,
            stream.clone(),
        )
        .expect("plan")
    };
    let (r2c, c2r) = (plan(cufftType::CUFFT_R2C), plan(cufftType::CUFFT_C2R));
    let real = stream.clone_htod(x.data()).unwrap();
    let mut spec = stream.alloc_zeros::<float2>(batch * h * wh).unwrap();
    r2c.exec_r2c(&real, &mut spec).unwrap();
    let got = stream.clone_dtoh(&spec).unwrap();
    // X[b, u, v] = Σ x[b, y, x] e^{-2πi (u y / h + v x / w)}, for v in 0..w/2+1.
    let mut worst = 0f64;
    for b in 0..batch {
        for u in 0..h {
            for v in 0..wh {
                let (mut re, mut im) = (0f64, 0f64);
                for yy in 0..h {
                    for xx in 0..w {
                        let t = -2.0
                            * std::f64::consts::PI
                            * ((u * yy) as f64 / h as f64 + (v * xx) as f64 / w as f64);
                        let val = x.data()[(b * h + yy) * w + xx] as f64;
                        re += val * t.cos();
                        im += val * t.sin();
                    }
                }
                let g = got[(b * h + u) * wh + v];
                worst = worst
                    .max((g.x as f64 - re).abs())
                    .max((g.y as f64 - im).abs());
            }
        }
    }
    assert!(worst < 1e-4, "R2C differs from the DFT by {worst}");
    let mut back = stream.alloc_zeros::<f32>(batch * h * w).unwrap();
    c2r.exec_c2r(&mut spec, &mut back).unwrap();
    let back = stream.clone_dtoh(&back).unwrap();
    let n = (h * w) as f32;
    for (i, (a, b)) in back.iter().zip(x.data()).enumerate() {
        assert!(
            (a / n - b).abs() < 1e-5,
            "element {i}: C2R(R2C(x))/HW = {} vs {b}",
            a / n
        );
    }
    let spoiled = stream.clone_dtoh(&spec).unwrap();
    assert!(
        spoiled
            .iter()
            .all(|c| c.x.to_bits() == u32::MAX && c.y.to_bits() == u32::MAX),
        "the C2R input should be overwritten (all-ones bytes)"
    );
}

#[test]
fn a_transform_of_memory_nothing_wrote_fails() {
    let gpu = gpu();
    let stream = gpu.stream().clone();
    let r2c = CudaFft::plan_many(
        &[4, 4],
        None,
        1,
        0,
        None,
        1,
        0,
        cufftType::CUFFT_R2C,
        1,
        stream.clone(),
    )
    .unwrap();
    // SAFETY: deliberately uninitialised, which the stand-in must refuse.
    let real = unsafe { stream.alloc::<f32>(16) }.unwrap();
    let mut spec = stream.alloc_zeros::<float2>(4 * 3).unwrap();
    assert!(r2c.exec_r2c(&real, &mut spec).is_err());
}
