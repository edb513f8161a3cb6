//! `shfl.sync.{up,down,bfly,idx}.b32 d[|p], a, b, c, membermask` against the PTX ISA.
//!
//! Source: PTX ISA 9.1 §9.7.9.6 "Data Movement and Conversion Instructions: shfl.sync" (§9.7.8.6
//! in older releases; same title). The reference below is its Semantics pseudocode, transcribed:
//!
//! ```text
//! lane[4:0] = [Thread].laneid; bval[4:0] = b[4:0]; cval[4:0] = c[4:0]; segmask[4:0] = c[12:8];
//! maxLane = (lane[4:0] & segmask[4:0]) | (cval[4:0] & ~segmask[4:0]);
//! minLane = (lane[4:0] & segmask[4:0]);
//! .up:   j = lane - bval; pval = (j >= maxLane);
//! .down: j = lane + bval; pval = (j <= maxLane);
//! .bfly: j = lane ^ bval; pval = (j <= maxLane);
//! .idx:  j = minLane | (bval[4:0] & ~segmask[4:0]); pval = (j <= maxLane);
//! if (!pval) j = lane;  d = SourceA[j];  if (dest predicate selected) p = pval;
//! ```
//!
//! and its description: "shfl.sync will cause executing thread to wait until all non-exited
//! threads corresponding to membermask have executed shfl.sync with the same qualifiers and same
//! membermask value before resuming execution", "results are undefined if a thread sources a
//! register from an inactive thread or a thread that is not in membermask".
//!
//! `c` as CUDA's `__shfl_*_sync(mask, v, x, width)` encodes it: `((32 - width) << 8)` for up,
//! `((32 - width) << 8) | 0x1f` for down, xor (bfly) and idx.

mod common;

use common::*;
use freelunch_ptx::FaultKind;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Up,
    Down,
    Bfly,
    Idx,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Up => "up",
            Mode::Down => "down",
            Mode::Bfly => "bfly",
            Mode::Idx => "idx",
        }
    }
}

/// The §9.7.9.6 pseudocode: the lane `lane` copies from, and `pval`.
fn reference(mode: Mode, lane: u32, b: u32, c: u32) -> (u32, bool) {
    let bval = b & 0x1f;
    let cval = c & 0x1f;
    let segmask = (c >> 8) & 0x1f;
    let max_lane = ((lane & segmask) | (cval & !segmask)) as i32;
    let min_lane = (lane & segmask) as i32;
    let lane_i = lane as i32;
    let (j, pval) = match mode {
        Mode::Up => {
            let j = lane_i - bval as i32;
            (j, j >= max_lane)
        }
        Mode::Down => {
            let j = lane_i + bval as i32;
            (j, j <= max_lane)
        }
        Mode::Bfly => {
            let j = lane_i ^ bval as i32;
            (j, j <= max_lane)
        }
        Mode::Idx => {
            let j = min_lane | (bval & !segmask) as i32;
            (j, j <= max_lane)
        }
    };
    (if pval { j as u32 } else { lane }, pval)
}

/// `c` for CUDA's `width` argument.
fn width_c(mode: Mode, width: u32) -> u32 {
    let seg = (32 - width) << 8;
    if mode == Mode::Up {
        seg
    } else {
        seg | 0x1f
    }
}

