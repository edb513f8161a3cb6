//! The executor's checks, each with a positive control: out-of-bounds and misaligned accesses in
//! every memory space, reads of uninitialised global and shared bytes, races inside a block
//! (shared and global, across warps and between lanes of one warp), races between blocks,
//! `ld.global.nc` of bytes the launch wrote, divergent barriers and collectives, the watchdog,
//! integer division by zero, and the block and warp orders (`RunOptions::order`, `threads`).
//!
//! Every faulting kernel carries `.file`/`.loc` lines, and each test asserts that the fault is of
//! the promised kind and that its message names the kernel, the PTX instruction and the source
//! line `probe.cu:N` of that instruction. Each check has a control: the same kernel without the
//! bug runs cleanly.

mod common;

use common::*;
use freelunch_ptx::{
    pack_params, Checks, Device, DeviceConfig, EmuError, Fault, FaultKind, LaunchRequest, Order,
    RunOptions,
};

/// A module: the common header, then the debug file every `.loc 1 N 0` refers to.
fn module(body: &str) -> String {
    format!("{HEADER}.file 1 \"probe.cu\"\n{body}")
}

fn device_opts(order: Order, threads: usize, budget: u64, checks: Checks) -> Device {
    Device::new(
        DeviceConfig::h200(1 << 26),
        RunOptions {
            checks,
            order,
            threads,
            budget,
        },
    )
}

const ORDERS: [Order; 5] = [
    Order::Forward,
    Order::Reverse,
    Order::Shuffled(1),
    Order::Shuffled(0x5eed),
    Order::Shuffled(0xdead_beef_cafe),
];

/// Loads `ptx` and launches `kernel` on a 1-D grid and block with `dynamic_smem` bytes of
/// dynamic shared memory.
fn launch_dyn(
    dev: &Device,
    ptx: &str,
    kernel: &str,
    grid: u32,
    block: u32,
    dynamic_smem: u32,
    args: &[&[u8]],
) -> Result<(), EmuError> {
    let m = dev
        .load_module(ptx)
        .unwrap_or_else(|e| panic!("the test kernel does not load: {e}\n{ptx}"));
    let k = &m.kernels[kernel];
    let params = pack_params(k, args);
    let r = dev.launch(
        k,
        &LaunchRequest {
            grid: [grid, 1, 1],
            block: [block, 1, 1],
            dynamic_smem,
            max_dynamic_smem: 48 * 1024,
            params: &params,
        },
    );
    dev.unload(m);
    r.map(|_| ())
}

fn ok(r: Result<(), EmuError>, what: &str) {
    if let Err(e) = r {
        panic!("{what}: the launch should succeed, got {e}");
    }
}

/// Asserts a fault of one of `kinds` at an instruction whose text contains `inst`, in kernel
/// `kernel`, whose Display names the kernel, the instruction and `probe.cu:L` for one of
/// `lines`.
fn expect_any(
    r: Result<(), EmuError>,
    kinds: &[FaultKind],
    kernel: &str,
    inst: &str,
    lines: &[u32],
) -> Fault {
    let f = expect_fault(r, kinds, inst);
    let msg = f.to_string();
    assert_eq!(f.kernel, kernel, "{msg}");
    assert!(
        msg.contains(&format!("`{kernel}`")),
        "the message should name the kernel: {msg}"
    );
    assert!(
        msg.contains(inst),
        "the message should name `{inst}`: {msg}"
    );
    assert!(
        lines
            .iter()
            .any(|l| msg.contains(&format!("probe.cu:{l},")) && f.source == format!("probe.cu:{l}")),
        "the message should give the source line probe.cu:{lines:?}: {msg}"
    );
    f
}

fn expect_at(
    r: Result<(), EmuError>,
    kind: FaultKind,
    kernel: &str,
    inst: &str,
    line: u32,
) -> Fault {
    expect_any(r, &[kind], kernel, inst, &[line])
}

fn addr(a: u64) -> [u8; 8] {
    a.to_le_bytes()
}

// ------------------------------------------------------------------------------------------
// Bounds and alignment
// ------------------------------------------------------------------------------------------

/// One thread runs `op` at `probe.cu:10` with `%rd1` = the u64 parameter `paddr`, as a global
/// address (`space` "global"), an offset into 64 bytes of static shared memory (after which come
/// the dynamic bytes), or an offset into a 16-byte local depot.
fn single(kernel: &str, space: &str, op: &str) -> String {
    let base = match space {
        "global" => "    mov.u64 %rd4, %rd1;\n",
        "shared" => "    mov.u64 %rd5, sh;\n    add.s64 %rd4, %rd5, %rd1;\n",
        "local" => "    mov.u64 %SPL, __local_depot0;\n    add.s64 %rd4, %SPL, %rd1;\n",
        _ => unreachable!(),
    };
    module(&format!(
        r#"
.extern .shared .align 16 .b8 dsh[];

.visible .entry {kernel}(.param .u64 paddr)
{{
    .local .align 16 .b8 __local_depot0[16];
    .shared .align 16 .b8 sh[64];
    .reg .b16 %h<4>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;
    .reg .b64 %SPL;
    ld.param.u64 %rd1, [paddr];
{base}    mov.u32 %r1, 1;
    mov.u32 %r2, 2;
    mov.u32 %r3, 3;
    mov.u32 %r4, 4;
    mov.u64 %rd2, 5;
    mov.u64 %rd3, 6;
    mov.u16 %h1, 7;
    mov.u16 %h2, 8;
    .loc 1 10 0
    {op}
    .loc 1 11 0
    ret;
}}
"#
    ))
}

/// Runs `single` in one thread with `paddr` = `a` and `dynamic` bytes of dynamic shared memory.
fn run_single(
    dev: &Device,
    kernel: &str,
    space: &str,
    op: &str,
    a: u64,
    dynamic: u32,
) -> Result<(), EmuError> {
    launch_dyn(
        dev,
        &single(kernel, space, op),
        kernel,
        1,
        1,
        dynamic,
        &[&addr(a)],
    )
}

/// A buffer of `bytes` bytes, all written by the host.
fn filled(dev: &Device, bytes: u64) -> u64 {
    let a = dev.alloc(bytes).expect("alloc");
    dev.memset(a, 0x11, bytes).expect("memset");
    a
}

#[test]
fn global_load_past_the_end_of_an_allocation() {
    let dev = device();
    let buf = filled(&dev, 64);
    let op = "ld.global.u32 %r1, [%rd4];";
    ok(
        run_single(&dev, "oob_end", "global", op, buf + 60, 0),
        "the last word",
    );
    let f = expect_at(
        run_single(&dev, "oob_end", "global", op, buf + 64, 0),
        FaultKind::OutOfBounds,
        "oob_end",
        "ld.global.u32",
        10,
    );
    assert!(f.detail.contains("past the end"), "{f}");
}

#[test]
fn global_vector_load_running_past_the_end() {
    let dev = device();
    let buf = filled(&dev, 60);
    let op = "ld.global.v2.u32 {%r1, %r2}, [%rd4];";
    ok(
        run_single(&dev, "oob_run", "global", op, buf + 48, 0),
        "in bounds",
    );
    let f = expect_at(
        run_single(&dev, "oob_run", "global", op, buf + 56, 0),
        FaultKind::OutOfBounds,
        "oob_run",
        "ld.global.v2.u32",
        10,
    );
    assert!(f.detail.contains("past the end"), "{f}");
}

#[test]
fn global_store_past_the_end_and_before_the_start() {
    let dev = device();
    let _pad = filled(&dev, 4);
    let buf = filled(&dev, 64);
    let op = "st.global.u32 [%rd4], %r1;";
    ok(
        run_single(&dev, "oob_st", "global", op, buf, 0),
        "the first word",
    );
    expect_at(
        run_single(&dev, "oob_st", "global", op, buf + 64, 0),
        FaultKind::OutOfBounds,
        "oob_st",
        "st.global.u32",
        10,
    );
    let f = expect_at(
        run_single(&dev, "oob_st", "global", op, buf - 4, 0),
        FaultKind::OutOfBounds,
        "oob_st",
        "st.global.u32",
        10,
    );
    assert!(f.detail.contains("before"), "{f}");
}

#[test]
fn global_load_before_the_start_of_an_allocation() {
    let dev = device();
    let buf = filled(&dev, 64);
    let op = "ld.global.u32 %r1, [%rd4];";
    let f = expect_at(
        run_single(&dev, "oob_before", "global", op, buf - 4, 0),
        FaultKind::OutOfBounds,
        "oob_before",
        "ld.global.u32",
        10,
    );
    assert!(f.detail.contains("before"), "{f}");
}

/// 4 bytes before an allocation that follows one whose size is a multiple of 256 (so that the
/// address is also within the gap after the earlier one).
#[test]

fn global_load_just_before_an_allocation_after_a_full_one() {
    let dev = device();
    let _full = filled(&dev, 256);
    let buf = filled(&dev, 64);
    let op = "ld.global.u32 %r1, [%rd4];";
    let f = expect_at(
        run_single(&dev, "oob_before", "global", op, buf - 4, 0),
        FaultKind::OutOfBounds,
        "oob_before",
        "ld.global.u32",
        10,
    );
    assert!(f.detail.contains("before"), "{f}");
}

#[test]
fn global_load_of_a_freed_allocation() {
    let dev = device();
    let buf = filled(&dev, 64);
    let op = "ld.global.u32 %r1, [%rd4];";
    ok(
        run_single(&dev, "use_after_free", "global", op, buf + 8, 0),
        "before the free",
    );
    dev.free(buf).expect("free");
    let f = expect_at(
        run_single(&dev, "use_after_free", "global", op, buf + 8, 0),
        FaultKind::OutOfBounds,
        "use_after_free",
        "ld.global.u32",
        10,
    );
    assert!(f.detail.contains("freed"), "{f}");
}

