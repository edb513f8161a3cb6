//! `ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}{.shared}.b16` against the PTX ISA.
//!
//! Source: PTX ISA 9.1 §9.7.14.5.15 "Warp-level matrix load instruction: ldmatrix" (same title in
//! the 8.5/8.7 PDFs):
//! * "The eight addresses required for each matrix are provided by eight threads, depending upon
//!   the value of `.num`": `.x1` threads 0–7 give addr0–addr7, `.x2` threads 0–15 give
//!   addr0–addr15, `.x4` threads 0–31 give addr0–addr31; "Each address corresponds to the start of
//!   a matrix row. Addresses addr0–addr7 correspond to the rows of the first matrix, addresses
//!   addr8–addr15 correspond to the rows of the second matrix, and so on." The other threads'
//!   addresses ("–" in the table) are not used (on sm_80 they need not even be valid).
//! * "Consecutive instances of row need not be stored contiguously in memory."
//! * "Each thread in a warp loads fragments of a row, with thread 0 receiving the first fragment in
//!   its register r, and so on. A group of four threads loads an entire row of the matrix"
//!   (Figure 104): thread t gets row t/4, elements 2·(t%4) (low 16 bits) and 2·(t%4)+1 (high).
//! * "When `.num` = `.x2`, the elements of the second matrix are loaded in the next destination
//!   register in each thread"; likewise the third and fourth for `.x4`.
//! * "Optional qualifier `.trans` indicates that the matrix is loaded in column-major format":
//!   thread t gets, in half h, element t/4 of row 2·(t%4)+h.
//! * "The behavior of `ldmatrix` is undefined ... if any thread in the warp has exited", and
//!   `.aligned`: all threads of the warp must execute the same `ldmatrix`.
//!
//! Cross-checked against CuTe (NVIDIA/cutlass `include/cute/atom/copy_traits_sm75.hpp`):
//! `SM75_U32x{1,2,4}_LDSM_N` have source (thread → 128-bit row) layouts (8,4):(128,0),
//! (16,2):(128,0), 32:128 (threads 0–7 / 0–15 / 0–31 supply rows), and destination 32:32 with
//! register stride 1024 bits (thread t holds 32-bit word t of each matrix, i.e. row t/4, word t%4);
//! `SM75_U16x{2,4,8}_LDSM_T` have destination ((4,8),(16,2)):((256,16),(1,128)): thread
//! t = t0 + 4·t1 holds, in half h, the 16-bit element at bit 256·t0 + 128·h + 16·t1, i.e. row
//! 2·t0 + h, column t1. Both agree with the reading above.

mod common;

use common::*;
use freelunch_ptx::FaultKind;

/// Shared memory used: 64 rows of 16 bytes.
const SMEM: usize = 1024;

/// The 16-bit value the test puts at element `e` (byte 2e) of shared memory: a bijection of
/// 0..65536, so every element is told apart and none is a simple function of its position.
fn id(e: usize) -> u16 {
    ((e as u32).wrapping_mul(0x9E37) as u16) ^ 0x5A5A
}

fn id_at(byte: usize) -> u32 {
    assert_eq!(byte % 2, 0);
    id(byte / 2) as u32
}

/// Byte offset in shared memory of row `x` (= matrix·8 + row) as supplied by lane `x`: rows are
/// scattered over the 64 16-byte slots, not contiguous and not in order.
fn row_offset(x: usize) -> usize {
    ((x * 37 + 11) % 64) * 16
}