/// Block `ctaid.x` is one case: lane l of it shuffles `a[g]` with `b[g]` (g = block·32 + l) and
/// the block's `c[ctaid.x]`, and stores d and p (as 0/1) to `out[2g]`, `out[2g+1]`.
fn kernel(mode: Mode) -> String {
    format!(
        r#"{HEADER}
.visible .entry shfl_probe(.param .u64 pa, .param .u64 pb, .param .u64 pc, .param .u64 pout)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<16>;
    ld.param.u64 %rd1, [pa];
    ld.param.u64 %rd2, [pb];
    ld.param.u64 %rd3, [pc];
    ld.param.u64 %rd4, [pout];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    cvta.to.global.u64 %rd3, %rd3;
    cvta.to.global.u64 %rd4, %rd4;
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %laneid;
    shl.b32 %r10, %r1, 5;
    add.u32 %r11, %r10, %r2;
    mul.wide.u32 %rd5, %r11, 4;
    add.s64 %rd6, %rd1, %rd5;
    ld.global.u32 %r3, [%rd6];
    add.s64 %rd7, %rd2, %rd5;
    ld.global.u32 %r4, [%rd7];
    mul.wide.u32 %rd8, %r1, 4;
    add.s64 %rd9, %rd3, %rd8;
    ld.global.u32 %r5, [%rd9];
    shfl.sync.{mode}.b32 %r6|%p1, %r3, %r4, %r5, 0xffffffff;
    selp.u32 %r7, 1, 0, %p1;
    mul.wide.u32 %rd10, %r11, 8;
    add.s64 %rd11, %rd4, %rd10;
    st.global.u32 [%rd11], %r6;
    st.global.u32 [%rd11+4], %r7;
    ret;
}}
"#,
        mode = mode.name()
    )
}

fn a_value(case: usize, lane: u32) -> u32 {
    0xA500_0000 | ((case as u32) << 8) | lane
}

/// One case: a per-lane `b` and a block-wide `c`.
struct Case {
    b: [u32; 32],
    c: u32,
}

fn check_cases(mode: Mode, cases: &[Case]) {
    let dev = device();
    let n = cases.len();
    let mut a = Vec::new();
    let mut b = Vec::new();
    for (k, case) in cases.iter().enumerate() {
        a.extend((0..32).map(|l| a_value(k, l)));
        b.extend(case.b);
    }
    let c: Vec<u32> = cases.iter().map(|x| x.c).collect();
    let pa = upload_u32(&dev, &a);
    let pb = upload_u32(&dev, &b);
    let pc = upload_u32(&dev, &c);
    let pout = output(&dev, n * 64, 0xee);
    run(
        &dev,
        &kernel(mode),
        "shfl_probe",
        n as u32,
        32,
        &[
            &pa.to_le_bytes(),
            &pb.to_le_bytes(),
            &pc.to_le_bytes(),
            &pout.to_le_bytes(),
        ],
    );
    let out = download_u32(&dev, pout, n * 64);
    for (k, case) in cases.iter().enumerate() {
        for lane in 0..32u32 {
            let b = case.b[lane as usize];
            let (src, pval) = reference(mode, lane, b, case.c);
            let g = k * 32 + lane as usize;
            let (d, p) = (out[2 * g], out[2 * g + 1]);
            assert_eq!(
                (d, p),
                (a_value(k, src), pval as u32),
                "shfl.sync.{} lane {lane} b={b:#x} c={:#x}: want d = a[{src}], p = {pval}; got d = {d:#010x} (a[{}]), p = {p}",
                mode.name(),
                case.c,
                d & 0xff
            );
        }
    }
}

/// b values used uniformly across the warp: in range, at and past the ends, and past 31 (only
/// b[4:0] counts: 33 acts as 1, 0xffffffe1 as 1).
const UNIFORM_B: [u32; 12] = [0, 1, 2, 3, 5, 7, 8, 15, 16, 31, 33, 0xffff_ffe1];

fn cases_for(cs: &[u32], per_lane: &[[u32; 32]]) -> Vec<Case> {
    let mut v = Vec::new();
    for &c in cs {
        for &b in &UNIFORM_B {
            v.push(Case { b: [b; 32], c });
        }
        for b in per_lane {
            v.push(Case { b: *b, c });
        }
    }
    v
}

/// Per-lane b patterns (the pseudocode evaluates each thread's own b).
fn per_lane_b() -> Vec<[u32; 32]> {
    let mut v = Vec::new();
    v.push(std::array::from_fn(|l| ((l * 7 + 3) % 32) as u32));
    v.push(std::array::from_fn(|l| (31 - l) as u32));
    v.push(std::array::from_fn(|l| {
        (l % 5) as u32 + 32 * (l as u32 % 3)
    }));
    v.push(std::array::from_fn(|l| (l as u32) ^ 0x15));
    v
}