#[test]
fn global_access_in_no_allocation() {
    let dev = device();
    let _buf = filled(&dev, 64);
    for (a, op) in [
        (0u64, "ld.global.u32 %r1, [%rd4];"),
        (0x1000, "ld.global.u32 %r1, [%rd4];"),
        (0x1000, "st.global.u32 [%rd4], %r1;"),
        (0x1000, "ld.u32 %r1, [%rd4];"),
    ] {
        let f = expect_at(
            run_single(&dev, "wild", "global", op, a, 0),
            FaultKind::OutOfBounds,
            "wild",
            op.split_whitespace().next().unwrap(),
            10,
        );
        assert!(f.detail.contains("no allocation"), "{f}");
    }
}

#[test]
fn generic_load_past_the_end_of_an_allocation() {
    let dev = device();
    let buf = filled(&dev, 32);
    let op = "ld.u32 %r1, [%rd4];";
    ok(
        run_single(&dev, "oob_generic", "global", op, buf + 28, 0),
        "the last word",
    );
    expect_at(
        run_single(&dev, "oob_generic", "global", op, buf + 32, 0),
        FaultKind::OutOfBounds,
        "oob_generic",
        "ld.u32",
        10,
    );
}

#[test]
fn shared_access_past_static_and_dynamic_shared_memory() {
    let dev = device();
    let st = "st.shared.u32 [%rd4], %r1;";
    // 64 static bytes only.
    ok(
        run_single(&dev, "oob_shared", "shared", st, 60, 0),
        "the last static word",
    );
    expect_at(
        run_single(&dev, "oob_shared", "shared", st, 64, 0),
        FaultKind::OutOfBounds,
        "oob_shared",
        "st.shared.u32",
        10,
    );
    // 64 static + 64 dynamic bytes.
    ok(
        run_single(&dev, "oob_shared", "shared", st, 124, 64),
        "the last dynamic word",
    );
    let f = expect_at(
        run_single(&dev, "oob_shared", "shared", st, 128, 64),
        FaultKind::OutOfBounds,
        "oob_shared",
        "st.shared.u32",
        10,
    );
    assert!(f.detail.contains("shared"), "{f}");
    let ld = "ld.shared.u32 %r1, [%rd4];";
    expect_at(
        run_single(&dev, "oob_shared", "shared", ld, 128, 64),
        FaultKind::OutOfBounds,
        "oob_shared",
        "ld.shared.u32",
        10,
    );
    // A generic address in the shared window, past its end.
    let gen = "cvta.shared.u64 %rd6, %rd4;\n    st.u32 [%rd6], %r1;";
    ok(
        run_single(&dev, "oob_shared_gen", "shared", gen, 124, 64),
        "generic, in bounds",
    );
    expect_at(
        run_single(&dev, "oob_shared_gen", "shared", gen, 128, 64),
        FaultKind::OutOfBounds,
        "oob_shared_gen",
        "st.u32",
        10,
    );
}

#[test]
fn local_access_past_the_local_depot() {
    let dev = device();
    let st = "st.local.u32 [%rd4], %r1;";
    ok(
        run_single(&dev, "oob_local", "local", st, 12, 0),
        "the last word",
    );
    let f = expect_at(
        run_single(&dev, "oob_local", "local", st, 16, 0),
        FaultKind::OutOfBounds,
        "oob_local",
        "st.local.u32",
        10,
    );
    assert!(f.detail.contains("local"), "{f}");
    let ld = "ld.local.v2.u32 {%r1, %r2}, [%rd4];";
    ok(
        run_single(&dev, "oob_local", "local", ld, 8, 0),
        "the last two words",
    );
    expect_at(
        run_single(&dev, "oob_local", "local", ld, 16, 0),
        FaultKind::OutOfBounds,
        "oob_local",
        "ld.local.v2.u32",
        10,
    );
    // The generic form (`cvta.local`), as NVRTC addresses a stack array through %SP.
    let gen = "cvta.local.u64 %rd6, %rd4;\n    st.u32 [%rd6], %r1;";
    ok(
        run_single(&dev, "oob_local_gen", "local", gen, 12, 0),
        "generic, in bounds",
    );
    expect_at(
        run_single(&dev, "oob_local_gen", "local", gen, 16, 0),
        FaultKind::OutOfBounds,
        "oob_local_gen",
        "st.u32",
        10,
    );
}

/// Each width and vector form at an address that is not a multiple of its size, and the
/// aligned control.
#[test]
fn misaligned_global_loads_and_stores_of_every_width() {
    let dev = device();
    let buf = filled(&dev, 256);
    let cases: [(&str, &str, u64, u64); 12] = [
        ("ld.global.u16", "%h1, [%rd4];", 2, 1),
        ("ld.global.u32", "%r1, [%rd4];", 4, 2),
        ("ld.global.u64", "%rd2, [%rd4];", 8, 4),
        ("ld.global.v2.u16", "{%h1, %h2}, [%rd4];", 4, 2),
        ("ld.global.v2.u32", "{%r1, %r2}, [%rd4];", 8, 4),
        ("ld.global.v4.u32", "{%r1, %r2, %r3, %r4}, [%rd4];", 16, 8),
        ("ld.global.v2.u64", "{%rd2, %rd3}, [%rd4];", 16, 8),
        ("st.global.u16", "[%rd4], %h1;", 2, 1),
        ("st.global.u32", "[%rd4], %r1;", 4, 2),
        ("st.global.u64", "[%rd4], %rd2;", 8, 4),
        ("st.global.v2.u32", "[%rd4], {%r1, %r2};", 8, 4),
        ("st.global.v4.u32", "[%rd4], {%r1, %r2, %r3, %r4};", 16, 12),
    ];
    for (opc, operands, aligned, bad) in cases {
        let op = format!("{opc} {operands}");
        ok(
            run_single(&dev, "misaligned", "global", &op, buf + 64 + aligned, 0),
            &op,
        );
        let f = expect_at(
            run_single(&dev, "misaligned", "global", &op, buf + 64 + bad, 0),
            FaultKind::Misaligned,
            "misaligned",
            opc,
            10,
        );
        assert_eq!(f.thread, [0, 0, 0]);
    }
}

#[test]
fn misaligned_shared_and_local_accesses() {
    let dev = device();
    for (space, op, aligned, bad) in [
        ("shared", "st.shared.u32 [%rd4], %r1;", 4, 2),
        ("shared", "st.shared.v2.u32 [%rd4], {%r1, %r2};", 8, 4),
        (
            "shared",
            "st.shared.v4.u32 [%rd4], {%r1, %r2, %r3, %r4};",
            16,
            4,
        ),
        ("shared", "st.shared.u64 [%rd4], %rd2;", 8, 12),
        ("shared", "st.shared.u16 [%rd4], %h1;", 2, 3),
        ("local", "st.local.u32 [%rd4], %r1;", 4, 1),
        ("local", "st.local.u64 [%rd4], %rd2;", 8, 4),
    ] {
        let opc = op.split_whitespace().next().unwrap();
        ok(run_single(&dev, "misaligned_sl", space, op, aligned, 0), op);
        expect_at(
            run_single(&dev, "misaligned_sl", space, op, bad, 0),
            FaultKind::Misaligned,
            "misaligned_sl",
            opc,
            10,
        );
    }
}

/// A warp writes 256 bytes of shared memory, then `ldmatrix .x1` with lane L < 8 giving row
/// address `sh + 16·L + shift`.
fn ldmatrix_kernel() -> String {
    module(
        r#"
.visible .entry ldm(.param .u64 pout, .param .u32 pshift)
{
    .reg .b32 %r<12>;
    .reg .b64 %rd<12>;
    .shared .align 16 .b8 sh[256];
    ld.param.u64 %rd1, [pout];
    ld.param.u32 %r9, [pshift];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %tid.x;
    mov.u64 %rd2, sh;
    mul.wide.u32 %rd3, %r1, 8;
    add.s64 %rd4, %rd2, %rd3;
    mov.u32 %r2, 0x00010001;
    mul.lo.u32 %r2, %r2, %r1;
    mov.u32 %r3, %r2;
    st.shared.v2.u32 [%rd4], {%r2, %r3};
    bar.sync 0;
    and.b32 %r4, %r1, 7;
    shl.b32 %r5, %r4, 4;
    add.u32 %r5, %r5, %r9;
    cvt.u64.u32 %rd5, %r5;
    add.s64 %rd6, %rd2, %rd5;
    .loc 1 30 0
    ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%r6}, [%rd6];
    .loc 1 31 0
    mul.wide.u32 %rd7, %r1, 4;
    add.s64 %rd8, %rd1, %rd7;
    st.global.u32 [%rd8], %r6;
    ret;
}
"#,
    )
}

#[test]
fn ldmatrix_row_not_16_byte_aligned() {
    let dev = device();
    let out = output(&dev, 32, 0);
    let ptx = ldmatrix_kernel();
    run(&dev, &ptx, "ldm", 1, 32, &[&addr(out), &0u32.to_le_bytes()]);
    for shift in [8u32, 4, 2] {
        expect_at(
            launch(
                &dev,
                &ptx,
                "ldm",
                1,
                32,
                &[&addr(out), &shift.to_le_bytes()],
            ),
            FaultKind::Misaligned,
            "ldm",
            "ldmatrix",
            30,
        );
    }
}

// ------------------------------------------------------------------------------------------
// Uninitialised memory
// ------------------------------------------------------------------------------------------

const COPY_WORDS: &str = r#"
.visible .entry copy_words(.param .u64 pin, .param .u64 pout)
{
    .reg .b32 %r<4>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [pin];
    ld.param.u64 %rd2, [pout];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r1, %tid.x;
    mul.wide.u32 %rd3, %r1, 4;
    add.s64 %rd4, %rd1, %rd3;
    .loc 1 40 0
    ld.global.u32 %r2, [%rd4];
    .loc 1 41 0
    add.s64 %rd5, %rd2, %rd3;
    st.global.u32 [%rd5], %r2;
    ret;
}

