//! Strided single-precision matrix product: the crate's own AVX-512 kernel
//! (`cpu::gemm_avx512`, which allocates nothing per call) where the CPU has AVX-512F, the `gemm`
//! crate's packed SIMD kernels elsewhere (and when [`set_own_enabled`] or
//! `FREELUNCH_CPU_GEMM=crate` turns the own kernel off).

pub use super::matrix::{Mat, Precision, Taps, Threads};

/// `c = (accumulate ? c : 0) + scale · a · b` with `a` the `m × channels·k²` implicit matrix of
/// `taps`, `b` `channels·k² × n` and `c` `m × n` with column stride 1: a whole convolution in one
/// product, each A element read from the image in place. Only the own AVX-512 kernel has this
/// form; returns false (computing nothing) where it does not run, and the caller takes its
/// per-tap products instead.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_taps(
    m: usize,
    n: usize,
    channels: usize,
    a: &[f32],
    taps: Taps,
    b: &[f32],
    bm: Mat,
    c: &mut [f32],
    cm: Mat,
    accumulate: bool,
    scale: f32,
    threads: Threads,
    precision: Precision,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let Some(kernel) = own_kernel(precision) else {
            return false;
        };
        if cm.cs != 1 || taps.k == 0 {
            return false;
        }
        let Some(k) = taps
            .k
            .checked_mul(taps.k)
            .and_then(|kk| kk.checked_mul(channels))
        else {
            panic!("gemm: tap depth overflows");
        };
        bm.check(k, n, b.len(), "rhs");
        cm.check(m, n, c.len(), "dst");
        if m == 0 || n == 0 || k == 0 {
            return false;
        }
        let last = (m - 1)
            .checked_add(
                (channels - 1)
                    .checked_mul(taps.plane)
                    .expect("gemm: taps overflow"),
            )
            .and_then(|v| v.checked_add((taps.k - 1).checked_mul(taps.row)?))
            .and_then(|v| v.checked_add(taps.k - 1 + taps.base));
        assert!(
            last.is_some_and(|l| l < a.len()),
            "gemm: taps out of bounds"
        );
        if !cm.distinct(m, n) {
            return false;
        }
        // SAFETY: the kernel's CPU features were detected; every element was bounds-checked
        // above, and C's are distinct.
        unsafe {
            kernel(
                m,
                n,
                k,
                a,
                super::matrix::AView::Taps(taps),
                b,
                bm,
                c,
                cm,
                accumulate,
                scale,
                threads,
            )
        };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (
            m, n, channels, a, taps, b, bm, c, cm, accumulate, scale, threads, precision,
        );
        false
    }
}

