//! The 3×3 convolutions of the DDPM-CIFAR10 and SD1.5 U-Nets in GFLOP/s against the
//! machine's measured FMA peak: a register-only AVX-512 FMA loop (the upper bound of any f32
//! kernel here) on one thread and on the pool (and, where the CPU has AMX, the tile unit's bf16
//! peak the same way: `tdpbf16ps` on registers), then each convolution shape on the direct
//! AVX-512 path (`cpu::conv_direct`) and on the GEMM path, interleaved (direct, GEMM, direct, …)
//! so machine drift hits both alike. A bench binary (no criterion); medians of
//! FREELUNCH_REPS (default 7).
//!
//! `FREELUNCH_THREADS=2 cargo bench --bench conv_peak`; shapes: FREELUNCH_BENCH_CONV as
//! `B,Cin,Cout,HW,k;...`.

mod common;

use common::median;

use std::time::Instant;

use freelunch::backend::cpu::{self, conv_direct, Padding};
use freelunch::Tensor;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    // 24 independent chains: enough to cover the FMA latency on both ports.
    let mut acc = [_mm512_set1_ps(0.0); 24];
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for r in acc {
        s = _mm512_add_ps(s, r);
    }
    _mm512_reduce_add_ps(s)
}

/// GFLOP/s of `fma_loop` on `threads` threads at once.
fn peak(pool: &rayon::ThreadPool, threads: usize) -> f64 {
    let iters = 20_000_000;
    let t0 = Instant::now();
    let sink: f32 = pool.install(|| {
        (0..threads)
            .into_par_iter()
            // SAFETY: only called where AVX-512F was detected (checked in main).
            .map(|_| unsafe { fma_loop(iters) })
            .sum()
    });
    std::hint::black_box(sink);
    (threads * iters * 24 * 16 * 2) as f64 / t0.elapsed().as_secs_f64() * 1e-9
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !std::arch::is_x86_feature_detected!("avx512f") {
        println!("skipped: no AVX-512F");
        return;
    }
    let threads = common::threads();
    let pool = common::pool();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let reps: usize = std::env::var("FREELUNCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let p1 = median((0..3).map(|_| peak(&one, 1)).collect());
    let pn = median((0..3).map(|_| peak(&pool, threads)).collect());
    println!("FMA peak: {p1:.1} GFLOP/s on 1 thread, {pn:.1} GFLOP/s on {threads}");
    if freelunch::backend::cpu::gemm::bf16_available() {
        let tiles = |pool: &rayon::ThreadPool, threads: usize| {
            let t0 = Instant::now();
            let flop: f64 = pool.install(|| {
                (0..threads)
                    .into_par_iter()
                    .map(|_| freelunch::backend::cpu::gemm::bf16_peak_loop(2_000_000).unwrap())
                    .sum()
            });
            flop / t0.elapsed().as_secs_f64() * 1e-9
        };
        let t1 = median((0..3).map(|_| tiles(&one, 1)).collect());
        let tn = median((0..3).map(|_| tiles(&pool, threads)).collect());
        println!("AMX bf16 peak: {t1:.0} GFLOP/s on 1 thread, {tn:.0} GFLOP/s on {threads}");
    }
    let default = "8,128,128,32,3;8,256,256,16,3;8,256,256,8,3;8,256,256,4,3;8,384,128,32,3;\
                   2,320,320,64,3;2,640,640,32,3;2,1280,1280,16,3;2,1280,1280,8,3;";
    let spec = std::env::var("FREELUNCH_BENCH_CONV").unwrap_or_else(|_| default.to_string());
    println!("| conv | direct ms | GFLOP/s | % of peak | GEMM ms | GFLOP/s | direct ÷ GEMM |");
    println!("|---|---|---|---|---|---|---|");
    for s in spec.split(';').filter(|s| !s.trim().is_empty()) {
        let d: Vec<usize> = s.split(',').map(|v| v.trim().parse().unwrap()).collect();
        let (b, cin, cout, hw, k) = (d[0], d[1], d[2], d[3], d[4]);
        let x = Tensor::randn([b, cin, hw, hw], 0);
        let w = Tensor::randn([cout, cin, k, k], 1);
        let bias = vec![0.1f32; cout];
        let flop = (2 * b * cout * hw * hw * cin * k * k) as f64;
        // The direct column forces the direct kernel (whatever `conv_direct::takes` routes).
        let run = |direct: bool| {
            conv_direct::set_enabled(direct);
            let t0 = Instant::now();
            let y = pool.install(|| cpu::conv2d(&x, &w, Some(&bias), 1, Padding::same(k / 2)));
            std::hint::black_box(y);
            t0.elapsed().as_secs_f64()
        };
        run(true);
        run(false);
        let (mut td, mut tg) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            td.push(run(true));
            tg.push(run(false));
        }
        let (td, tg) = (median(td), median(tg));
        println!(
            "| b{b} {cin}→{cout} {hw}×{hw} k{k} | {:.2} | {:.0} | {:.0}% | {:.2} | {:.0} | {:.2} |",
            td * 1e3,
            flop / td * 1e-9,
            100.0 * flop / td * 1e-9 / pn,
            tg * 1e3,
            flop / tg * 1e-9,
            td / tg
        );
    }
    conv_direct::set_enabled(true);
}