.visible .entry write_words(.param .u64 pout)
{
    .reg .b32 %r<4>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd2, [pout];
    cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r1, %tid.x;
    mul.wide.u32 %rd3, %r1, 4;
    add.s64 %rd5, %rd2, %rd3;
    mul.lo.u32 %r2, %r1, 3;
    .loc 1 45 0
    st.global.u32 [%rd5], %r2;
    ret;
}

.visible .entry copy_v4(.param .u64 pin, .param .u64 pout)
{
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [pin];
    ld.param.u64 %rd2, [pout];
    .loc 1 48 0
    ld.global.v4.u32 {%r1, %r2, %r3, %r4}, [%rd1];
    .loc 1 49 0
    st.global.v4.u32 [%rd2], {%r1, %r2, %r3, %r4};
    ret;
}
"#;

fn copy_words(dev: &Device, src: u64, dst: u64, n: u32) -> Result<(), EmuError> {
    launch(
        dev,
        &module(COPY_WORDS),
        "copy_words",
        1,
        n,
        &[&addr(src), &addr(dst)],
    )
}

#[test]
fn global_read_of_an_allocation_nothing_wrote() {
    let dev = device();
    let src = dev.alloc(64).unwrap();
    let dst = output(&dev, 16, 0);
    assert!(!dev.initialised(src, 64).unwrap());
    let f = expect_at(
        copy_words(&dev, src, dst, 16),
        FaultKind::Uninitialised,
        "copy_words",
        "ld.global.u32",
        40,
    );
    assert_eq!(f.thread, [0, 0, 0]);
    // The control: once the host writes it, the same launch runs.
    let words: Vec<u8> = (0..16u32).flat_map(|w| (w * 7).to_le_bytes()).collect();
    dev.write(src, &words).unwrap();
    ok(copy_words(&dev, src, dst, 16), "after dev.write");
    assert_eq!(
        download_u32(&dev, dst, 16),
        (0..16).map(|w| w * 7).collect::<Vec<_>>()
    );
}

#[test]
fn memset_initialises() {
    let dev = device();
    let src = dev.alloc(64).unwrap();
    let dst = output(&dev, 16, 0);
    dev.memset(src, 0x5a, 64).unwrap();
    ok(copy_words(&dev, src, dst, 16), "after dev.memset");
    assert_eq!(download_u32(&dev, dst, 16), vec![0x5a5a_5a5a; 16]);
}

#[test]
fn global_read_of_a_partially_written_buffer() {
    let dev = device();
    let dst = output(&dev, 16, 0);
    // The first 32 bytes written: threads 0..7 read written words, thread 8 does not.
    let src = dev.alloc(64).unwrap();
    dev.write(src, &[1u8; 32]).unwrap();
    ok(copy_words(&dev, src, dst, 8), "the written half");
    let f = expect_at(
        copy_words(&dev, src, dst, 16),
        FaultKind::Uninitialised,
        "copy_words",
        "ld.global.u32",
        40,
    );
    assert_eq!(f.thread, [8, 0, 0], "{f}");
    // 62 bytes written: the last word is half written.
    let src = dev.alloc(64).unwrap();
    dev.write(src, &[2u8; 62]).unwrap();
    let f = expect_at(
        copy_words(&dev, src, dst, 16),
        FaultKind::Uninitialised,
        "copy_words",
        "ld.global.u32",
        40,
    );
    assert_eq!(f.thread, [15, 0, 0], "{f}");
    // A 16-byte vector load whose last 4 bytes were never written.
    let src = dev.alloc(16).unwrap();
    dev.write(src, &[3u8; 12]).unwrap();
    let r = launch(
        &dev,
        &module(COPY_WORDS),
        "copy_v4",
        1,
        1,
        &[&addr(src), &addr(dst)],
    );
    expect_at(
        r,
        FaultKind::Uninitialised,
        "copy_v4",
        "ld.global.v4.u32",
        48,
    );
    dev.write(src + 12, &[3u8; 4]).unwrap();
    let r = launch(
        &dev,
        &module(COPY_WORDS),
        "copy_v4",
        1,
        1,
        &[&addr(src), &addr(dst)],
    );
    ok(r, "the whole vector written");
}

#[test]
fn kernel_writes_initialise_for_later_launches() {
    let dev = device();
    let buf = dev.alloc(64).unwrap();
    let dst = output(&dev, 16, 0);
    run(
        &dev,
        &module(COPY_WORDS),
        "write_words",
        1,
        16,
        &[&addr(buf)],
    );
    assert!(dev.initialised(buf, 64).unwrap());
    ok(
        copy_words(&dev, buf, dst, 16),
        "after a kernel wrote the buffer",
    );
    assert_eq!(
        download_u32(&dev, dst, 16),
        (0..16).map(|w| w * 3).collect::<Vec<_>>()
    );
}

#[test]
fn device_copy_carries_initialisation() {
    let dev = device();
    let dst = output(&dev, 16, 0);
    let written = upload_u32(&dev, &[9; 16]);
    let unwritten = dev.alloc(64).unwrap();
    let a = dev.alloc(64).unwrap();
    dev.copy(a, written, 64).unwrap();
    ok(copy_words(&dev, a, dst, 16), "a copy of written bytes");
    let b = dev.alloc(64).unwrap();
    dev.copy(b, unwritten, 64).unwrap();
    expect_at(
        copy_words(&dev, b, dst, 16),
        FaultKind::Uninitialised,
        "copy_words",
        "ld.global.u32",
        40,
    );
}

/// Blocks `ctaid.x < pwriters` write `sh[t]` (all of it, or with `phalf` != 0 only its low
/// half); every block then reads `sh[t]` after a barrier and stores it to `out`.
const SHARED_READ: &str = r#"
.visible .entry sh_read(.param .u64 pout, .param .u32 pwriters, .param .u32 phalf)
{
    .reg .pred %p<4>;
    .reg .b16 %h<4>;
    .reg .b32 %r<12>;
    .reg .b64 %rd<12>;
    .shared .align 4 .b8 sh[512];
    ld.param.u64 %rd1, [pout];
    ld.param.u32 %r8, [pwriters];
    ld.param.u32 %r9, [phalf];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u64 %rd2, sh;
    mul.wide.u32 %rd3, %r1, 4;
    add.s64 %rd4, %rd2, %rd3;
    mad.lo.u32 %r4, %r2, 1000, %r1;
    setp.lt.u32 %p1, %r2, %r8;
    setp.ne.u32 %p2, %r9, 0;
    and.pred %p3, %p1, %p2;
    cvt.u16.u32 %h1, %r4;
    .loc 1 50 0
    @%p3 st.shared.u16 [%rd4], %h1;
    not.pred %p2, %p2;
    and.pred %p3, %p1, %p2;
    .loc 1 51 0
    @%p3 st.shared.u32 [%rd4], %r4;
    .loc 1 52 0
    bar.sync 0;
    .loc 1 53 0
    ld.shared.u32 %r5, [%rd4];
    .loc 1 54 0
    mad.lo.u32 %r6, %r2, %r3, %r1;
    mul.wide.u32 %rd5, %r6, 4;
    add.s64 %rd6, %rd1, %rd5;
    st.global.u32 [%rd6], %r5;
    ret;
}
"#;

fn shared_read(dev: &Device, grid: u32, writers: u32, half: bool) -> Result<(), EmuError> {
    let out = output(dev, 64 * grid as usize, 0);
    launch(
        dev,
        &module(SHARED_READ),
        "sh_read",
        grid,
        64,
        &[
            &addr(out),
            &writers.to_le_bytes(),
            &(half as u32).to_le_bytes(),
        ],
    )
}

#[test]
fn shared_read_of_bytes_nothing_in_the_block_wrote() {
    let init_only = Checks {
        init: true,
        races: false,
    };
    for checks in [Checks::ALL, init_only] {
        shared_uninitialised(checks);
    }
}

fn shared_uninitialised(checks: Checks) {
    let dev = device_opts(Order::Forward, 1, 1 << 24, checks);
    ok(
        shared_read(&dev, 1, 1, false),
        "the block writes before it reads",
    );
    let f = expect_at(
        shared_read(&dev, 1, 0, false),
        FaultKind::Uninitialised,
        "sh_read",
        "ld.shared.u32",
        53,
    );
    assert_eq!(f.block, [0, 0, 0]);
    // Only the low two bytes of each word written.
    expect_at(
        shared_read(&dev, 1, 1, true),
        FaultKind::Uninitialised,
        "sh_read",
        "ld.shared.u32",
        53,
    );
}

/// Block 0 writes its shared memory and reads it; blocks 1 and 2 only read. Run on one host
/// thread, the same worker (and shared buffer) runs every block in turn: a later block must not
/// see block 0's writes as its own.
#[test]
fn a_later_block_does_not_inherit_an_earlier_blocks_shared_writes() {
    let init_only = Checks {
        init: true,
        races: false,
    };
    for (threads, checks) in [(1, Checks::ALL), (2, Checks::ALL), (1, init_only)] {
        let dev = device_opts(Order::Forward, threads, 1 << 24, checks);
        let f = expect_at(
            shared_read(&dev, 3, 1, false),
            FaultKind::Uninitialised,
            "sh_read",
            "ld.shared.u32",
            53,
        );
        assert_ne!(f.block, [0, 0, 0], "{f}");
        // The control: every block writes its own.
        ok(shared_read(&dev, 3, 3, false), "every block writes");
    }
    // The values: each block reads what it wrote.
    let dev = device();
    let out = output(&dev, 64 * 3, 0);
    run(
        &dev,
        &module(SHARED_READ),
        "sh_read",
        3,
        64,
        &[&addr(out), &3u32.to_le_bytes(), &0u32.to_le_bytes()],
    );
    let got = download_u32(&dev, out, 64 * 3);
    for (i, v) in got.iter().enumerate() {
        assert_eq!(*v, (i as u32 / 64) * 1000 + i as u32 % 64);
    }
}

