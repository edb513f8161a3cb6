//! Mutation tests of the PTX executor's checks: copies of our kernels with a barrier removed, a
//! fragment's halves swapped, or a bound off by one, compiled with NVRTC and run through the
//! unchanged CUDA backend on the executor. Each mutant must be caught: the barrier and bound
//! mutants by one of the executor's checks (a race, an uninitialised read, an out-of-bounds
//! access, reported with the kernel and its `kernels/*.cu` line), the others by a wrong result
//! against the CPU reference. The same sources unmutated, compiled the same way, must pass: that
//! is the control that makes every failure meaningful.
//!
//! Needs the executor's libraries (built with the workspace) and NVRTC (`tools/cuda_toolchain.sh`);
//! without NVRTC it prints that it skipped, unless `FREELUNCH_REQUIRE_CUDA_TOOLS=1` (the test
//! command sets it), where it fails.

mod common;

use common::gpu::compare;
use freelunch::backend::cpu::fourier::FilterForm;
use freelunch::backend::cpu::Padding;
use freelunch::backend::cuda::kernels::SOURCES;
use freelunch::backend::cuda::Gpu;
use freelunch::backend::{Backend, Cpu, Epilogue};
use freelunch::device::DType;
use freelunch::nn::{fresh_uid, Conv2d, LayerCtx};
use freelunch::Tensor;

/// What must happen to a mutant.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Caught {
    /// An executor check fires: the error names one of these words and the kernel file.
    ByCheck(&'static [&'static str]),
    /// The result differs from the CPU (or the run fails).
    ByResult,
}

struct Mutant {
    name: &'static str,
    stem: &'static str,
    find: &'static str,
    replace: &'static str,
    dtype: DType,
    op: fn(&Gpu) -> Result<(), String>,
    caught: Caught,
}

const RACE: &[&str] = &["data race", "uninitialised"];
/// A bound off by one lands past the allocation, or on a neighbouring sample's bytes that
/// another block writes.
const BOUNDS: &[&str] = &["out-of-bounds", "data race between blocks"];

/// A 3×3 convolution with K = 9·Cin spanning several 32-wide k-tiles, two samples, ragged M.
fn conv(gpu: &Gpu) -> Result<(), String> {
    let (b, cin, cout, h, w) = (2, 16, 24, 6, 5);
    let conv = Conv2d {
        uid: fresh_uid(),
        name: "conv.weight".into(),
        weight: Tensor::randn([cout, cin, 3, 3], 11),
        bias: Some(Tensor::randn([cout], 12)),
        stride: 1,
        padding: Padding {
            top: 1,
            bottom: 1,
            left: 1,
            right: 1,
        },
    };
    let x = Tensor::randn([b, cin, h, w], 13);
    let lc = LayerCtx {
        masks: None,
        step: 0,
    };
    let want = Cpu
        .conv2d(conv.params(lc), &x, Epilogue::default())
        .unwrap();
    let gx = gpu.upload(&x).map_err(|e| e.to_string())?;
    let got = gpu
        .conv2d(conv.params(lc), &gx, Epilogue::default())
        .map_err(|e| e.to_string())?;
    compare(gpu, "conv2d", &got, &want).map(drop)
}

/// Attention with a key count that is not a multiple of any tile, so the last tile is partial.
fn attention(gpu: &Gpu) -> Result<(), String> {
    let (b, nq, nk, heads, d) = (2, 20, 37, 2, 64);
    let q = Tensor::randn([b, nq, heads * d], 21);
    let k = Tensor::randn([b, nk, heads * d], 22);
    let v = Tensor::randn([b, nk, heads * d], 23);
    let scale = 1.0 / (d as f32).sqrt();
    let want = Cpu.attention(&q, &k, &v, heads, scale).unwrap();
    let up = |t: &Tensor| gpu.upload(t).map_err(|e| e.to_string());
    let got = gpu
        .attention(&up(&q)?, &up(&k)?, &up(&v)?, heads, scale)
        .map_err(|e| e.to_string())?;
    compare(gpu, "attention", &got, &want).map(drop)
}