/// c values for down/bfly/idx: CUDA widths 32, 16, 8, 4, 2, 1, plus raw encodings the widths do not
/// produce: a clamp below the segment end with no segments (0x0f), and segments of 8 with clamp 3
/// (0x1803: maxLane = segment base | 3).
fn cs_not_up(mode: Mode) -> Vec<u32> {
    let mut v: Vec<u32> = [32, 16, 8, 4, 2, 1]
        .iter()
        .map(|&w| width_c(mode, w))
        .collect();
    v.extend([0x0f, 0x1803, 0x0000]);
    v
}

/// PTX ISA 9.1 §9.7.9.6 shfl.sync, `.up`: every lane's d and p against the pseudocode, for
/// CUDA widths 32..1 (c = (32-width)<<8) and raw c = 5 (maxLane = 5 with no segments) and 0x1f05,
/// with uniform and per-lane b.
#[test]
fn shfl_sync_up_values_and_predicates() {
    let mut cs: Vec<u32> = [32, 16, 8, 4, 2, 1]
        .iter()
        .map(|&w| width_c(Mode::Up, w))
        .collect();
    cs.extend([0x05, 0x1f05, 0x101f]);
    check_cases(Mode::Up, &cases_for(&cs, &per_lane_b()));
}

/// PTX ISA 9.1 §9.7.9.6 shfl.sync, `.down`: as above with c = ((32-width)<<8)|0x1f and raw
/// clamps.
#[test]
fn shfl_sync_down_values_and_predicates() {
    let cs = cs_not_up(Mode::Down);
    check_cases(Mode::Down, &cases_for(&cs, &per_lane_b()));
}

/// PTX ISA 9.1 §9.7.9.6 shfl.sync, `.bfly` (CUDA's `__shfl_xor_sync`). With segments, a lane
/// mask of the segment size or more follows the pseudocode literally: j = lane ^ bval is taken
/// whenever j <= maxLane, which the ISA notes ("an out of range value of b may still result in a
/// valid computed source lane index j").
#[test]
fn shfl_sync_bfly_values_and_predicates() {
    let cs = cs_not_up(Mode::Bfly);
    check_cases(Mode::Bfly, &cases_for(&cs, &per_lane_b()));
}

/// PTX ISA 9.1 §9.7.9.6 shfl.sync, `.idx` (CUDA's `__shfl_sync`): source lane minLane |
/// (bval & ~segmask), predicate j <= maxLane, with uniform and per-lane b.
#[test]
fn shfl_sync_idx_values_and_predicates() {
    let cs = cs_not_up(Mode::Idx);
    check_cases(Mode::Idx, &cases_for(&cs, &per_lane_b()));
}

/// Spot checks of the reference itself against what the ISA and CUDA say in words, so that the
/// tests above do not merely agree with a mistranscription.
#[test]
fn shfl_reference_spot_checks() {
    // __shfl_up_sync(v, 1): lane 0 keeps its own value, p false; lane 5 reads lane 4.
    assert_eq!(reference(Mode::Up, 0, 1, 0), (0, false));
    assert_eq!(reference(Mode::Up, 5, 1, 0), (4, true));
    // __shfl_up_sync(v, 2, 8): lane 9 is 1 into its segment [8, 16): keeps its own.
    assert_eq!(reference(Mode::Up, 9, 2, width_c(Mode::Up, 8)), (9, false));
    assert_eq!(reference(Mode::Up, 10, 2, width_c(Mode::Up, 8)), (8, true));
    // __shfl_down_sync(v, 1): lane 31 keeps its own; with width 8, lane 7 does.
    assert_eq!(reference(Mode::Down, 31, 1, 0x1f), (31, false));
    assert_eq!(
        reference(Mode::Down, 7, 1, width_c(Mode::Down, 8)),
        (7, false)
    );
    assert_eq!(
        reference(Mode::Down, 6, 1, width_c(Mode::Down, 8)),
        (7, true)
    );
    // __shfl_sync(v, 3, 8): lane 13 reads lane 8 + 3 = 11.
    assert_eq!(
        reference(Mode::Idx, 13, 3, width_c(Mode::Idx, 8)),
        (11, true)
    );
    // __shfl_sync(v, 11, 8): srcLane is taken modulo the width: lane 13 reads 8 + 3.
    assert_eq!(
        reference(Mode::Idx, 13, 11, width_c(Mode::Idx, 8)),
        (11, true)
    );
    // __shfl_xor_sync(v, 1): lane 6 reads lane 7.
    assert_eq!(reference(Mode::Bfly, 6, 1, 0x1f), (7, true));
    // idx with clamp 15 and no segments: b = 20 is out of range, own value.
    assert_eq!(reference(Mode::Idx, 3, 20, 0x0f), (3, false));
}