// ------------------------------------------------------------------------------------------
// Races within a block
// ------------------------------------------------------------------------------------------

/// 64 threads (two warps). Every thread writes `sh[t]`, and the host has written `buf`; after a
/// barrier, thread `a` does `first` (at probe.cu:20) on `[%rd8]` (sh[0], or buf[0] in global
/// memory), then every thread does `sep` (probe.cu:21), then thread `b` does `second`
/// (probe.cu:22) on the same word. `W` is a store of 7, `R` a load.
fn race_kernel(
    kernel: &str,
    global: bool,
    a: u32,
    first: char,
    sep: &str,
    b: u32,
    second: char,
) -> String {
    let space = if global { "global" } else { "shared" };
    let op = |p: u32, c: char| match c {
        'W' => format!("@%p{p} st.{space}.u32 [%rd8], %r6;"),
        'R' => format!("@%p{p} ld.{space}.u32 %r5, [%rd8];"),
        _ => unreachable!(),
    };
    let target = if global { "%rd1" } else { "%rd2" };
    module(&format!(
        r#"
.visible .entry {kernel}(.param .u64 pbuf, .param .u64 pout)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<12>;
    .reg .b64 %rd<12>;
    .shared .align 4 .b8 sh[256];
    ld.param.u64 %rd1, [pbuf];
    ld.param.u64 %rd9, [pout];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd9, %rd9;
    mov.u32 %r1, %tid.x;
    mov.u64 %rd2, sh;
    mul.wide.u32 %rd3, %r1, 4;
    add.s64 %rd4, %rd2, %rd3;
    st.shared.u32 [%rd4], %r1;
    bar.sync 0;
    mov.u64 %rd8, {target};
    setp.eq.u32 %p1, %r1, {a};
    setp.eq.u32 %p2, %r1, {b};
    mov.u32 %r5, 0;
    mov.u32 %r6, 7;
    .loc 1 20 0
    {first}
    .loc 1 21 0
    {sep}
    .loc 1 22 0
    {second}
    .loc 1 23 0
    add.s64 %rd10, %rd9, %rd3;
    st.global.u32 [%rd10], %r5;
    ret;
}}
"#,
        first = op(1, first),
        second = op(2, second),
    ))
}

const NO_SEP: &str = "mov.u32 %r7, 0;";
const BAR: &str = "bar.sync 0;";
const SHFL: &str = "shfl.sync.idx.b32 %r7, %r1, 0, 31, 0xffffffff;";

fn run_race(
    global: bool,
    a: u32,
    first: char,
    sep: &str,
    b: u32,
    second: char,
) -> Result<(), EmuError> {
    let dev = device();
    let buf = upload_u32(&dev, &[0; 64]);
    let out = output(&dev, 64, 0);
    let k = race_kernel("race", global, a, first, sep, b, second);
    launch(&dev, &k, "race", 1, 64, &[&addr(buf), &addr(out)])
}

/// Every pattern (write-write, write-read, read-write) between `a` and `b`: a `Race` without a
/// separator, none with a `bar.sync`. The race is found at the access that runs second: `b`'s
/// when the two are in one warp (program order) or `b`'s warp runs later (warps run in index
/// order by default), else `a`'s.
fn check_race_patterns(global: bool, a: u32, b: u32) {
    let space = if global { "global" } else { "shared" };
    for (first, second) in [('W', 'W'), ('W', 'R'), ('R', 'W')] {
        let what = format!("{space} {first}{second} threads {a} and {b}");
        let (tid, op, line) = if b / 32 >= a / 32 {
            (b, second, 22)
        } else {
            (a, first, 20)
        };
        let inst = if op == 'W' {
            format!("st.{space}.u32")
        } else {
            format!("ld.{space}.u32")
        };
        let f = expect_at(
            run_race(global, a, first, NO_SEP, b, second),
            FaultKind::Race,
            "race",
            &inst,
            line,
        );
        assert_eq!(f.thread, [tid, 0, 0], "{what}: {f}");
        if let Err(e) = run_race(global, a, first, BAR, b, second) {
            panic!("{what} with a bar.sync between: {e}");
        }
    }
}

#[test]
fn shared_races_between_warps() {
    check_race_patterns(false, 0, 32);
    check_race_patterns(false, 40, 3);
}

#[test]
fn shared_races_between_lanes_of_one_warp() {
    check_race_patterns(false, 0, 1);
    check_race_patterns(false, 17, 4);
    check_race_patterns(false, 33, 63);
}

#[test]
fn global_races_between_warps() {
    check_race_patterns(true, 0, 32);
    check_race_patterns(true, 63, 0);
}

#[test]
fn global_races_between_lanes_of_one_warp() {
    check_race_patterns(true, 0, 1);
    check_race_patterns(true, 31, 2);
}

/// The cross-warp races are found whichever warp runs first.
#[test]
fn races_between_warps_are_found_in_every_warp_order() {
    for order in ORDERS {
        for global in [false, true] {
            for (first, second) in [('W', 'W'), ('W', 'R'), ('R', 'W')] {
                let dev = device_opts(order, 1, 1 << 24, Checks::ALL);
                let buf = upload_u32(&dev, &[0; 64]);
                let out = output(&dev, 64, 0);
                let k = race_kernel("race", global, 3, first, NO_SEP, 50, second);
                let r = launch(&dev, &k, "race", 1, 64, &[&addr(buf), &addr(out)]);
                expect_any(r, &[FaultKind::Race], "race", "", &[20, 22]);
            }
        }
    }
}

/// Lanes 0..15 and 16..31 of one warp in the two arms of a branch: nothing orders them (no
/// collective), so lane 0's write and lane 16's read of one word race; with a barrier after
/// the join and the read moved after it, they do not.
#[test]
fn lanes_in_the_two_arms_of_a_branch_race() {
    let dev = device();
    let main = "    .loc 1 106 0\n    @%p7 st.shared.u32 [flag], %r1;";
    let other = "    .loc 1 107 0\n    ld.shared.u32 %r5, [flag];";
    let k = diverge("arms", 16, main, other);
    let out = output(&dev, 64, 0);
    // One warp: the race is between lanes 0 and 16.
    let f = expect_at(
        launch(&dev, &k, "arms", 1, 32, &[&addr(out)]),
        FaultKind::Race,
        "arms",
        "ld.shared.u32",
        107,
    );
    assert_eq!(f.thread, [16, 0, 0], "{f}");
    // The control: the read after a barrier at the join.
    let after = "    bar.sync 0;\n    and.b32 %r8, %r1, 16;\n    setp.ne.u32 %p6, %r8, 0;\n    @%p6 ld.shared.u32 %r5, [flag];";
    let k = diverge("arms", 16, main, "").replace("DONE:\n", &format!("DONE:\n{after}\n"));
    ok(
        launch(&dev, &k, "arms", 1, 64, &[&addr(out)]),
        "the read after a barrier",
    );
}

/// A collective orders only the lanes that take part in it. Lanes 0..15 run a `shfl.sync` with
/// membermask 0x0000ffff after lane 0's write; lane 16, in the other arm and not in the mask,
/// then reads the word: nothing orders it after lane 0's write.
#[test]

fn a_partial_mask_collective_does_not_order_lanes_outside_the_mask() {
    let dev = device();
    let main = "    .loc 1 106 0\n    @%p7 st.shared.u32 [flag], %r1;\n    .loc 1 108 0\n    shfl.sync.bfly.b32 %r5, %r1, 1, 31, 0x0000ffff;";
    let other = "    .loc 1 107 0\n    ld.shared.u32 %r5, [flag];";
    let out = output(&dev, 64, 0);
    let r = launch(
        &dev,
        &diverge("partial", 16, main, other),
        "partial",
        1,
        32,
        &[&addr(out)],
    );
    let f = expect_at(r, FaultKind::Race, "partial", "ld.shared.u32", 107);
    assert_eq!(f.thread, [16, 0, 0], "{f}");
}

/// A full-mask `shfl.sync` orders the lanes of one warp (a warp collective), but not threads of
/// different warps.
#[test]
fn a_warp_collective_orders_lanes_of_one_warp_only() {
    for global in [false, true] {
        for (first, second) in [('W', 'W'), ('W', 'R'), ('R', 'W')] {
            let what = format!("global {global} {first}{second}");
            if let Err(e) = run_race(global, 0, first, SHFL, 1, second) {
                panic!("{what}: lanes 0 and 1 with a shfl.sync between: {e}");
            }
            if let Err(e) = run_race(global, 5, first, SHFL, 30, second) {
                panic!("{what}: lanes 5 and 30 with a shfl.sync between: {e}");
            }
            expect_fault(
                run_race(global, 0, first, SHFL, 32, second),
                &[FaultKind::Race],
                "",
            );
        }
    }
}

/// `bar.warp.sync` (`__syncwarp()`) is a warp collective too; the executor either supports it,
/// ordering lanes like `shfl.sync`, or refuses the module naming it — never treats it as
/// something else.
#[test]
fn bar_warp_sync_orders_lanes_or_is_refused() {
    let dev = device();
    let k = race_kernel("race", false, 0, 'W', "bar.warp.sync -1;", 1, 'R');
    match dev.load_module(&k) {
        Ok(m) => {
            dev.unload(m);
            if let Err(e) = run_race(false, 0, 'W', "bar.warp.sync -1;", 1, 'R') {
                panic!("bar.warp.sync -1 should order lanes 0 and 1: {e}");
            }
        }
        Err(EmuError::Unsupported { instruction, .. }) => {
            assert!(instruction.contains("bar.warp.sync"), "{instruction}");
        }
        Err(e) => panic!("bar.warp.sync: {e}"),
    }
}

