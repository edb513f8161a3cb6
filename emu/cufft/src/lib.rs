//! cuFFT's plan API (the calls cudarc makes) over the PTX executor's driver, exported with C
//! linkage from a library whose SONAME is `libcufft.so`; loaded only by path, like the driver
//! stand-in.
//!
//! As a real cuFFT, it is a client of the driver: it reads and writes device memory with
//! `cuMemcpyDtoH`/`cuMemcpyHtoD` of the loaded driver, which must be the executor's. Transforms
//! follow cuFFT's conventions (cuFFT documentation §2 "Data layout" and §3 "Advanced data
//! layout"): unnormalised, forward with e^{-2πi jk/n}; R2C writes the `n_last/2 + 1` non-redundant
//! outputs of the last dimension; C2R reads them (the imaginary parts of the zero and Nyquist
//! frequencies are ignored, as they must be for a Hermitian input); with `inembed`/`onembed`
//! NULL the layout is contiguous, otherwise element `x` of batch `b` is at
//! `b·dist + (Σ x_i·∏_{j>i} embed_j)·stride`. A C2R transform leaves its input overwritten with
//! NaN, as cuFFT may overwrite it: code that reuses a C2R input fails here.
//!
//! Reads of device bytes that nothing has written fail (`CUFFT_EXEC_FAILED`, with a message on
//! stderr), as kernel reads do.

#![allow(non_snake_case)]
#![allow(clippy::missing_safety_doc)]
#![allow(clippy::too_many_arguments)]

use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::{Mutex, OnceLock};

use rustfft::num_complex::Complex;
use rustfft::FftPlanner;

type CufftResult = c_int;
type CufftHandle = c_int;

const SUCCESS: CufftResult = 0;
const INVALID_PLAN: CufftResult = 1;
const INVALID_TYPE: CufftResult = 3;
const INVALID_VALUE: CufftResult = 4;
const EXEC_FAILED: CufftResult = 6;
const SETUP_FAILED: CufftResult = 7;
const INVALID_SIZE: CufftResult = 8;

const R2C: c_int = 0x2a;
const C2R: c_int = 0x2c;
const C2C: c_int = 0x29;

/// cuFFT 12.0's version number, which this stand-in answers with.
const VERSION: c_int = 12000;

#[derive(Clone, Debug)]
struct Plan {
    /// Transform sizes, outermost first; empty until the plan is made.
    n: Vec<usize>,
    inembed: Option<Vec<usize>>,
    onembed: Option<Vec<usize>>,
    istride: usize,
    idist: usize,
    ostride: usize,
    odist: usize,
    kind: c_int,
    batch: usize,
}

struct Driver {
    dtoh: unsafe extern "C" fn(*mut c_void, u64, usize) -> c_uint,
    htod: unsafe extern "C" fn(u64, *const c_void, usize) -> c_uint,
    memset: unsafe extern "C" fn(u64, u8, usize) -> c_uint,
    initialised: unsafe extern "C" fn(u64, usize) -> c_uint,
}

static PLANS: Mutex<Option<HashMap<CufftHandle, Plan>>> = Mutex::new(None);
static NEXT: Mutex<CufftHandle> = Mutex::new(1);

fn driver() -> Option<&'static Driver> {
    static D: OnceLock<Option<Driver>> = OnceLock::new();
    D.get_or_init(|| {
        // SAFETY: "libcuda.so" is the loaded driver; a real driver lacks our marker and is
        // refused.
        unsafe {
            let lib = libloading::Library::new("libcuda.so").ok()?;
            lib.get::<unsafe extern "C" fn() -> c_int>(b"freelunch_emu_version")
                .ok()?;
            let d = Driver {
                dtoh: *lib.get(b"cuMemcpyDtoH_v2").ok()?,
                htod: *lib.get(b"cuMemcpyHtoD_v2").ok()?,
                memset: *lib.get(b"cuMemsetD8_v2").ok()?,
                initialised: *lib.get(b"freelunch_emu_initialised").ok()?,
            };
            std::mem::forget(lib);
            Some(d)
        }
    })
    .as_ref()
}