/// Fills 1 KiB of shared memory from `src` (8 words per thread, then `bar.sync 0`), then every
/// lane loads its row offset from `rows[lane]`, runs one ldmatrix and stores its registers to
/// `out[lane*4 + m]`.
fn kernel(num: usize, trans: bool, generic: bool, prologue: &str) -> String {
    let regs: Vec<String> = (0..num).map(|m| format!("%r{}", 10 + m)).collect();
    let mut fill = String::new();
    for k in 0..SMEM / 4 / 32 {
        fill += &format!(
            "    add.u32 %r2, %r1, {};\n    mul.wide.u32 %rd4, %r2, 4;\n    add.s64 %rd5, %rd1, %rd4;\n    ld.global.u32 %r3, [%rd5];\n    add.s64 %rd6, %rd10, %rd4;\n    st.shared.u32 [%rd6], %r3;\n",
            32 * k
        );
    }
    let mut store = String::new();
    for (m, r) in regs.iter().enumerate() {
        store += &format!("    st.global.u32 [%rd13+{}], {r};\n", 4 * m);
    }
    let (addr, space) = if generic {
        ("    cvta.shared.u64 %rd11, %rd11;\n", "")
    } else {
        ("", ".shared")
    };
    format!(
        r#"{HEADER}
.visible .entry ldm(.param .u64 src, .param .u64 rows, .param .u64 out)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<24>;
    .reg .b64 %rd<24>;
    .shared .align 16 .b8 smem[{SMEM}];
    ld.param.u64 %rd1, [src];
    ld.param.u64 %rd2, [rows];
    ld.param.u64 %rd3, [out];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    cvta.to.global.u64 %rd3, %rd3;
    mov.u32 %r1, %tid.x;
    mov.u64 %rd10, smem;
{fill}    bar.sync 0;
    mul.wide.u32 %rd7, %r1, 4;
    add.s64 %rd8, %rd2, %rd7;
    ld.global.u32 %r4, [%rd8];
    cvt.u64.u32 %rd9, %r4;
    add.s64 %rd11, %rd10, %rd9;
{addr}    mul.wide.u32 %rd12, %r1, 16;
    add.s64 %rd13, %rd3, %rd12;
{prologue}    ldmatrix.sync.aligned.m8n8.x{num}{trans}{space}.b16 {{{regs}}}, [%rd11];
{store}DONE:
    ret;
}}
"#,
        trans = if trans { ".trans" } else { "" },
        regs = regs.join(", "),
    )
}

/// The shared memory image and the per-lane row offsets. Lanes that supply no address for
/// `.num` get valid offsets of other rows, so using them would give wrong values.
fn inputs() -> (Vec<u32>, Vec<u32>) {
    let src: Vec<u32> = (0..SMEM / 4)
        .map(|w| id(2 * w) as u32 | (id(2 * w + 1) as u32) << 16)
        .collect();
    let rows: Vec<u32> = (0..32).map(|x| row_offset(x) as u32).collect();
    (src, rows)
}

/// What lane `lane` must hold in register `m` (matrix m) per §9.7.14.5.15.
fn expected(lane: usize, m: usize, trans: bool) -> u32 {
    let half = |h: usize| -> u32 {
        if trans {
            // Column-major: half h is element lane/4 of row 2·(lane%4)+h.
            id_at(row_offset(m * 8 + 2 * (lane % 4) + h) + 2 * (lane / 4))
        } else {
            // Row lane/4, elements 2·(lane%4)+h.
            id_at(row_offset(m * 8 + lane / 4) + 2 * (2 * (lane % 4) + h))
        }
    };
    half(0) | half(1) << 16
}

fn check(num: usize, trans: bool, generic: bool) {
    let dev = device();
    let (src, rows) = inputs();
    let psrc = upload_u32(&dev, &src);
    let prows = upload_u32(&dev, &rows);
    let pout = output(&dev, 32 * 4, 0xee);
    run(
        &dev,
        &kernel(num, trans, generic, ""),
        "ldm",
        1,
        32,
        &[
            &psrc.to_le_bytes(),
            &prows.to_le_bytes(),
            &pout.to_le_bytes(),
        ],
    );
    let out = download_u32(&dev, pout, 32 * 4);
    for lane in 0..32 {
        for m in 0..4 {
            let got = out[lane * 4 + m];
            let want = if m < num {
                expected(lane, m, trans)
            } else {
                0xeeee_eeee
            };
            assert_eq!(
                got,
                want,
                "ldmatrix .x{num}{} lane {lane} register {m}: want {want:#010x}, got {got:#010x}",
                if trans { ".trans" } else { "" }
            );
        }
    }
}