/// `bar.warp.sync` with a membermask that happens to be a small number must not become a
/// block-wide `bar.sync` with that barrier id: here lanes 0 and 1 (`__syncwarp(3)`) synchronise
/// with each other in a branch, then every thread reaches one `bar.sync 0`, which is fine on a
/// GPU (or the executor may refuse `bar.warp.sync` at load).
#[test]

fn bar_warp_sync_with_a_small_mask_is_not_a_block_barrier() {
    let dev = device();
    let out = output(&dev, 64, 0);
    let k = module(
        r#"
.visible .entry warp_bar(.param .u64 pout)
{
    .reg .pred %p<4>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [pout];
    mov.u32 %r1, %tid.x;
    setp.ge.u32 %p1, %r1, 2;
    @%p1 bra JOIN;
    .loc 1 60 0
    bar.warp.sync 3;
JOIN:
    .loc 1 61 0
    bar.sync 0;
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r1;
    ret;
}
"#,
    );
    match dev.load_module(&k) {
        Err(EmuError::Unsupported { .. }) => {} // refusing it is fine
        Err(e) => panic!("{e}"),
        Ok(m) => {
            dev.unload(m);
            if let Err(e) = launch(&dev, &k, "warp_bar", 1, 64, &[&addr(out)]) {
                panic!("{e}");
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Races between blocks, and ld.global.nc
// ------------------------------------------------------------------------------------------

/// Thread 0 of block `pw` (every block with `pw` = -1) writes `buf[pslot]` (`buf[ctaid]` with
/// `pslot` = -1); thread 0 of block `pr` then reads `buf[0]` into `out[ctaid]`.
const BLOCKS: &str = r#"
.visible .entry blocks(.param .u64 pbuf, .param .u64 pout, .param .u32 pw, .param .u32 pslot, .param .u32 pr)
{
    .reg .pred %p<8>;
    .reg .b32 %r<12>;
    .reg .b64 %rd<12>;
    ld.param.u64 %rd1, [pbuf];
    ld.param.u64 %rd2, [pout];
    ld.param.u32 %r7, [pw];
    ld.param.u32 %r8, [pslot];
    ld.param.u32 %r9, [pr];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, %ctaid.x;
    setp.eq.u32 %p1, %r1, 0;
    setp.eq.u32 %p2, %r2, %r7;
    setp.eq.u32 %p3, %r7, -1;
    or.pred %p2, %p2, %p3;
    and.pred %p2, %p2, %p1;
    setp.eq.u32 %p4, %r8, -1;
    selp.u32 %r3, %r2, %r8, %p4;
    mul.wide.u32 %rd3, %r3, 4;
    add.s64 %rd4, %rd1, %rd3;
    add.u32 %r4, %r2, 100;
    .loc 1 70 0
    @%p2 st.global.u32 [%rd4], %r4;
    setp.eq.u32 %p5, %r2, %r9;
    and.pred %p5, %p5, %p1;
    mov.u32 %r5, 0;
    .loc 1 71 0
    @%p5 ld.global.u32 %r5, [%rd1];
    .loc 1 72 0
    mul.wide.u32 %rd5, %r2, 4;
    add.s64 %rd6, %rd2, %rd5;
    @%p1 st.global.u32 [%rd6], %r5;
    ret;
}
"#;

fn blocks(dev: &Device, buf: u64, grid: u32, w: i32, slot: i32, r: i32) -> Result<(), EmuError> {
    let out = output(dev, grid as usize, 0);
    launch(
        dev,
        &module(BLOCKS),
        "blocks",
        grid,
        32,
        &[
            &addr(buf),
            &addr(out),
            &w.to_le_bytes(),
            &slot.to_le_bytes(),
            &r.to_le_bytes(),
        ],
    )
}

#[test]
fn two_blocks_writing_the_same_global_bytes() {
    for order in ORDERS {
        for threads in [1, 2] {
            let dev = device_opts(order, threads, 1 << 24, Checks::ALL);
            let buf = upload_u32(&dev, &[0; 8]);
            let what = format!("{order:?}, {threads} threads");
            // Every block writes buf[0].
            let f = expect_at(
                blocks(&dev, buf, 8, -1, 0, -1),
                FaultKind::BlockRace,
                "blocks",
                "st.global.u32",
                70,
            );
            assert!(f.detail.contains("block"), "{what}: {f}");
            // The control: every block writes its own word.
            if let Err(e) = blocks(&dev, buf, 8, -1, -1, -1) {
                panic!("{what}: blocks writing their own words: {e}");
            }
        }
    }
}

#[test]
fn one_launch_after_another_is_ordered() {
    let dev = device();
    let buf = upload_u32(&dev, &[0; 8]);
    // Launch 1: block 0 writes buf[0]. Launch 2: block 1 writes it, block 0 reads it.
    ok(blocks(&dev, buf, 2, 0, 0, -1), "block 0 writes");
    ok(
        blocks(&dev, buf, 2, 1, 0, -1),
        "block 1 writes in the next launch",
    );
    ok(
        blocks(&dev, buf, 2, -2, 0, 0),
        "block 0 reads in the next launch",
    );
}

/// One block writes buf[0] and another reads it: when the writer runs first (block 0 in forward
/// order, block 1 in reverse order) the read is reported.
#[test]
fn a_block_reading_what_another_block_wrote() {
    for (order, writer, reader) in [(Order::Forward, 0, 1), (Order::Reverse, 1, 0)] {
        let dev = device_opts(order, 1, 1 << 24, Checks::ALL);
        let buf = upload_u32(&dev, &[0; 8]);
        let f = expect_at(
            blocks(&dev, buf, 2, writer, 0, reader),
            FaultKind::BlockRace,
            "blocks",
            "ld.global.u32",
            71,
        );
        assert_eq!(f.block, [reader as u32, 0, 0], "{f}");
        assert!(
            f.detail.contains("block (") && f.detail.contains("wrote"),
            "{f}"
        );
        // The control: the reader reads what it wrote itself.
        ok(
            blocks(&dev, buf, 2, reader, 0, reader),
            "a block reading its own write",
        );
    }
}

/// The same race, in every order and with one and two host threads: the reader may run before
/// the writer.
#[test]

fn a_block_reading_what_another_block_wrote_in_every_order() {
    let mut missed = Vec::new();
    for order in ORDERS {
        for threads in [1, 2] {
            let dev = device_opts(order, threads, 1 << 24, Checks::ALL);
            let buf = upload_u32(&dev, &[0; 8]);
            match blocks(&dev, buf, 2, 1, 0, 0) {
                Err(EmuError::Fault(f)) if f.kind == FaultKind::BlockRace => {}
                r => missed.push(format!("{order:?}, {threads} threads: {r:?}")),
            }
        }
    }
    assert!(
        missed.is_empty(),
        "block 0 reads what block 1 writes, not reported in:\n{}",
        missed.join("\n")
    );
}

/// Thread 0 writes buf[0]; after a barrier thread 1 reads it with `ld.global.nc` (or a plain
/// `ld.global` in the control).
fn nc_kernel(load: &str) -> String {
    module(&format!(
        r#"
.visible .entry nc(.param .u64 pbuf, .param .u64 pout, .param .u32 pwrite)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [pbuf];
    ld.param.u64 %rd2, [pout];
    ld.param.u32 %r4, [pwrite];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r1, %tid.x;
    setp.eq.u32 %p1, %r1, 0;
    setp.ne.u32 %p3, %r4, 0;
    and.pred %p1, %p1, %p3;
    mov.u32 %r2, 42;
    .loc 1 80 0
    @%p1 st.global.u32 [%rd1], %r2;
    .loc 1 81 0
    bar.sync 0;
    setp.eq.u32 %p2, %r1, 1;
    mov.u32 %r3, 0;
    .loc 1 82 0
    @%p2 {load}.u32 %r3, [%rd1];
    .loc 1 83 0
    mul.wide.u32 %rd3, %r1, 4;
    add.s64 %rd4, %rd2, %rd3;
    st.global.u32 [%rd4], %r3;
    ret;
}}
"#
    ))
}

#[test]
fn ld_global_nc_of_bytes_written_in_the_same_launch() {
    let dev = device();
    let buf = upload_u32(&dev, &[5]);
    let out = output(&dev, 32, 0);
    let args = |w: u32| {
        [
            addr(buf).to_vec(),
            addr(out).to_vec(),
            w.to_le_bytes().to_vec(),
        ]
    };
    let call = |load: &str, w: u32| {
        let a = args(w);
        launch(&dev, &nc_kernel(load), "nc", 1, 32, &[&a[0], &a[1], &a[2]])
    };
    expect_at(
        call("ld.global.nc", 1),
        FaultKind::Race,
        "nc",
        "ld.global.nc.u32",
        82,
    );
    // Controls: a plain load of the same bytes, and .nc of bytes the host or an earlier launch
    // wrote.
    ok(call("ld.global", 1), "ld.global after a barrier");
    assert_eq!(download_u32(&dev, out, 2), vec![0, 42]);
    ok(
        call("ld.global.nc", 0),
        "ld.global.nc of bytes an earlier launch wrote",
    );
    dev.write(buf, &7u32.to_le_bytes()).unwrap();
    ok(
        call("ld.global.nc", 0),
        "ld.global.nc of host-written bytes",
    );
    assert_eq!(download_u32(&dev, out, 2), vec![0, 7]);
}

/// Thread 1 reads buf[0] with `ld.global.nc` first, and thread 0 writes it after a barrier: the
/// bytes are not read-only for the launch either way round.
#[test]

fn ld_global_nc_then_a_write_in_the_same_launch() {
    let dev = device();
    let buf = upload_u32(&dev, &[5]);
    let out = output(&dev, 32, 0);
    let k = module(
        r#"
.visible .entry nc_first(.param .u64 pbuf, .param .u64 pout)
{
    .reg .pred %p<4>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [pbuf];
    ld.param.u64 %rd2, [pout];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r1, %tid.x;
    setp.eq.u32 %p1, %r1, 1;
    mov.u32 %r3, 0;
    .loc 1 85 0
    @%p1 ld.global.nc.u32 %r3, [%rd1];
    .loc 1 86 0
    bar.sync 0;
    setp.eq.u32 %p2, %r1, 0;
    mov.u32 %r2, 42;
    .loc 1 87 0
    @%p2 st.global.u32 [%rd1], %r2;
    .loc 1 88 0
    mul.wide.u32 %rd3, %r1, 4;
    add.s64 %rd4, %rd2, %rd3;
    st.global.u32 [%rd4], %r3;
    ret;
}
"#,
    );
    expect_any(
        launch(&dev, &k, "nc_first", 1, 32, &[&addr(buf), &addr(out)]),
        &[FaultKind::Race],
        "nc_first",
        "",
        &[85, 87],
    );
}

/// Checks off (`Checks::NONE`): reads of unwritten bytes and racy accesses run; bounds and
/// alignment are still checked.
#[test]
fn checks_none_turns_off_initialisation_and_race_checks() {
    let dev = device_opts(Order::Forward, 1, 1 << 24, Checks::NONE);
    let src = dev.alloc(64).unwrap();
    let dst = output(&dev, 16, 0);
    ok(
        copy_words(&dev, src, dst, 16),
        "an unwritten buffer without checks",
    );
    ok(
        shared_read(&dev, 1, 0, false),
        "unwritten shared memory without checks",
    );
    let buf = upload_u32(&dev, &[0; 8]);
    ok(
        blocks(&dev, buf, 8, -1, 0, -1),
        "blocks writing one word without checks",
    );
    let buf = filled(&dev, 64);
    let op = "ld.global.u32 %r1, [%rd4];";
    expect_at(
        run_single(&dev, "unchecked", "global", op, buf + 64, 0),
        FaultKind::OutOfBounds,
        "unchecked",
        "ld.global.u32",
        10,
    );
    expect_at(
        run_single(&dev, "unchecked", "global", op, buf + 2, 0),
        FaultKind::Misaligned,
        "unchecked",
        "ld.global.u32",
        10,
    );
}

// ------------------------------------------------------------------------------------------
// Divergent barriers and collectives, the watchdog
// ------------------------------------------------------------------------------------------

/// Thread 0 zeroes the shared word `flag`; after a barrier, lanes `pivot..31` of every warp
/// branch to `other` and the lanes below run `main`; both arms join at DONE, where every thread
/// stores its tid.
fn diverge(kernel: &str, pivot: u32, main: &str, other: &str) -> String {
    module(&format!(
        r#"
.visible .entry {kernel}(.param .u64 pout)
{{
    .reg .pred %p<8>;
    .reg .b32 %r<12>;
    .reg .b64 %rd<8>;
    .shared .align 4 .b32 flag;
    ld.param.u64 %rd1, [pout];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %tid.x;
    and.b32 %r2, %r1, 31;
    mov.u32 %r3, 0;
    setp.eq.u32 %p7, %r1, 0;
    @%p7 st.shared.u32 [flag], %r3;
    bar.sync 0;
    setp.ge.u32 %p1, %r2, {pivot};
    @%p1 bra OTHER;
{main}
    bra.uni DONE;
OTHER:
{other}
DONE:
    .loc 1 99 0
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r1;
    ret;
}}
"#
    ))
}

fn run_diverge(
    dev: &Device,
    kernel: &str,
    pivot: u32,
    main: &str,
    other: &str,
) -> Result<(), EmuError> {
    let out = output(dev, 64, 0);
    let r = launch(
        dev,
        &diverge(kernel, pivot, main, other),
        kernel,
        1,
        64,
        &[&addr(out)],
    );
    if r.is_ok() {
        assert_eq!(download_u32(dev, out, 64), (0..64).collect::<Vec<u32>>());
    }
    r
}

const BAR_A: &str = "    .loc 1 90 0\n    bar.sync 0;";
const BAR_B: &str = "    .loc 1 91 0\n    bar.sync 0;";
const SHFL_A: &str = "    .loc 1 92 0\n    shfl.sync.bfly.b32 %r5, %r1, 1, 31, 0xffffffff;";
const SHFL_B: &str = "    .loc 1 93 0\n    shfl.sync.bfly.b32 %r6, %r1, 1, 31, 0xffffffff;";

#[test]
fn two_halves_of_a_warp_at_two_different_barriers() {
    let dev = device();
    let f = expect_any(
        run_diverge(&dev, "two_bars", 16, BAR_A, BAR_B),
        &[FaultKind::Divergence, FaultKind::Deadlock],
        "two_bars",
        "bar.sync",
        &[90, 91],
    );
    // The message names both barriers.
    let msg = f.to_string();
    assert!(
        msg.contains("probe.cu:90") && msg.contains("probe.cu:91"),
        "{msg}"
    );
    // Controls: the pivot at 32 (every lane takes `main`), and one barrier after the join.
    ok(
        run_diverge(&dev, "two_bars", 32, BAR_A, BAR_B),
        "no lane diverges",
    );
    ok(
        run_diverge(&dev, "two_bars", 16, "", ""),
        "no barrier in the arms",
    );
}

#[test]
fn two_halves_of_a_warp_at_two_different_shuffles() {
    let dev = device();
    expect_any(
        run_diverge(&dev, "two_shfl", 16, SHFL_A, SHFL_B),
        &[FaultKind::Divergence, FaultKind::Deadlock],
        "two_shfl",
        "shfl.sync.bfly.b32",
        &[92, 93],
    );
    ok(
        run_diverge(&dev, "two_shfl", 32, SHFL_A, SHFL_B),
        "every lane at the first shfl",
    );
    ok(
        run_diverge(&dev, "two_shfl", 0, SHFL_A, SHFL_B),
        "every lane at the second shfl",
    );
}

#[test]
fn half_a_warp_at_a_shuffle_the_other_half_at_a_barrier() {
    let dev = device();
    expect_any(
        run_diverge(&dev, "shfl_bar", 16, SHFL_A, BAR_B),
        &[FaultKind::Divergence, FaultKind::Deadlock],
        "shfl_bar",
        "",
        &[91, 92],
    );
}

#[test]
fn bar_sync_whose_guard_is_false_for_some_lanes() {
    let dev = device();
    let main = "    setp.lt.u32 %p5, %r2, 8;\n    .loc 1 89 0\n    @%p5 bar.sync 0;";
    expect_at(
        run_diverge(&dev, "guarded_bar", 32, main, ""),
        FaultKind::Divergence,
        "guarded_bar",
        "bar.sync",
        89,
    );
    let main = "    setp.lt.u32 %p5, %r2, 32;\n    .loc 1 89 0\n    @%p5 bar.sync 0;";
    ok(
        run_diverge(&dev, "guarded_bar", 32, main, ""),
        "the guard true in every lane",
    );
}

/// Warp 0 waits at barrier 0 and warp 1 at barrier 1; each needs every thread of the block
/// (no thread count), so neither completes on a GPU.
#[test]

fn warps_at_barriers_with_different_ids() {
    let dev = device();
    let k = module(
        r#"
.visible .entry bar_ids(.param .u64 pout)
{
    .reg .pred %p<4>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [pout];
    mov.u32 %r1, %tid.x;
    setp.ge.u32 %p1, %r1, 32;
    @%p1 bra ONE;
    .loc 1 103 0
    bar.sync 0;
    bra.uni DONE;
ONE:
    .loc 1 104 0
    bar.sync 1;
DONE:
    .loc 1 105 0
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r1;
    ret;
}
"#,
    );
    let out = output(&dev, 64, 0);
    expect_any(
        launch(&dev, &k, "bar_ids", 1, 64, &[&addr(out)]),
        &[FaultKind::Divergence, FaultKind::Deadlock],
        "bar_ids",
        "bar.sync",
        &[103, 104],
    );
}

/// Lanes 16..31 spin on a shared flag that lane 0 sets only after its full-mask `shfl.sync`,
/// which waits for them: a GPU hangs. The executor cannot tell a spin from a long loop, so the
/// watchdog (with a small budget) is what stops it; it must not hang.
#[test]
fn a_lane_in_the_membermask_spins_instead_of_arriving() {
    let dev = device_opts(Order::Forward, 1, 1 << 16, Checks::ALL);
    let main = "    .loc 1 94 0\n    shfl.sync.idx.b32 %r5, %r1, 0, 31, 0xffffffff;\n    mov.u32 %r6, 1;\n    @%p7 st.shared.u32 [flag], %r6;";
    let other = "SPIN:\n    .loc 1 95 0\n    ld.shared.u32 %r7, [flag];\n    setp.eq.u32 %p2, %r7, 0;\n    .loc 1 96 0\n    @%p2 bra SPIN;\n    shfl.sync.idx.b32 %r5, %r1, 0, 31, 0xffffffff;";
    expect_any(
        run_diverge(&dev, "spin", 16, main, other),
        &[
            FaultKind::Divergence,
            FaultKind::Deadlock,
            FaultKind::Watchdog,
        ],
        "spin",
        "",
        &[94, 95, 96],
    );
}

#[test]
fn shfl_executed_by_lanes_outside_its_membermask() {
    let dev = device();
    let main = "    .loc 1 97 0\n    shfl.sync.bfly.b32 %r5, %r1, 1, 31, 0x0000ffff;";
    expect_at(
        run_diverge(&dev, "mask", 32, main, ""),
        FaultKind::Divergence,
        "mask",
        "shfl.sync.bfly.b32",
        97,
    );
    // The control: only lanes 0..15 execute it, and the mask says so.
    ok(
        run_diverge(&dev, "mask", 16, main, ""),
        "the mask matches the lanes",
    );
}

#[test]
fn shfl_sourcing_an_exited_lane() {
    let dev = device();
    // Lane 31 of each warp exits; the others exchange with their xor-1 partner, so lane 30
    // sources an exited lane.
    let main = "    .loc 1 98 0\n    shfl.sync.bfly.b32 %r5, %r1, 1, 31, 0xffffffff;";
    expect_at(
        run_diverge(&dev, "exited", 31, main, "    exit;"),
        FaultKind::Divergence,
        "exited",
        "shfl.sync.bfly.b32",
        98,
    );
    // The control: lanes 30 and 31 exit before the others reach the shuffle (in program order),
    // so it waits for lanes 0..29 only and none of them reads an exited lane.
    let early = diverge("exited_early", 32, main, "").replace(
        "    bar.sync 0;\n",
        "    bar.sync 0;\n    setp.ge.u32 %p6, %r2, 30;\n    @%p6 exit;\n",
    );
    let out = output(&dev, 64, 0);
    ok(
        launch(&dev, &early, "exited_early", 1, 64, &[&addr(out)]),
        "lanes 30, 31 exit first",
    );
}

/// PTX ISA §9.7.9.6: "shfl.sync will cause executing thread to wait until all non-exited
/// threads corresponding to membermask have executed shfl.sync": lanes 0..29 reach a full-mask
/// shuffle, lanes 30 and 31 branch away and exit. Once they have exited the shuffle must
/// complete (no lane sources 30 or 31), whichever the executor happens to run first.
#[test]

fn shfl_waiting_for_lanes_that_exit_later_completes() {
    let dev = device();
    let main = "    .loc 1 98 0\n    shfl.sync.bfly.b32 %r5, %r1, 1, 31, 0xffffffff;";
    let out = output(&dev, 64, 0);
    let r = launch(
        &dev,
        &diverge("exited_late", 30, main, "    exit;"),
        "exited_late",
        1,
        64,
        &[&addr(out)],
    );
    ok(r, "lanes 30, 31 exit after the others wait");
    let got = download_u32(&dev, out, 64);
    for t in 0..64u32 {
        let want = if t % 32 >= 30 { 0 } else { t };
        assert_eq!(got[t as usize], want, "thread {t}");
    }
}

const SPIN_FOREVER: &str = r#"
.visible .entry forever(.param .u64 pout, .param .u32 pn)
{
    .reg .pred %p<4>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [pout];
    ld.param.u32 %r2, [pn];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, 0;
LOOP:
    .loc 1 100 0
    add.u32 %r1, %r1, 1;
    setp.ne.u32 %p1, %r1, %r2;
    .loc 1 101 0
    @%p1 bra LOOP;
    .loc 1 102 0
    mov.u32 %r3, %tid.x;
    mov.u32 %r4, %ctaid.x;
    mad.lo.u32 %r3, %r4, 64, %r3;
    mul.wide.u32 %rd2, %r3, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r1;
    ret;
}
"#;

#[test]
fn an_unbounded_loop_is_stopped_by_the_watchdog() {
    let start = std::time::Instant::now();
    for threads in [1, 2] {
        let dev = device_opts(Order::Forward, threads, 1 << 16, Checks::ALL);
        let out = output(&dev, 64 * 4, 0);
        // pn = 0: the counter starts at 1 and never wraps back to 0 within the budget.
        let f = expect_at(
            launch(
                &dev,
                &module(SPIN_FOREVER),
                "forever",
                4,
                64,
                &[&addr(out), &0u32.to_le_bytes()],
            ),
            FaultKind::Watchdog,
            "forever",
            "bra",
            101,
        );
        assert!(
            f.detail.contains("budget") || f.detail.contains("warp-instructions"),
            "{f}"
        );
        // The control: 100 iterations fit in the budget.
        ok(
            launch(
                &dev,
                &module(SPIN_FOREVER),
                "forever",
                4,
                64,
                &[&addr(out), &100u32.to_le_bytes()],
            ),
            "a bounded loop",
        );
        assert_eq!(download_u32(&dev, out, 256), vec![100; 256]);
    }
    assert!(
        start.elapsed().as_secs() < 5,
        "the watchdog took {:?}",
        start.elapsed()
    );
}

/// Many blocks, each well within the budget, that together exceed it: the launch is stopped
/// (its fault names the kernel).
#[test]
fn the_budget_bounds_the_whole_launch() {
    for threads in [1, 2] {
        let dev = device_opts(Order::Forward, threads, 1 << 16, Checks::ALL);
        let out = output(&dev, 64 * 64, 0);
        let r = launch(
            &dev,
            &module(SPIN_FOREVER),
            "forever",
            64,
            64,
            &[&addr(out), &1000u32.to_le_bytes()],
        );
        let f = expect_fault(r, &[FaultKind::Watchdog], "");
        assert_eq!(f.kernel, "forever");
        assert!(f.to_string().contains("`forever`"), "{f}");
        // The control: a quarter of the blocks fit.
        let r = launch(
            &dev,
            &module(SPIN_FOREVER),
            "forever",
            4,
            64,
            &[&addr(out), &1000u32.to_le_bytes()],
        );
        ok(r, "4 blocks");
    }
}

// ------------------------------------------------------------------------------------------
// Division by zero
// ------------------------------------------------------------------------------------------

/// Thread t divides `pnum` by `t ^ pzero` (so lane `pzero` divides by zero), with `guard` on the
/// division.
fn div_kernel(op: &str, wide: bool, guard: &str) -> String {
    let (ty_reg, prep) = if wide {
        (
            "%rd",
            "    cvt.u64.u32 %rd5, %r3;\n    cvt.u64.u32 %rd6, %r4;",
        )
    } else {
        ("%r", "    mov.u32 %r5, %r3;\n    mov.u32 %r6, %r4;")
    };
    let store = if wide {
        "    cvt.u32.u64 %r7, %rd7;"
    } else {
        "    mov.u32 %r7, %r7;"
    };
    module(&format!(
        r#"
.visible .entry div(.param .u64 pout, .param .u32 pnum, .param .u32 pzero)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<12>;
    .reg .b64 %rd<12>;
    ld.param.u64 %rd1, [pout];
    ld.param.u32 %r3, [pnum];
    ld.param.u32 %r2, [pzero];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %tid.x;
    xor.b32 %r4, %r1, %r2;
    setp.ne.u32 %p1, %r4, 0;
{prep}
    mov.u32 %r7, 0;
    mov.u64 %rd7, 0;
    .loc 1 110 0
    {guard}{op} {ty_reg}7, {ty_reg}5, {ty_reg}6;
    .loc 1 111 0
{store}
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r7;
    ret;
}}
"#
    ))
}