/// The examples of PTX ISA 9.1 §9.7.9.6 / §9.7.9.5 (shfl, deprecated) in `shfl.sync` form, with
/// immediate b and c: the warp-level inclusive plus-scan (`shfl.up` with `|p` and `@p add`), the
/// reverse scan (`shfl.down`, c = 0x1f) and the butterfly reduction (`shfl.bfly`, no predicate),
/// integer adds so the sums are exact.
#[test]
fn shfl_sync_isa_examples_scan_and_reduction() {
    let mut body = String::new();
    for (mode, c, pred) in [
        ("up", "0x0", true),
        ("down", "0x1f", true),
        ("bfly", "0x1f", false),
    ] {
        body += "    mov.u32 %r5, %r3;\n";
        for off in [1, 2, 4, 8, 16] {
            let off = if mode == "bfly" { 32 / (2 * off) } else { off };
            if pred {
                body += &format!(
                    "    shfl.sync.{mode}.b32 %r6|%p1, %r5, {off}, {c}, 0xffffffff;\n    @%p1 add.s32 %r5, %r6, %r5;\n"
                );
            } else {
                body += &format!(
                    "    shfl.sync.{mode}.b32 %r6, %r5, {off}, {c}, 0xffffffff;\n    add.s32 %r5, %r6, %r5;\n"
                );
            }
        }
        body += "    st.global.u32 [%rd7], %r5;\n    add.s64 %rd7, %rd7, 128;\n";
    }
    let ptx = format!(
        r#"{HEADER}
.visible .entry examples(.param .u64 pa, .param .u64 pout)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<16>;
    ld.param.u64 %rd1, [pa];
    ld.param.u64 %rd2, [pout];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r2, %laneid;
    mul.wide.u32 %rd5, %r2, 4;
    add.s64 %rd6, %rd1, %rd5;
    ld.global.u32 %r3, [%rd6];
    add.s64 %rd7, %rd2, %rd5;
{body}    ret;
}}
"#
    );
    let dev = device();
    let a: Vec<u32> = (0..32).map(|l| l * l + 3).collect();
    let pa = upload_u32(&dev, &a);
    let pout = output(&dev, 96, 0);
    run(
        &dev,
        &ptx,
        "examples",
        1,
        32,
        &[&pa.to_le_bytes(), &pout.to_le_bytes()],
    );
    let out = download_u32(&dev, pout, 96);
    let total: u32 = a.iter().sum();
    for l in 0..32 {
        let scan: u32 = a[..=l].iter().sum();
        let rscan: u32 = a[l..].iter().sum();
        assert_eq!(out[l], scan, "inclusive scan, lane {l}");
        assert_eq!(out[32 + l], rscan, "reverse scan, lane {l}");
        assert_eq!(out[64 + l], total, "butterfly reduction, lane {l}");
    }
}

/// A warp whose lanes 16..31 exit first; lanes 0..15 then shuffle with `b = src(lane)`.
fn exited_kernel(src: &str, membermask: &str) -> String {
    format!(
        r#"{HEADER}
.visible .entry shfl_exited(.param .u64 pa, .param .u64 pout)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<16>;
    ld.param.u64 %rd1, [pa];
    ld.param.u64 %rd2, [pout];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r2, %laneid;
    mul.wide.u32 %rd5, %r2, 4;
    add.s64 %rd6, %rd1, %rd5;
    ld.global.u32 %r3, [%rd6];
    add.s64 %rd7, %rd2, %rd5;
    setp.ge.u32 %p2, %r2, 16;
    @%p2 exit;
    {src}
    shfl.sync.idx.b32 %r6, %r3, %r4, 0x1f, {membermask};
    st.global.u32 [%rd7], %r6;
    ret;
}}
"#
    )
}