/// PTX ISA 9.1 §9.7.14.5.15 ldmatrix (cross-checked with CuTe `SM75_U32x1_LDSM_N`): `.x1`, rows
/// from threads 0–7 only, thread t gets row t/4 elements 2(t%4) (low) and 2(t%4)+1 (high).
#[test]
fn ldmatrix_x1() {
    check(1, false, false);
}

/// PTX ISA 9.1 §9.7.14.5.15 (CuTe `SM75_U32x2_LDSM_N`): `.x2`, matrix 1's rows from threads
/// 8–15, in the second register.
#[test]
fn ldmatrix_x2() {
    check(2, false, false);
}

/// PTX ISA 9.1 §9.7.14.5.15 (CuTe `SM75_U32x4_LDSM_N`): `.x4`, matrices 0–3 from threads
/// 0–7, 8–15, 16–23, 24–31 into registers 0–3.
#[test]
fn ldmatrix_x4() {
    check(4, false, false);
}

/// PTX ISA 9.1 §9.7.14.5.15 `.trans` (CuTe `SM75_U16x2_LDSM_T`): thread t gets element t/4 of
/// rows 2(t%4) (low) and 2(t%4)+1 (high).
#[test]
fn ldmatrix_x1_trans() {
    check(1, true, false);
}

/// PTX ISA 9.1 §9.7.14.5.15 `.trans` (CuTe `SM75_U16x4_LDSM_T`), two matrices.
#[test]
fn ldmatrix_x2_trans() {
    check(2, true, false);
}

/// PTX ISA 9.1 §9.7.14.5.15 `.trans` (CuTe `SM75_U16x8_LDSM_T`), four matrices.
#[test]
fn ldmatrix_x4_trans() {
    check(4, true, false);
}

/// PTX ISA 9.1 §9.7.14.5.15: "If no state space is provided, generic addressing is used, such
/// that the address in p points into .shared space." The same loads through `cvta.shared`
/// generic addresses.
#[test]
fn ldmatrix_generic_addresses() {
    check(4, false, true);
    check(2, true, true);
}

/// PTX ISA 9.1 §9.7.14.5.15: "The behavior of `ldmatrix` is undefined if ... any thread in the
/// warp has exited." Lanes 16–31 exit after the barrier, before an `.x2` ldmatrix whose addresses
/// all come from lanes 0–15: still must be reported.
#[test]
fn ldmatrix_after_part_of_the_warp_exited_is_reported() {
    let dev = device();
    let (src, rows) = inputs();
    let psrc = upload_u32(&dev, &src);
    let prows = upload_u32(&dev, &rows);
    let pout = output(&dev, 32 * 4, 0);
    let ptx = kernel(
        2,
        false,
        false,
        "    setp.ge.u32 %p1, %r1, 16;\n    @%p1 exit;\n",
    );
    let r = launch(
        &dev,
        &ptx,
        "ldm",
        1,
        32,
        &[
            &psrc.to_le_bytes(),
            &prows.to_le_bytes(),
            &pout.to_le_bytes(),
        ],
    );
    expect_fault(r, &[FaultKind::Divergence, FaultKind::Deadlock], "ldmatrix");
}

/// PTX ISA 9.1 §9.7.14.5.15: "The mandatory `.aligned` qualifier indicates that all threads in
/// the warp must execute the same `ldmatrix` instruction." Odd lanes branch around it.
#[test]
fn ldmatrix_reached_by_part_of_a_warp_is_reported() {
    let dev = device();
    let (src, rows) = inputs();
    let psrc = upload_u32(&dev, &src);
    let prows = upload_u32(&dev, &rows);
    let pout = output(&dev, 32 * 4, 0);
    let ptx = kernel(
        1,
        false,
        false,
        "    and.b32 %r5, %r1, 1;\n    setp.ne.u32 %p1, %r5, 0;\n    @%p1 bra DONE;\n",
    );
    let r = launch(
        &dev,
        &ptx,
        "ldm",
        1,
        32,
        &[
            &psrc.to_le_bytes(),
            &prows.to_le_bytes(),
            &pout.to_le_bytes(),
        ],
    );
    expect_fault(r, &[FaultKind::Divergence, FaultKind::Deadlock], "ldmatrix");
}