#[test]
fn integer_division_by_zero_in_an_active_lane() {
    for (op, wide) in [
        ("div.u32", false),
        ("div.s32", false),
        ("rem.u32", false),
        ("rem.s32", false),
        ("div.u64", true),
        ("div.s64", true),
        ("rem.u64", true),
        ("rem.s64", true),
    ] {
        let dev = device();
        let out = output(&dev, 32, 0);
        let ptx = div_kernel(op, wide, "");
        let call = |zero: u32| {
            launch(
                &dev,
                &ptx,
                "div",
                1,
                32,
                &[&addr(out), &1000u32.to_le_bytes(), &zero.to_le_bytes()],
            )
        };
        let f = expect_at(call(5), FaultKind::DivideByZero, "div", op, 110);
        assert_eq!(f.thread, [5, 0, 0], "{op}: {f}");
        // The control: with the guard off in the zero lane, the same division runs.
        let ptx = div_kernel(op, wide, "@%p1 ");
        let r = launch(
            &dev,
            &ptx,
            "div",
            1,
            32,
            &[&addr(out), &1000u32.to_le_bytes(), &5u32.to_le_bytes()],
        );
        ok(r, op);
        let got = download_u32(&dev, out, 32);
        for (t, &v) in got.iter().enumerate() {
            let d = t as u32 ^ 5;
            let want = if d == 0 {
                0
            } else if op.starts_with("div") {
                1000 / d
            } else {
                1000 % d
            };
            assert_eq!(v, want, "{op} lane {t}");
        }
    }
}