/// `c = (accumulate ? c : 0) + scale * a · b`, with `a` m×k, `b` k×n, `c` m×n, in `precision`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    am: Mat,
    b: &[f32],
    bm: Mat,
    c: &mut [f32],
    cm: Mat,
    accumulate: bool,
    scale: f32,
    threads: Threads,
    precision: Precision,
) {
    am.check(m, k, a.len(), "lhs");
    bm.check(k, n, b.len(), "rhs");
    cm.check(m, n, c.len(), "dst");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[cm.offset + i * cm.rs + j * cm.cs] = 0.0;
                }
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = own_kernel(precision).filter(|_| cm.distinct(m, n)) {
        // SAFETY: the kernel's CPU features were detected; every index was bounds-checked above,
        // `c` is borrowed mutably, so it cannot alias `a` or `b`, and C's elements are distinct
        // (`distinct`), so the kernel's tasks write disjoint blocks.
        unsafe {
            kernel(
                m,
                n,
                k,
                a,
                super::matrix::AView::Strided(am),
                b,
                bm,
                c,
                cm,
                accumulate,
                scale,
                threads,
            )
        };
        return;
    }
    let nthreads = rayon::current_num_threads();
    let parallelism = if threads == Threads::Pool && nthreads > 1 && m * n * k >= 1 << 15 {
        gemm::Parallelism::Rayon(nthreads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the product touches was bounds-checked above; `c` is borrowed mutably,
    // so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().add(cm.offset),
            cm.cs as isize,
            cm.rs as isize,
            accumulate,
            a.as_ptr().add(am.offset),
            am.cs as isize,
            am.rs as isize,
            b.as_ptr().add(bm.offset),
            bm.cs as isize,
            bm.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The crate's own kernels, one signature (`gemm_avx512::sgemm`'s contract).
#[cfg(target_arch = "x86_64")]
type OwnKernel = unsafe fn(
    usize,
    usize,
    usize,
    &[f32],
    super::matrix::AView,
    &[f32],
    Mat,
    &mut [f32],
    Mat,
    bool,
    f32,
    Threads,
);

/// The own kernel a product in `precision` runs on: the bf16 tiles where AMX runs, else the
/// f32 AVX-512 kernel where it is on; None: the `gemm` crate.
#[cfg(target_arch = "x86_64")]
fn own_kernel(precision: Precision) -> Option<OwnKernel> {
    if precision == Precision::Bf16 && bf16_available() {
        Some(super::gemm_bf16::sgemm)
    } else if own_enabled() {
        Some(super::gemm_avx512::sgemm)
    } else {
        None
    }
}

/// Whether `Precision::Bf16` products run in bf16: the CPU has AMX-BF16 and Linux granted the
/// tile state (asked once per process).
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The flops of `iters` rounds of four tile products on registers (`tdpbf16ps`, no memory
/// operands) on the calling thread: timed by `benches/conv_peak.rs` as the machine's bf16 peak.
/// None without AMX.
pub fn bf16_peak_loop(iters: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if super::amx::available() {
        // SAFETY: AMX is available.
        return Some(unsafe { super::amx::peak_loop(iters) });
    }
    let _ = iters;
    None
}

static OWN: super::switch::Switch = super::switch::Switch::new("FREELUNCH_CPU_GEMM", "crate");

/// Whether products run on the own AVX-512 kernel: AVX-512F detected, and neither turned off with
/// `FREELUNCH_CPU_GEMM=crate` nor by [`set_own_enabled`].
pub fn own_enabled() -> bool {
    OWN.on()
}

/// Turns the own kernel on (where the CPU has AVX-512F) or off (the `gemm` crate everywhere) for
/// the whole process, for benches and tests that set the two side by side; returns whether it is
/// on now.
pub fn set_own_enabled(on: bool) -> bool {
    OWN.set(on)
}

/// The own kernel through the dispatch, where the CPU has AVX-512F.
#[cfg(all(test, target_arch = "x86_64"))]
mod own_kernel_tests {
    use super::{sgemm, Mat, Precision, Threads};

    /// Deterministic values in [-1, 1), never all zero.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The precisions the own kernels run in here: f32 where the CPU has AVX-512F, bf16 where
    /// it has AMX-BF16 granted by the OS. Elsewhere the `gemm` crate takes every product (its
    /// results are tested through `tests/ops_props.rs` and the goldens).
    fn precisions() -> Vec<Precision> {
        let mut p = Vec::new();
        if super::own_enabled() {
            p.push(Precision::F32);
        } else {
            eprintln!("no AVX-512F here: the own f32 product cannot run");
        }
        if super::bf16_available() {
            p.push(Precision::Bf16);
        } else {
            eprintln!("no AMX-BF16 here: the bf16 product cannot run");
        }
        p
    }

    /// A matrix of `rows × cols` inside a buffer with a lead-in and padding, row- or column-major.
    fn layout(rows: usize, cols: usize, row_major: bool, pad: usize) -> (Mat, usize) {
        let offset = 3;
        let m = if row_major {
            Mat {
                offset,
                rs: cols + pad,
                cs: 1,
            }
        } else {
            Mat {
                offset,
                rs: 1,
                cs: rows + pad,
            }
        };
        let len = offset + (rows - 1) * m.rs + (cols - 1) * m.cs + 1 + 5;
        (m, len)
    }

    fn at(m: Mat, i: usize, j: usize) -> usize {
        m.offset + i * m.rs + j * m.cs
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        m: usize,
        n: usize,
        k: usize,
        layouts: [bool; 3],
        accumulate: bool,
        scale: f32,
        threads: Threads,
        precision: Precision,
    ) {
        let (am, al) = layout(m, k, layouts[0], 1);
        let (bm, bl) = layout(k, n, layouts[1], 2);
        let (cm, cl) = layout(m, n, layouts[2], 3);
        let a = values(al, 1 + m as u64);
        let b = values(bl, 2 + n as u64);
        let c0 = values(cl, 3 + k as u64);
        let mut c = c0.clone();
        assert!(precisions().contains(&precision));
        sgemm(
            m, n, k, &a, am, &b, bm, &mut c, cm, accumulate, scale, threads, precision,
        );
        // The bf16 product is compared with the exact product of its rounded operands.
        let op = |v: f32| match precision {
            Precision::F32 => v as f64,
            Precision::Bf16 => half::bf16::from_f32(v).to_f64(),
        };
        let mut touched = vec![false; cl];
        let mut worst = 0f64;
        for i in 0..m {
            for j in 0..n {
                let mut want: f64 = (0..k)
                    .map(|p| op(a[at(am, i, p)]) * op(b[at(bm, p, j)]))
                    .sum();
                want *= scale as f64;
                if accumulate {
                    want += c0[at(cm, i, j)] as f64;
                }
                let got = c[at(cm, i, j)] as f64;
                worst = worst.max((got - want).abs() / (1.0 + want.abs()));
                touched[at(cm, i, j)] = true;
            }
        }
        // 1e-6 relative per unit of sqrt(k): f32 rounding of a depth-k sum of O(1) terms.
        let tol = 1e-6 * (k as f64).sqrt().max(1.0) * 4.0;
        assert!(
            worst < tol,
            "{m}×{n}×{k} {layouts:?} acc {accumulate}: error {worst:e} > {tol:e}"
        );
        for (idx, t) in touched.iter().enumerate() {
            if !t {
                assert_eq!(
                    c[idx].to_bits(),
                    c0[idx].to_bits(),
                    "{m}×{n}×{k}: wrote outside C at {idx}"
                );
            }
        }
    }

    #[test]
    fn matches_an_f64_product_over_every_layout_and_ragged_size() {
        let sizes = [
            (1, 1, 1),
            (12, 32, 7),
            (13, 33, 257),
            (11, 31, 300),
            (5, 70, 513),
            (200, 3, 40),
            (37, 530, 65),
            (197, 45, 33),
        ];
        for &(m, n, k) in &sizes {
            for l in 0..8 {
                let layouts = [l & 1 != 0, l & 2 != 0, l & 4 != 0];
                for accumulate in [false, true] {
                    for precision in precisions() {
                        check(
                            m,
                            n,
                            k,
                            layouts,
                            accumulate,
                            0.75,
                            Threads::Single,
                            precision,
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn threaded_products_equal_single_threaded_ones_bit_for_bit() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for precision in precisions() {
            for &(m, n, k) in &[(2, 1280, 320), (300, 700, 270), (1030, 40, 96)] {
                for l in [0b111, 0b011, 0b100] {
                    let layouts = [l & 1 != 0, l & 2 != 0, l & 4 != 0];
                    pool.install(|| check(m, n, k, layouts, true, 1.0, Threads::Pool, precision));
                    let (am, al) = layout(m, k, layouts[0], 0);
                    let (bm, bl) = layout(k, n, layouts[1], 0);
                    let (cm, cl) = layout(m, n, layouts[2], 0);
                    let (a, b) = (values(al, 9), values(bl, 10));
                    let mut single = vec![0.5; cl];
                    let mut pooled = single.clone();
                    sgemm(
                        m,
                        n,
                        k,
                        &a,
                        am,
                        &b,
                        bm,
                        &mut single,
                        cm,
                        false,
                        1.0,
                        Threads::Single,
                        precision,
                    );
                    pool.install(|| {
                        sgemm(
                            m,
                            n,
                            k,
                            &a,
                            am,
                            &b,
                            bm,
                            &mut pooled,
                            cm,
                            false,
                            1.0,
                            Threads::Pool,
                            precision,
                        )
                    });
                    // Each element's depth sum is split and ordered the same way whatever the tasks.
                    assert_eq!(single, pooled, "{m}×{n}×{k} {layouts:?} {precision:?}");
                }
            }
        }
    }

    #[test]
    fn repeated_products_keep_the_threads_buffers() {
        if !precisions().contains(&Precision::F32) {
            return;
        }
        let (m, n, k) = (100, 100, 300);
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let mut c = vec![0.0; m * n];
        let run = |c: &mut [f32]| {
            sgemm(
                m,
                n,
                k,
                &a,
                Mat::row_major(0, k),
                &b,
                Mat::row_major(0, n),
                c,
                Mat::row_major(0, n),
                false,
                1.0,
                Threads::Single,
                Precision::F32,
            )
        };
        run(&mut c);
        let held = super::super::gemm_avx512::thread_buffer_bytes();
        assert!(held > 0);
        run(&mut c);
        assert_eq!(super::super::gemm_avx512::thread_buffer_bytes(), held);
    }

    /// The convolution form: A is the implicit matrix of 3×3 taps over a padded image, in
    /// both precisions, against the exact product of the (rounded) operands.
    #[test]
    fn tap_products_match_an_f64_product() {
        use super::{sgemm_taps, Taps};
        for precision in precisions() {
            for &(channels, rows_img, row, n) in &[(3, 7, 9, 5), (20, 12, 14, 70), (64, 5, 40, 33)]
            {
                let k = 3;
                let taps = Taps {
                    base: 2,
                    plane: rows_img * row + 1,
                    row,
                    k,
                };
                let m = (rows_img - k + 1) * row - (k - 1);
                let depth = channels * k * k;
                let a = values(taps.base + channels * taps.plane + 8, 11);
                let b = values(depth * n, 12);
                let bm = Mat::transposed(0, depth);
                let c0 = values(m * n, 13);
                let mut c = c0.clone();
                let ran = sgemm_taps(
                    m,
                    n,
                    channels,
                    &a,
                    taps,
                    &b,
                    bm,
                    &mut c,
                    Mat::row_major(0, n),
                    true,
                    0.5,
                    Threads::Single,
                    precision,
                );
                assert!(ran, "the own kernels take every tap product");
                let op = |v: f32| match precision {
                    Precision::F32 => v as f64,
                    Precision::Bf16 => half::bf16::from_f32(v).to_f64(),
                };
                for i in 0..m {
                    for j in 0..n {
                        let mut want = 0f64;
                        for ch in 0..channels {
                            for t in 0..k * k {
                                let p = ch * k * k + t;
                                let ai = taps.base + i + ch * taps.plane + (t / k) * row + t % k;
                                want += op(a[ai]) * op(b[j * depth + p]);
                            }
                        }
                        let want = c0[i * n + j] as f64 + 0.5 * want;
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - want).abs() < 2e-5 * (depth as f64).sqrt(),
                            "{precision:?} {channels} channels: ({i}, {j}) {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn nan_and_infinity_propagate_as_in_a_plain_product() {
        let (m, n, k) = (13, 33, 5);
        let mut a = values(m * k, 4);
        let b = values(k * n, 5);
        a[2 * k + 1] = f32::NAN; // row 2
        a[7 * k] = f32::INFINITY; // row 7
        let mut c = vec![0.0; m * n];
        sgemm(
            m,
            n,
            k,
            &a,
            Mat::row_major(0, k),
            &b,
            Mat::row_major(0, n),
            &mut c,
            Mat::row_major(0, n),
            false,
            1.0,
            Threads::Single,
            Precision::F32,
        );
        for i in 0..m {
            for j in 0..n {
                let v = c[i * n + j];
                match i {
                    2 => assert!(v.is_nan()),
                    7 => assert!(!v.is_finite()),
                    _ => assert!(v.is_finite()),
                }
            }
        }
    }
}