fn with_plans<T>(f: impl FnOnce(&mut HashMap<CufftHandle, Plan>) -> T) -> T {
    let mut g = PLANS.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(HashMap::new))
}

fn empty_plan() -> Plan {
    Plan {
        n: Vec::new(),
        inembed: None,
        onembed: None,
        istride: 1,
        idist: 0,
        ostride: 1,
        odist: 0,
        kind: 0,
        batch: 0,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cufftCreate(plan: *mut CufftHandle) -> CufftResult {
    if plan.is_null() {
        return INVALID_VALUE;
    }
    if driver().is_none() {
        eprintln!("freelunch cuFFT stand-in: the loaded CUDA driver is not the PTX executor");
        return SETUP_FAILED;
    }
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let h = *next;
    *next += 1;
    with_plans(|p| p.insert(h, empty_plan()));
    // SAFETY: checked non-null.
    unsafe { *plan = h };
    SUCCESS
}

unsafe fn dims(rank: c_int, p: *const c_int) -> Result<Option<Vec<usize>>, CufftResult> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's array of `rank` ints.
    let v = unsafe { std::slice::from_raw_parts(p, rank as usize) };
    if v.iter().any(|&x| x <= 0) {
        return Err(INVALID_SIZE);
    }
    Ok(Some(v.iter().map(|&x| x as usize).collect()))
}

#[no_mangle]
pub unsafe extern "C" fn cufftMakePlanMany(
    plan: CufftHandle,
    rank: c_int,
    n: *mut c_int,
    inembed: *mut c_int,
    istride: c_int,
    idist: c_int,
    onembed: *mut c_int,
    ostride: c_int,
    odist: c_int,
    kind: c_int,
    batch: c_int,
    work: *mut usize,
) -> CufftResult {
    if !(1..=3).contains(&rank) || batch < 1 {
        return INVALID_VALUE;
    }
    if ![R2C, C2R, C2C].contains(&kind) {
        eprintln!("freelunch cuFFT stand-in: transform type {kind:#x} is not implemented (R2C, C2R, C2C are)");
        return INVALID_TYPE;
    }
    let parsed = (|| unsafe {
        let n = dims(rank, n)?.ok_or(INVALID_VALUE)?;
        let (ie, oe) = (dims(rank, inembed)?, dims(rank, onembed)?);
        Ok::<_, CufftResult>((n, ie, oe))
    })();
    let (n, ie, oe) = match parsed {
        Ok(x) => x,
        Err(e) => return e,
    };
    let advanced = ie.is_some() && oe.is_some();
    if (ie.is_some() || oe.is_some()) && !advanced
        || (advanced && (istride < 1 || ostride < 1 || idist < 1 || odist < 1))
    {
        return INVALID_VALUE;
    }
    let p = Plan {
        n,
        inembed: ie,
        onembed: oe,
        istride: if advanced { istride as usize } else { 1 },
        idist: if advanced { idist as usize } else { 0 },
        ostride: if advanced { ostride as usize } else { 1 },
        odist: if advanced { odist as usize } else { 0 },
        kind,
        batch: batch as usize,
    };
    let ok = with_plans(|plans| match plans.get_mut(&plan) {
        Some(slot) => {
            *slot = p;
            true
        }
        None => false,
    });
    if !ok {
        return INVALID_PLAN;
    }
    if !work.is_null() {
        // SAFETY: the caller's out-pointer.
        unsafe { *work = 0 };
    }
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cufftPlanMany(
    plan: *mut CufftHandle,
    rank: c_int,
    n: *mut c_int,
    inembed: *mut c_int,
    istride: c_int,
    idist: c_int,
    onembed: *mut c_int,
    ostride: c_int,
    odist: c_int,
    kind: c_int,
    batch: c_int,
) -> CufftResult {
    let r = unsafe { cufftCreate(plan) };
    if r != SUCCESS {
        return r;
    }
    // SAFETY: cufftCreate wrote the handle.
    let h = unsafe { *plan };
    let r = unsafe {
        cufftMakePlanMany(
            h,
            rank,
            n,
            inembed,
            istride,
            idist,
            onembed,
            ostride,
            odist,
            kind,
            batch,
            std::ptr::null_mut(),
        )
    };
    if r != SUCCESS {
        with_plans(|p| p.remove(&h));
    }
    r
}

/// A plan in the basic (contiguous) layout.
unsafe fn plan_basic(
    plan: *mut CufftHandle,
    n: &mut [c_int],
    kind: c_int,
    batch: c_int,
) -> CufftResult {
    let null = std::ptr::null_mut();
    // SAFETY: the caller's out-pointer; `n` holds the rank's sizes.
    unsafe {
        cufftPlanMany(
            plan,
            n.len() as c_int,
            n.as_mut_ptr(),
            null,
            1,
            0,
            null,
            1,
            0,
            kind,
            batch,
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn cufftPlan1d(
    plan: *mut CufftHandle,
    nx: c_int,
    kind: c_int,
    batch: c_int,
) -> CufftResult {
    unsafe { plan_basic(plan, &mut [nx], kind, batch) }
}

#[no_mangle]
pub unsafe extern "C" fn cufftPlan2d(
    plan: *mut CufftHandle,
    nx: c_int,
    ny: c_int,
    kind: c_int,
) -> CufftResult {
    unsafe { plan_basic(plan, &mut [nx, ny], kind, 1) }
}

#[no_mangle]
pub unsafe extern "C" fn cufftPlan3d(
    plan: *mut CufftHandle,
    nx: c_int,
    ny: c_int,
    nz: c_int,
    kind: c_int,
) -> CufftResult {
    unsafe { plan_basic(plan, &mut [nx, ny, nz], kind, 1) }
}

#[no_mangle]
pub extern "C" fn cufftSetStream(plan: CufftHandle, _stream: *mut c_void) -> CufftResult {
    // Work runs when it is enqueued, so every stream is equivalent.
    if with_plans(|p| p.contains_key(&plan)) {
        SUCCESS
    } else {
        INVALID_PLAN
    }
}

#[no_mangle]
pub extern "C" fn cufftSetAutoAllocation(plan: CufftHandle, _auto: c_int) -> CufftResult {
    cufftSetStream(plan, std::ptr::null_mut())
}

#[no_mangle]
pub extern "C" fn cufftSetWorkArea(plan: CufftHandle, _area: *mut c_void) -> CufftResult {
    cufftSetStream(plan, std::ptr::null_mut())
}

#[no_mangle]
pub unsafe extern "C" fn cufftGetSize(plan: CufftHandle, size: *mut usize) -> CufftResult {
    if size.is_null() {
        return INVALID_VALUE;
    }
    unsafe { *size = 0 };
    cufftSetStream(plan, std::ptr::null_mut())
}

#[no_mangle]
pub extern "C" fn cufftDestroy(plan: CufftHandle) -> CufftResult {
    if with_plans(|p| p.remove(&plan)).is_some() {
        SUCCESS
    } else {
        INVALID_PLAN
    }
}

#[no_mangle]
pub unsafe extern "C" fn cufftGetVersion(v: *mut c_int) -> CufftResult {
    if v.is_null() {
        return INVALID_VALUE;
    }
    unsafe { *v = VERSION };
    SUCCESS
}

/// Linear offsets of every element of one batch in a layout: `embed` (or the logical sizes
/// `logical` when None) and `stride`, in row-major order of `logical`.
fn offsets(logical: &[usize], embed: Option<&[usize]>, stride: usize) -> Vec<usize> {
    let dims = embed.unwrap_or(logical);
    let total: usize = logical.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; logical.len()];
    for _ in 0..total {
        let mut lin = 0;
        for (d, &i) in idx.iter().enumerate() {
            lin = lin * dims[d] + i;
        }
        out.push(lin * stride);
        for d in (0..logical.len()).rev() {
            idx[d] += 1;
            if idx[d] < logical[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// The per-batch distance: `dist` in the advanced layout, else the contiguous size.
fn batch_dist(dist: usize, logical: &[usize], advanced: bool) -> usize {
    if advanced {
        dist
    } else {
        logical.iter().product()
    }
}

/// Transforms `data` (row-major, `shape`) in place along every dimension; `inverse` uses
/// e^{+2πi jk/n}.
fn fft_nd(
    data: &mut [Complex<f32>],
    shape: &[usize],
    dims: std::ops::Range<usize>,
    inverse: bool,
    planner: &mut FftPlanner<f32>,
) {
    for d in dims {
        let n = shape[d];
        let inner: usize = shape[d + 1..].iter().product();
        let outer: usize = shape[..d].iter().product();
        let fft = if inverse {
            planner.plan_fft_inverse(n)
        } else {
            planner.plan_fft_forward(n)
        };
        let mut line = vec![Complex::new(0.0, 0.0); n];
        for o in 0..outer {
            for i in 0..inner {
                for (k, v) in line.iter_mut().enumerate() {
                    *v = data[(o * n + k) * inner + i];
                }
                fft.process(&mut line);
                for (k, v) in line.iter().enumerate() {
                    data[(o * n + k) * inner + i] = *v;
                }
            }
        }
    }
}

fn read(
    d: &Driver,
    ptr: u64,
    bytes: usize,
    what: &str,
    check: bool,
) -> Result<Vec<u8>, CufftResult> {
    // SAFETY: driver calls with a host buffer of `bytes`.
    unsafe {
        let init = if check {
            (d.initialised)(ptr, bytes)
        } else {
            0
        };
        if init != 0 {
            eprintln!(
                "freelunch cuFFT stand-in: the {what} ({bytes} bytes at {ptr:#x}) is not all initialised or not device memory (driver error {init})"
            );
            return Err(EXEC_FAILED);
        }
        let mut buf = vec![0u8; bytes];
        if (d.dtoh)(buf.as_mut_ptr() as *mut c_void, ptr, bytes) != 0 {
            return Err(EXEC_FAILED);
        }
        Ok(buf)
    }
}

fn exec(plan: CufftHandle, input: u64, output: u64, kind: c_int, inverse: bool) -> CufftResult {
    let Some(p) = with_plans(|p| p.get(&plan).cloned()) else {
        return INVALID_PLAN;
    };
    if p.n.is_empty() {
        return INVALID_PLAN;
    }
    if p.kind != kind {
        return INVALID_TYPE;
    }
    let Some(d) = driver() else {
        return SETUP_FAILED;
    };
    let advanced = p.inembed.is_some();
    let last = *p.n.last().expect("rank >= 1");
    let mut half = p.n.clone();
    *half.last_mut().expect("rank >= 1") = last / 2 + 1;
    // Logical shapes of the input and the output of one batch.
    let (in_shape, out_shape, in_complex, out_complex) = match kind {
        R2C => (p.n.clone(), half.clone(), false, true),
        C2R => (half.clone(), p.n.clone(), true, false),
        _ => (p.n.clone(), p.n.clone(), true, true),
    };
    let in_off = offsets(&in_shape, p.inembed.as_deref(), p.istride);
    let out_off = offsets(&out_shape, p.onembed.as_deref(), p.ostride);
    let (idist, odist) = (
        batch_dist(p.idist, &in_shape, advanced),
        batch_dist(p.odist, &out_shape, advanced),
    );
    let (isz, osz) = (
        if in_complex { 8 } else { 4 },
        if out_complex { 8 } else { 4 },
    );
    let in_elems = (p.batch - 1) * idist + in_off.iter().max().copied().unwrap_or(0) + 1;
    let out_elems = (p.batch - 1) * odist + out_off.iter().max().copied().unwrap_or(0) + 1;
    let src = match read(d, input, in_elems * isz, "input", true) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let f =
        |i: usize| f32::from_le_bytes([src[4 * i], src[4 * i + 1], src[4 * i + 2], src[4 * i + 3]]);
    // In-place transforms keep the bytes of the output that no element covers.
    let mut dst = if output == input && out_elems * osz <= src.len() {
        src[..out_elems * osz].to_vec()
    } else {
        match read(d, output, out_elems * osz, "output", false) {
            Ok(b) => b,
            Err(_) => vec![0u8; out_elems * osz],
        }
    };
    let mut planner = FftPlanner::<f32>::new();
    let full: usize = p.n.iter().product();
    for b in 0..p.batch {
        let mut work = vec![Complex::new(0.0f32, 0.0); full];
        match kind {
            R2C => {
                for (k, &o) in in_off.iter().enumerate() {
                    work[k] = Complex::new(f(b * idist + o), 0.0);
                }
            }
            C2R => {
                // Rebuild the full spectrum from the non-redundant half: X[-k] = conj(X[k]).
                let hl = last / 2 + 1;
                let rows = full / last;
                let mut spec = vec![Complex::new(0.0f32, 0.0); rows * hl];
                for (k, &o) in in_off.iter().enumerate() {
                    let at = 2 * (b * idist + o);
                    spec[k] = Complex::new(f(at), f(at + 1));
                }
                let outer_shape = &p.n[..p.n.len() - 1];
                // Inverse along the outer dimensions first, on the half columns.
                let mut shape_h: Vec<usize> = outer_shape.to_vec();
                shape_h.push(hl);
                fft_nd(
                    &mut spec,
                    &shape_h,
                    0..outer_shape.len(),
                    true,
                    &mut planner,
                );
                let fft = planner.plan_fft_inverse(last);
                for r in 0..rows {
                    let row = &mut work[r * last..(r + 1) * last];
                    for k in 0..last {
                        row[k] = if k < hl {
                            spec[r * hl + k]
                        } else {
                            spec[r * hl + last - k].conj()
                        };
                    }
                    fft.process(row);
                }
                for (k, &o) in out_off.iter().enumerate() {
                    let at = 4 * (b * odist + o);
                    dst[at..at + 4].copy_from_slice(&work[k].re.to_le_bytes());
                }
                continue;
            }
            _ => {
                for (k, &o) in in_off.iter().enumerate() {
                    let at = 2 * (b * idist + o);
                    work[k] = Complex::new(f(at), f(at + 1));
                }
            }
        }
        fft_nd(&mut work, &p.n, 0..p.n.len(), inverse, &mut planner);
        match kind {
            R2C => {
                // The first last/2+1 outputs of every row of the last dimension.
                let hl = last / 2 + 1;
                for (k, &o) in out_off.iter().enumerate() {
                    let (r, c) = (k / hl, k % hl);
                    let v = work[r * last + c];
                    let at = 8 * (b * odist + o);
                    dst[at..at + 4].copy_from_slice(&v.re.to_le_bytes());
                    dst[at + 4..at + 8].copy_from_slice(&v.im.to_le_bytes());
                }
            }
            _ => {
                for (k, &o) in out_off.iter().enumerate() {
                    let at = 8 * (b * odist + o);
                    dst[at..at + 4].copy_from_slice(&work[k].re.to_le_bytes());
                    dst[at + 4..at + 8].copy_from_slice(&work[k].im.to_le_bytes());
                }
            }
        }
    }
    // SAFETY: driver calls with host buffers of the given sizes.
    unsafe {
        if kind == C2R && output != input && (d.memset)(input, 0xff, in_elems * isz) != 0 {
            return EXEC_FAILED;
        }
        if (d.htod)(output, dst.as_ptr() as *const c_void, dst.len()) != 0 {
            return EXEC_FAILED;
        }
    }
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cufftExecR2C(
    plan: CufftHandle,
    idata: *mut f32,
    odata: *mut c_void,
) -> CufftResult {
    exec(plan, idata as u64, odata as u64, R2C, false)
}

#[no_mangle]
pub extern "C" fn cufftExecC2R(
    plan: CufftHandle,
    idata: *mut c_void,
    odata: *mut f32,
) -> CufftResult {
    exec(plan, idata as u64, odata as u64, C2R, true)
}

#[no_mangle]
pub extern "C" fn cufftExecC2C(
    plan: CufftHandle,
    idata: *mut c_void,
    odata: *mut c_void,
    direction: c_int,
) -> CufftResult {
    match direction {
        -1 => exec(plan, idata as u64, odata as u64, C2C, false),
        1 => exec(plan, idata as u64, odata as u64, C2C, true),
        _ => INVALID_VALUE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_and_embedded_offsets() {
        assert_eq!(offsets(&[2, 3], None, 1), [0, 1, 2, 3, 4, 5]);
        assert_eq!(offsets(&[2, 2], Some(&[2, 4]), 2), [0, 2, 8, 10]);
    }
}