#[test]
fn division_by_zero_in_a_branch_not_taken_by_that_lane() {
    let dev = device();
    let out = output(&dev, 32, 0);
    // Lane 3 (divisor 0) branches around the division.
    let ptx = div_kernel("div.u32", false, "")
        .replace(
            "    .loc 1 110 0\n",
            "    @!%p1 bra SKIP;\n    .loc 1 110 0\n",
        )
        .replace("    .loc 1 111 0\n", "SKIP:\n    .loc 1 111 0\n");
    let r = launch(
        &dev,
        &ptx,
        "div",
        1,
        32,
        &[&addr(out), &77u32.to_le_bytes(), &3u32.to_le_bytes()],
    );
    ok(r, "the zero lane skips the division");
    assert_eq!(download_u32(&dev, out, 32)[3], 0);
    assert_eq!(download_u32(&dev, out, 32)[2], 77);
}

#[test]
fn float_division_by_zero_is_not_a_fault() {
    let dev = device();
    let out = output(&dev, 1, 0);
    let ptx = module(
        r#"
.visible .entry fdiv(.param .u64 pout)
{
    .reg .f32 %f<4>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [pout];
    mov.f32 %f1, 0f3F800000;
    mov.f32 %f2, 0f00000000;
    div.rn.f32 %f3, %f1, %f2;
    st.global.f32 [%rd1], %f3;
    ret;
}
"#,
    );
    run(&dev, &ptx, "fdiv", 1, 1, &[&addr(out)]);
    assert_eq!(download_f32(&dev, out, 1)[0], f32::INFINITY);
}

// ------------------------------------------------------------------------------------------
// Orders
// ------------------------------------------------------------------------------------------