/// Causal self-attention over more keys than one tile of either form holds (77, CLIP's length).
fn causal_attention(gpu: &Gpu) -> Result<(), String> {
    let (b, n, heads, d) = (1, 77, 2, 64);
    let q = Tensor::randn([b, n, heads * d], 24);
    let k = Tensor::randn([b, n, heads * d], 25);
    let v = Tensor::randn([b, n, heads * d], 26);
    let scale = 1.0 / (d as f32).sqrt();
    let want = Cpu.causal_attention(&q, &k, &v, heads, scale).unwrap();
    let up = |t: &Tensor| gpu.upload(t).map_err(|e| e.to_string());
    let got = gpu
        .causal_attention(&up(&q)?, &up(&k)?, &up(&v)?, heads, scale)
        .map_err(|e| e.to_string())?;
    compare(gpu, "causal attention", &got, &want).map(drop)
}

/// FreeU's direct (FFT-free) skip filter.
fn fourier(gpu: &Gpu) -> Result<(), String> {
    let x = Tensor::randn([2, 40, 8, 6], 31);
    let want = Cpu.fourier_filter(&x, 1, 0.5, FilterForm::Direct).unwrap();
    let gx = gpu.upload(&x).map_err(|e| e.to_string())?;
    let got = gpu
        .fourier_filter(&gx, 1, 0.5, FilterForm::Direct)
        .map_err(|e| e.to_string())?;
    compare(gpu, "fourier_filter", &got, &want).map(drop)
}

const MUTANTS: &[Mutant] = &[
    Mutant {
        name: "gemm (tensor cores): the barrier after staging the next k-tile removed",
        stem: "gemm",
        find: "bf[j][0], bf[j][1]);\n        }\n        if (kt + 1 < ktiles) stage(buf ^ 1);\n        __syncthreads();",
        replace: "bf[j][0], bf[j][1]);\n        }\n        if (kt + 1 < ktiles) stage(buf ^ 1);",
        dtype: DType::F16,
        op: conv,
        caught: Caught::ByCheck(RACE),
    },
    Mutant {
        name: "gemm (tensor cores): B fragment halves swapped",
        stem: "gemm",
        find: "bf[2 * j][0] = r[0];\n                bf[2 * j][1] = r[1];",
        replace: "bf[2 * j][0] = r[1];\n                bf[2 * j][1] = r[0];",
        dtype: DType::F16,
        op: conv,
        caught: Caught::ByResult,
    },
    Mutant {
        name: "gemm: the output row bound off by one",
        stem: "gemm",
        find: "if (m >= M || n >= p.N) return;",
        replace: "if (m > M || n >= p.N) return;",
        dtype: DType::F32,
        op: conv,
        caught: Caught::ByCheck(BOUNDS),
    },
    Mutant {
        name: "attention (tensor cores): the barrier before staging a key tile removed",
        stem: "attention",
        find: "        __syncthreads();  // Q's fragments are read / the previous tile is consumed\n",
        replace: "",
        dtype: DType::F16,
        op: attention,
        caught: Caught::ByCheck(RACE),
    },
    Mutant {
        name: "attention (tensor cores): P's register halves swapped",
        stem: "attention",
        find: "pack2<T>(s[2 * kk][0], s[2 * kk][1]),",
        replace: "pack2<T>(s[2 * kk][1], s[2 * kk][0]),",
        dtype: DType::F16,
        op: attention,
        caught: Caught::ByResult,
    },
    Mutant {
        name: "attention (f32): the barrier after staging K and V removed",
        stem: "attention",
        find: "            Vs[j * D + d] = in ? to_f32(v[(long long)kj * p.v_row + d]) : 0.0f;\n        }\n        __syncthreads();",
        replace: "            Vs[j * D + d] = in ? to_f32(v[(long long)kj * p.v_row + d]) : 0.0f;\n        }",
        dtype: DType::F32,
        op: attention,
        caught: Caught::ByCheck(RACE),
    },
    Mutant {
        name: "attention (f32): the key bound off by one",
        stem: "attention",
        find: "const bool in = kj < p.Nk;",
        replace: "const bool in = kj <= p.Nk;",
        dtype: DType::F32,
        op: attention,
        caught: Caught::ByCheck(BOUNDS),
    },
    Mutant {
        name: "attention (f32): the causal mask hides the diagonal",
        stem: "attention",
        find: "const bool seen = valid && (!p.causal || k0 + lane <= qi);",
        replace: "const bool seen = valid && (!p.causal || k0 + lane < qi + (qi == 0));",
        dtype: DType::F32,
        op: causal_attention,
        caught: Caught::ByResult,
    },
    Mutant {
        name: "attention (f32): the causal key range stops a tile early",
        stem: "attention",
        find: "const int k_end = p.causal ? min(p.Nk, q0 + ROWS) : p.Nk;",
        replace: "const int k_end = p.causal ? min(p.Nk, q0 + ROWS - KT) : p.Nk;",
        dtype: DType::F32,
        op: causal_attention,
        caught: Caught::ByResult,
    },
    Mutant {
        name: "attention (tensor cores): the causal mask off by one",
        stem: "attention",
        find: "const bool seen = key < p.Nk && (!p.causal || key <= qi);",
        replace: "const bool seen = key < p.Nk && (!p.causal || key <= qi + 1);",
        dtype: DType::F16,
        op: causal_attention,
        caught: Caught::ByResult,
    },
    Mutant {
        name: "freeu direct filter: the barrier before summing the warps' partial sums removed",
        stem: "freeu",
        find: "    __syncthreads();\n#pragma unroll\n    for (int f = 0; f < MAXF; ++f) {\n        float r = 0.0f",
        replace: "#pragma unroll\n    for (int f = 0; f < MAXF; ++f) {\n        float r = 0.0f",
        dtype: DType::F32,
        op: fourier,
        caught: Caught::ByCheck(RACE),
    },
];