fn run_exited(src: &str, membermask: &str) -> (freelunch_ptx::Result<()>, Vec<u32>) {
    let dev = device();
    let a: Vec<u32> = (0..32).map(|l| 0x100 + l).collect();
    let pa = upload_u32(&dev, &a);
    let pout = output(&dev, 32, 0xee);
    let r = launch(
        &dev,
        &exited_kernel(src, membermask),
        "shfl_exited",
        1,
        32,
        &[&pa.to_le_bytes(), &pout.to_le_bytes()],
    );
    (r, download_u32(&dev, pout, 32))
}

/// PTX ISA 9.1 §9.7.9.6: "results are undefined if a thread sources a register from an inactive
/// thread". Lanes 16..31 have exited; lanes 0..15 read lane + 16: the executor must report it.
#[test]
fn shfl_sync_from_an_exited_lane_is_reported() {
    let (r, _) = run_exited("add.u32 %r4, %r2, 16;", "0xffffffff");
    expect_fault(r, &[FaultKind::Divergence], "shfl");
}

/// The control for the test above: with lanes 16..31 exited, lanes 0..15 reading among
/// themselves (lane ^ 1) is well defined: "wait until all non-exited threads corresponding to
/// membermask have executed shfl.sync" (§9.7.9.6) — the exited lanes of the full membermask do
/// not hold it up, nor do they under a membermask of only the live lanes.
#[test]
fn shfl_sync_among_live_lanes_after_others_exited() {
    for mask in ["0xffffffff", "0x0000ffff"] {
        let (r, out) = run_exited("xor.b32 %r4, %r2, 1;", mask);
        r.unwrap_or_else(|e| panic!("membermask {mask}: {e}"));
        for l in 0..32u32 {
            let want = if l < 16 { 0x100 + (l ^ 1) } else { 0xeeee_eeee };
            assert_eq!(out[l as usize], want, "membermask {mask}, lane {l}");
        }
    }
}

/// PTX ISA 9.1 §9.7.9.6: membermask names the participating threads; only they need to execute
/// the shfl.sync. The even lanes of a warp take a branch and shuffle among themselves with
/// membermask 0x55555555 (lane reads lane + 2 mod 32, an even lane); the odd lanes skip it.
#[test]
fn shfl_sync_with_a_partial_membermask_in_divergent_code() {
    let ptx = format!(
        r#"{HEADER}
.visible .entry shfl_even(.param .u64 pa, .param .u64 pout)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<16>;
    ld.param.u64 %rd1, [pa];
    ld.param.u64 %rd2, [pout];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r2, %laneid;
    mul.wide.u32 %rd5, %r2, 4;
    add.s64 %rd6, %rd1, %rd5;
    ld.global.u32 %r3, [%rd6];
    add.s64 %rd7, %rd2, %rd5;
    and.b32 %r9, %r2, 1;
    setp.ne.u32 %p2, %r9, 0;
    @%p2 bra SKIP;
    add.u32 %r4, %r2, 2;
    and.b32 %r4, %r4, 31;
    shfl.sync.idx.b32 %r6|%p1, %r3, %r4, 0x1f, 0x55555555;
    selp.u32 %r7, 1, 0, %p1;
    add.u32 %r6, %r6, %r7;
    st.global.u32 [%rd7], %r6;
SKIP:
    ret;
}}
"#
    );
    let dev = device();
    let a: Vec<u32> = (0..32).map(|l| 0x1000 * (l + 1)).collect();
    let pa = upload_u32(&dev, &a);
    let pout = output(&dev, 32, 0xee);
    run(
        &dev,
        &ptx,
        "shfl_even",
        1,
        32,
        &[&pa.to_le_bytes(), &pout.to_le_bytes()],
    );
    let out = download_u32(&dev, pout, 32);
    for l in 0..32usize {
        let want = if l % 2 == 0 {
            a[(l + 2) % 32] + 1
        } else {
            0xeeee_eeee
        };
        assert_eq!(out[l], want, "lane {l}");
    }
}