/// Thread 0 of each block (or lane 0 of each warp, `pwarps` = 1) appends its block (warp) index
/// to `log` through the counter `log[0]`: with one host thread, `log[1..]` is the order the
/// blocks (warps) ran in. Racy by design; run without checks.
const ORDER_LOG: &str = r#"
.visible .entry order_log(.param .u64 plog, .param .u32 pwarps)
{
    .reg .pred %p<4>;
    .reg .b32 %r<12>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [plog];
    ld.param.u32 %r9, [pwarps];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %tid.x;
    and.b32 %r2, %r1, 31;
    shr.u32 %r3, %r1, 5;
    mov.u32 %r4, %ctaid.x;
    setp.ne.u32 %p2, %r9, 0;
    selp.u32 %r5, %r3, %r4, %p2;
    selp.u32 %r6, %r2, %r1, %p2;
    setp.ne.u32 %p1, %r6, 0;
    @%p1 bra DONE;
    ld.global.u32 %r7, [%rd1];
    add.u32 %r8, %r7, 1;
    st.global.u32 [%rd1], %r8;
    mul.wide.u32 %rd2, %r8, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r5;
DONE:
    ret;
}
"#;

fn order_log(order: Order, grid: u32, block: u32, warps: bool) -> Vec<u32> {
    let dev = device_opts(order, 1, 1 << 24, Checks::NONE);
    let n = if warps { block / 32 } else { grid } as usize;
    let log = upload_u32(&dev, &vec![0; n + 1]);
    run(
        &dev,
        &module(ORDER_LOG),
        "order_log",
        grid,
        block,
        &[&addr(log), &(warps as u32).to_le_bytes()],
    );
    let got = download_u32(&dev, log, n + 1);
    assert_eq!(got[0] as usize, n, "{order:?}: every block/warp logs once");
    let mut sorted = got[1..].to_vec();
    sorted.sort();
    assert_eq!(
        sorted,
        (0..n as u32).collect::<Vec<_>>(),
        "{order:?}: a permutation"
    );
    got[1..].to_vec()
}

#[test]
fn order_changes_the_order_blocks_start_in() {
    let n = 12u32;
    assert_eq!(
        order_log(Order::Forward, n, 32, false),
        (0..n).collect::<Vec<_>>()
    );
    assert_eq!(
        order_log(Order::Reverse, n, 32, false),
        (0..n).rev().collect::<Vec<_>>()
    );
    let shuffled: Vec<Vec<u32>> = (1..6)
        .map(|s| order_log(Order::Shuffled(s * 7919), n, 32, false))
        .collect();
    assert!(
        shuffled.iter().any(|p| *p != (0..n).collect::<Vec<_>>()),
        "{shuffled:?}"
    );
    assert!(
        shuffled.iter().any(|p| *p != shuffled[0]),
        "seeds give different orders: {shuffled:?}"
    );
    assert_eq!(
        order_log(Order::Shuffled(7919), n, 32, false),
        shuffled[0],
        "a seed is reproducible"
    );
}

#[test]
fn order_changes_the_order_warps_run_in() {
    let block = 8 * 32;
    assert_eq!(
        order_log(Order::Forward, 1, block, true),
        (0..8).collect::<Vec<_>>()
    );
    assert_eq!(
        order_log(Order::Reverse, 1, block, true),
        (0..8).rev().collect::<Vec<_>>()
    );
    let shuffled: Vec<Vec<u32>> = (1..6)
        .map(|s| order_log(Order::Shuffled(s * 104_729), 1, block, true))
        .collect();
    assert!(
        shuffled.iter().any(|p| *p != (0..8).collect::<Vec<_>>()),
        "{shuffled:?}"
    );
}

/// A grid-stride sum of `x` per thread, then a tree reduction of the block's 128 partial sums in
/// shared memory with a barrier after each step (`{BAR}`, removed in the racy variant); thread 0
/// writes the block's sum, and every thread its partial sum.
const REDUCE: &str = r#"
.visible .entry reduce(.param .u64 px, .param .u32 pn, .param .u64 psums, .param .u64 pparts)
{
    .reg .pred %p<4>;
    .reg .b32 %r<16>;
    .reg .f32 %f<8>;
    .reg .b64 %rd<16>;
    .shared .align 4 .f32 sh[128];
    ld.param.u64 %rd1, [px];
    ld.param.u32 %r1, [pn];
    ld.param.u64 %rd2, [psums];
    ld.param.u64 %rd3, [pparts];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    cvta.to.global.u64 %rd3, %rd3;
    mov.u32 %r2, %tid.x;
    mov.u32 %r3, %ctaid.x;
    mov.u32 %r4, %ntid.x;
    mov.u32 %r5, %nctaid.x;
    mad.lo.u32 %r6, %r3, %r4, %r2;
    mul.lo.u32 %r7, %r5, %r4;
    mov.f32 %f1, 0f00000000;
    mov.u32 %r8, %r6;
    setp.ge.u32 %p1, %r8, %r1;
    @%p1 bra SUMMED;
STRIDE:
    mul.wide.u32 %rd4, %r8, 4;
    add.s64 %rd5, %rd1, %rd4;
    ld.global.f32 %f2, [%rd5];
    add.f32 %f1, %f1, %f2;
    add.u32 %r8, %r8, %r7;
    setp.lt.u32 %p1, %r8, %r1;
    @%p1 bra STRIDE;
SUMMED:
    mul.wide.u32 %rd6, %r6, 4;
    add.s64 %rd7, %rd3, %rd6;
    st.global.f32 [%rd7], %f1;
    mov.u64 %rd8, sh;
    mul.wide.u32 %rd9, %r2, 4;
    add.s64 %rd10, %rd8, %rd9;
    st.shared.f32 [%rd10], %f1;
    bar.sync 0;
    mov.u32 %r9, 64;
TREE:
    setp.ge.u32 %p2, %r2, %r9;
    @%p2 bra SKIP;
    add.u32 %r10, %r2, %r9;
    mul.wide.u32 %rd11, %r10, 4;
    add.s64 %rd12, %rd8, %rd11;
    .loc 1 120 0
    ld.shared.f32 %f3, [%rd12];
    ld.shared.f32 %f4, [%rd10];
    add.f32 %f5, %f4, %f3;
    .loc 1 121 0
    st.shared.f32 [%rd10], %f5;
SKIP:
    .loc 1 122 0
    {BAR}
    shr.u32 %r9, %r9, 1;
    setp.ne.u32 %p3, %r9, 0;
    @%p3 bra TREE;
    setp.ne.u32 %p3, %r2, 0;
    @%p3 bra DONE;
    ld.shared.f32 %f6, [%rd8];
    mul.wide.u32 %rd13, %r3, 4;
    add.s64 %rd14, %rd2, %rd13;
    st.global.f32 [%rd14], %f6;
DONE:
    ret;
}
"#;

const REDUCE_GRID: u32 = 7;
const REDUCE_BLOCK: u32 = 128;
const REDUCE_N: u32 = 5000;

fn reduce_input() -> Vec<f32> {
    // Values of very different magnitudes, so that any change of summation order shows.
    (0..REDUCE_N)
        .map(|i| {
            let x = ((i as u64 * 2_654_435_761) % 1_000_003) as f32 / 1_000_003.0;
            (x - 0.5) * if i % 7 == 0 { 1.0e4 } else { 1.0e-2 }
        })
        .collect()
}

/// The sums the kernel computes, in its order.
fn reduce_reference(x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let threads = (REDUCE_GRID * REDUCE_BLOCK) as usize;
    let mut parts = vec![0f32; threads];
    for (t, p) in parts.iter_mut().enumerate() {
        let mut i = t;
        while i < x.len() {
            *p += x[i];
            i += threads;
        }
    }
    let mut sums = Vec::new();
    for b in 0..REDUCE_GRID as usize {
        let mut sh = parts[b * 128..(b + 1) * 128].to_vec();
        let mut s = 64;
        while s > 0 {
            for t in 0..s {
                sh[t] += sh[t + s];
            }
            s /= 2;
        }
        sums.push(sh[0]);
    }
    (sums, parts)
}

fn run_reduce(dev: &Device, bar: &str) -> Result<(Vec<u32>, Vec<u32>), EmuError> {
    let x = upload_f32(dev, &reduce_input());
    let sums = output(dev, REDUCE_GRID as usize, 0);
    let parts = output(dev, (REDUCE_GRID * REDUCE_BLOCK) as usize, 0);
    launch(
        dev,
        &module(&REDUCE.replace("{BAR}", bar)),
        "reduce",
        REDUCE_GRID,
        REDUCE_BLOCK,
        &[&addr(x), &REDUCE_N.to_le_bytes(), &addr(sums), &addr(parts)],
    )?;
    Ok((
        download_u32(dev, sums, REDUCE_GRID as usize),
        download_u32(dev, parts, (REDUCE_GRID * REDUCE_BLOCK) as usize),
    ))
}

#[test]
fn a_race_free_reduction_is_bit_identical_in_every_order() {
    let (sums, parts) = reduce_reference(&reduce_input());
    let sums: Vec<u32> = sums.iter().map(|v| v.to_bits()).collect();
    let parts: Vec<u32> = parts.iter().map(|v| v.to_bits()).collect();
    for order in ORDERS {
        for threads in [1, 2] {
            let dev = device_opts(order, threads, 1 << 24, Checks::ALL);
            match run_reduce(&dev, "bar.sync 0;") {
                Ok((s, p)) => {
                    assert_eq!(s, sums, "{order:?}, {threads} threads: block sums");
                    assert_eq!(p, parts, "{order:?}, {threads} threads: partial sums");
                }
                Err(e) => panic!("{order:?}, {threads} threads: {e}"),
            }
        }
    }
}

#[test]
fn a_reduction_missing_its_barrier_is_reported_in_every_order() {
    for order in ORDERS {
        for threads in [1, 2] {
            let dev = device_opts(order, threads, 1 << 24, Checks::ALL);
            let r = run_reduce(&dev, "mov.u32 %r11, 0;").map(|_| ());
            let f = expect_any(r, &[FaultKind::Race], "reduce", "shared.f32", &[120, 121]);
            let _ = f;
        }
    }
}