fn source(stem: &str) -> &'static str {
    SOURCES
        .iter()
        .find(|(s, _)| *s == stem)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no kernels/{stem}.cu"))
}

/// Runs `op` on a fresh executor device whose `stem` kernels are `text`. The device is dropped
/// afterwards, which releases its context, so a fault does not spill into the next run.
fn run(
    stem: &str,
    text: &str,
    dtype: DType,
    op: fn(&Gpu) -> Result<(), String>,
) -> Result<(), String> {
    let gpu = Gpu::emulated_with_sources(0, dtype, &[(stem, text)])
        .map_err(|e| format!("opening: {e}"))?;
    gpu.set_poison(true);
    op(&gpu)
}

fn nvrtc_missing(err: &str) -> bool {
    err.contains("NVRTC (libnvrtc) is not installed")
}

#[test]
fn every_mutant_is_caught_and_the_originals_pass() {
    // The control: each kernel file mutated here, unmutated, through the same NVRTC path.
    let mut controls = Vec::new();
    for stem in ["gemm", "attention", "freeu"] {
        for m in MUTANTS.iter().filter(|m| m.stem == stem) {
            if controls.contains(&(stem, m.dtype)) {
                continue;
            }
            controls.push((stem, m.dtype));
            let r = run(stem, source(stem), m.dtype, m.op);
            if let Err(e) = &r {
                if nvrtc_missing(e) {
                    assert!(
                        std::env::var("FREELUNCH_REQUIRE_CUDA_TOOLS").as_deref() != Ok("1"),
                        "NVRTC is required (FREELUNCH_REQUIRE_CUDA_TOOLS=1): {e}"
                    );
                    println!("skipped: NVRTC not found (run tools/cuda_toolchain.sh)");
                    return;
                }
            }
            assert!(
                r.is_ok(),
                "unmutated kernels/{stem}.cu ({:?}) fails: {:?}",
                m.dtype,
                r.err()
            );
        }
    }
    let mut escaped = Vec::new();
    for m in MUTANTS {
        let original = source(m.stem);
        assert_eq!(
            original.matches(m.find).count(),
            1,
            "{}: the mutation site is not unique in kernels/{}.cu",
            m.name,
            m.stem
        );
        let text = original.replacen(m.find, m.replace, 1);
        let r = run(m.stem, &text, m.dtype, m.op);
        println!("{}: {r:?}", m.name);
        match (m.caught, &r) {
            (_, Ok(())) => escaped.push(format!("{}: ran and matched the CPU", m.name)),
            (Caught::ByCheck(words), Err(e)) => {
                let file = format!("kernels/{}.cu:", m.stem);
                if !words.iter().any(|w| e.contains(w)) || !e.contains(&file) {
                    escaped.push(format!(
                        "{}: failed, but not by a check naming {words:?} and {file}: {e}",
                        m.name
                    ));
                }
            }
            (Caught::ByResult, Err(_)) => {}
        }
    }
    assert!(
        escaped.is_empty(),
        "mutants not caught as required:\n{}",
        escaped.join("\n")
    );
}
