//! The CPU's bf16 products (`cpu::gemm_bf16`, AMX tiles) against its f32 ones on the same
//! operands, interleaved (f32, bf16, f32, …) so machine drift hits both alike: linear layers of
//! the SD1.5 U-Net and the 3×3 / 1×1 convolutions of DDPM-CIFAR10 and SD1.5 through the layer
//! functions the backend calls (`try_conv2d_layer` with packed weights kept, else `try_conv2d_in`;
//! `try_linear_layer`), so each side takes the kernel the backend would. A bench binary (no
//! criterion); medians of FREELUNCH_REPS (default 7).
//!
//! `FREELUNCH_THREADS=2 cargo bench --bench gemm_bf16`; shapes: FREELUNCH_BENCH_LINEAR as
//! `rows,in,out;...`, FREELUNCH_BENCH_CONV as `B,Cin,Cout,HW,k;...`.

mod common;

use common::{median, spec};

use std::time::Instant;

use freelunch::backend::cpu::gemm::{bf16_available, Precision};
use freelunch::backend::cpu::{conv, masked, Padding};
use freelunch::workspace::Workspace;
use freelunch::Tensor;

/// Median seconds of `f(F32)` and `f(Bf16)`, interleaved, each side in a workspace of its own
/// (as a forward runs, so outputs reuse memory rather than fault in fresh pages every call).
fn compare(pool: &rayon::ThreadPool, reps: usize, f: impl Fn(Precision) + Sync) -> (f64, f64) {
    let spaces = [Workspace::new(), Workspace::new()];
    let time = |p: Precision| {
        let t0 = Instant::now();
        pool.install(|| spaces[(p == Precision::Bf16) as usize].scope(|| f(p)));
        t0.elapsed().as_secs_f64()
    };
    time(Precision::F32);
    time(Precision::Bf16);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        a.push(time(Precision::F32));
        b.push(time(Precision::Bf16));
    }
    (median(a), median(b))
}

fn row(what: String, flop: f64, (tf, tb): (f64, f64)) {
    println!(
        "| {what} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} |",
        tf * 1e3,
        flop / tf * 1e-9,
        tb * 1e3,
        flop / tb * 1e-9,
        tb / tf
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !bf16_available() {
        println!("skipped: no AMX-BF16 here (the bf16 product does not run)");
        return;
    }
    let pool = common::pool();
    let reps: usize = std::env::var("FREELUNCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    println!("threads: {}", common::threads());
    println!("| product | f32 ms | GFLOP/s | bf16 ms | GFLOP/s | bf16 ÷ f32 |");
    println!("|---|---|---|---|---|---|");
    let linear = "8192,320,320;8192,320,2560;8192,1280,320;2048,640,5120;512,1280,1280;154,768,320";
    for s in spec("FREELUNCH_BENCH_LINEAR", linear) {
        let (rows, fin, fout) = (s[0], s[1], s[2]);
        let x = Tensor::randn([1, rows, fin], 0);
        let w = Tensor::randn([fout, fin], 1);
        let flop = 2.0 * (rows * fin * fout) as f64;
        // As the backend runs a dense layer: packed weights kept under the layer's uid.
        let uid = u64::MAX / 2 - (rows * fin * fout) as u64;
        let t = compare(&pool, reps, |p| {
            masked::try_linear_layer(&x, &w, None, None, p, uid).unwrap();
        });
        row(format!("linear {rows}×{fin}→{fout}"), flop, t);
    }
    let convs = "8,128,128,32,3;8,256,256,16,3;8,256,256,8,3;8,128,256,32,1;2,320,320,64,3;2,640,640,32,3;2,1280,1280,16,3;2,320,320,64,1";
    for s in spec("FREELUNCH_BENCH_CONV", convs) {
        let (b, cin, cout, hw, k) = (s[0], s[1], s[2], s[3], s[4]);
        let x = Tensor::randn([b, cin, hw, hw], 2);
        let w = Tensor::randn([cout, cin, k, k], 3);
        let pad = Padding::same(k / 2);
        let flop = 2.0 * (b * cout * hw * hw * cin * k * k) as f64;
        // As the backend runs a dense layer: packed weights kept under the layer's uid.
        let uid = u64::MAX - (b * cin * cout * hw * k) as u64;
        let t = compare(&pool, reps, |p| {
            conv::try_conv2d_layer(&x, &w, None, 1, pad, uid, p)
                .unwrap_or_else(|| conv::try_conv2d_in(&x, &w, None, 1, pad, None, p))
                .unwrap();
        });
        row(format!("conv {k}×{k} {cin}→{cout} @{hw}² ×{b}"), flop, t);
    }
}
