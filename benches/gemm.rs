//! The CPU matrix product: the crate's own AVX-512 kernel (`cpu::gemm_avx512`) against the `gemm`
//! crate it replaced, interleaved (own, crate, own, …) so machine drift hits both alike, on the
//! products of the SD1.5 and DDPM-CIFAR10 U-Nets: linear layers (`x·Wᵀ`, the weight read
//! transposed) and the 3×3 / 1×1 convolutions of 32×32 and 64×64 images on the GEMM path (the
//! direct kernel off). A bench binary (no criterion); medians of FREELUNCH_REPS (default 7).
//!
//! `FREELUNCH_THREADS=2 cargo bench --bench gemm`; shapes: FREELUNCH_BENCH_LINEAR as
//! `rows,in,out;...`, FREELUNCH_BENCH_CONV as `B,Cin,Cout,HW,k;...`.

mod common;

use common::{median, spec};

use std::time::Instant;

use freelunch::backend::cpu::{self, conv_direct, gemm, Padding};
use freelunch::Tensor;

/// Median seconds of `f` with the own kernel and with the crate's, interleaved.
fn compare(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut time = |own: bool| {
        gemm::set_own_enabled(own);
        let t0 = Instant::now();
        f();
        t0.elapsed().as_secs_f64()
    };
    time(true);
    time(false);
    let (mut to, mut tc) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        to.push(time(true));
        tc.push(time(false));
    }
    gemm::set_own_enabled(true);
    (median(to), median(tc))
}

fn row(what: String, flop: f64, (to, tc): (f64, f64)) {
    println!(
        "| {what} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} |",
        to * 1e3,
        flop / to * 1e-9,
        tc * 1e3,
        flop / tc * 1e-9,
        to / tc
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !gemm::set_own_enabled(true) {
        println!("skipped: no AVX-512F (the own kernel does not run here)");
        return;
    }
    let pool = common::pool();
    let reps: usize = std::env::var("FREELUNCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    println!("threads: {}", common::threads());
    println!("| product | own ms | GFLOP/s | gemm crate ms | GFLOP/s | own ÷ crate |");
    println!("|---|---|---|---|---|---|");
    let linear = "8192,320,320;8192,320,2560;8192,1280,320;2048,640,5120;512,1280,1280;154,768,320;2,1280,1280";
    for s in spec("FREELUNCH_BENCH_LINEAR", linear) {
        let (rows, fin, fout) = (s[0], s[1], s[2]);
        let x = Tensor::randn([rows, fin], 0);
        let w = Tensor::randn([fout, fin], 1);
        let t = compare(reps, || {
            std::hint::black_box(pool.install(|| cpu::linear(&x, &w, None)));
        });
        row(
            format!("linear {rows}×{fin}→{fout}"),
            (2 * rows * fin * fout) as f64,
            t,
        );
    }
    // The same products into a buffer kept across calls (as a workspace keeps a forward's
    // outputs): no first-touch page faults in the timing.
    for s in spec("FREELUNCH_BENCH_LINEAR", linear) {
        let (rows, fin, fout) = (s[0], s[1], s[2]);
        let x = Tensor::randn([rows, fin], 0);
        let w = Tensor::randn([fout, fin], 1);
        let mut y = vec![0f32; rows * fout];
        let t = compare(reps, || {
            pool.install(|| {
                gemm::sgemm(
                    rows,
                    fout,
                    fin,
                    x.data(),
                    gemm::Mat::row_major(0, fin),
                    w.data(),
                    gemm::Mat::transposed(0, fin),
                    &mut y,
                    gemm::Mat::row_major(0, fout),
                    false,
                    1.0,
                    gemm::Threads::Pool,
                    gemm::Precision::F32,
                )
            });
            std::hint::black_box(&y);
        });
        row(
            format!("x·Wᵀ into a kept buffer {rows}×{fin}→{fout}"),
            (2 * rows * fin * fout) as f64,
            t,
        );
    }
    let conv = "8,128,128,32,3;8,256,256,32,1;2,320,320,64,3;2,640,640,32,3;2,320,320,64,1";
    let direct = conv_direct::set_enabled(false);
    for s in spec("FREELUNCH_BENCH_CONV", conv) {
        let (b, cin, cout, hw, k) = (s[0], s[1], s[2], s[3], s[4]);
        let x = Tensor::randn([b, cin, hw, hw], 0);
        let w = Tensor::randn([cout, cin, k, k], 1);
        let bias = vec![0.1f32; cout];
        let t = compare(reps, || {
            let y = pool.install(|| cpu::conv2d(&x, &w, Some(&bias), 1, Padding::same(k / 2)));
            std::hint::black_box(y);
        });
        let flop = (2 * b * cout * hw * hw * cin * k * k) as f64;
        row(format!("conv b{b} {cin}→{cout} {hw}×{hw} k{k}"), flop, t);
    }
    conv_direct::set_enabled(direct);
}
