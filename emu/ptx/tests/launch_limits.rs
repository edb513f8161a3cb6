//! What the device refuses before a kernel runs, each with a control just inside the limit:
//! launch dimensions (threads per block, block and grid extents, zero dimensions), the kernel's
//! `.maxntid` and `.reqntid`, dynamic shared memory against the kernel attribute and the
//! device's opt-in limit, static shared memory at load, the parameter buffer's size; module
//! loading (unknown instructions, `.func`, a target above the device, syntax errors); and device
//! memory exhaustion.

mod common;

use common::HEADER;
use freelunch_ptx::{
    Device, DeviceConfig, EmuError, LaunchRequest, LaunchStats, Module, Order, RunOptions,
};

fn device_of(config: DeviceConfig) -> Device {
    Device::new(
        config,
        RunOptions {
            threads: 1,
            order: Order::Forward,
            budget: 1 << 24,
            ..Default::default()
        },
    )
}

fn h200() -> Device {
    device_of(DeviceConfig::h200(1 << 26))
}

fn load(dev: &Device, body: &str) -> Module {
    let ptx = format!("{HEADER}{body}");
    dev.load_module(&ptx)
        .unwrap_or_else(|e| panic!("the test module does not load: {e}\n{ptx}"))
}

/// A kernel that does nothing but return, with one u64 parameter.
const EMPTY: &str = r#"
.visible .entry empty(.param .u64 p)
{
    ret;
}
"#;

struct Req {
    grid: [u32; 3],
    block: [u32; 3],
    dynamic_smem: u32,
    max_dynamic_smem: u32,
}

impl Req {
    fn new(grid: [u32; 3], block: [u32; 3]) -> Self {
        Req {
            grid,
            block,
            dynamic_smem: 0,
            max_dynamic_smem: 48 * 1024,
        }
    }
    fn smem(mut self, dynamic: u32, max: u32) -> Self {
        self.dynamic_smem = dynamic;
        self.max_dynamic_smem = max;
        self
    }
}

fn go(
    dev: &Device,
    m: &Module,
    kernel: &str,
    r: Req,
    params: &[u8],
) -> Result<LaunchStats, EmuError> {
    dev.launch(
        &m.kernels[kernel],
        &LaunchRequest {
            grid: r.grid,
            block: r.block,
            dynamic_smem: r.dynamic_smem,
            max_dynamic_smem: r.max_dynamic_smem,
            params,
        },
    )
}

fn go_empty(dev: &Device, m: &Module, r: Req) -> Result<LaunchStats, EmuError> {
    go(dev, m, "empty", r, &[0; 8])
}

fn accepted(r: Result<LaunchStats, EmuError>, what: &str) -> LaunchStats {
    r.unwrap_or_else(|e| panic!("{what}: the launch should run, got {e}"))
}

/// Asserts an `InvalidLaunch` whose message names the kernel and contains every one of `words`.
fn refused(r: Result<LaunchStats, EmuError>, kernel: &str, words: &[&str]) -> String {
    match r {
        Err(EmuError::InvalidLaunch(msg)) => {
            assert!(
                msg.contains(&format!("`{kernel}`")),
                "the message should name the kernel: {msg}"
            );
            for w in words {
                assert!(msg.contains(w), "the message should say `{w}`: {msg}");
            }
            msg
        }
        Err(e) => panic!("expected InvalidLaunch ({words:?}), got {e:?}"),
        Ok(_) => panic!("expected InvalidLaunch ({words:?}), the launch ran"),
    }
}

#[test]
fn more_than_1024_threads_per_block() {
    let dev = h200();
    let m = load(&dev, EMPTY);
    accepted(
        go_empty(&dev, &m, Req::new([1, 1, 1], [1024, 1, 1])),
        "1024 threads",
    );
    accepted(
        go_empty(&dev, &m, Req::new([1, 1, 1], [32, 32, 1])),
        "32x32 threads",
    );
    refused(
        go_empty(&dev, &m, Req::new([1, 1, 1], [32, 33, 1])),
        "empty",
        &["1056 threads", "1024"],
    );
    refused(
        go_empty(&dev, &m, Req::new([1, 1, 1], [1024, 2, 1])),
        "empty",
        &["2048 threads", "1024"],
    );
    refused(
        go_empty(&dev, &m, Req::new([1, 1, 1], [16, 16, 8])),
        "empty",
        &["2048 threads", "1024"],
    );
}

#[test]
fn a_block_dimension_above_the_device_maximum() {
    let dev = h200();
    let m = load(&dev, EMPTY);
    accepted(
        go_empty(&dev, &m, Req::new([1, 1, 1], [1, 1, 64])),
        "z = 64",
    );
    accepted(
        go_empty(&dev, &m, Req::new([1, 1, 1], [2, 2, 64])),
        "2x2x64",
    );
    let msg = refused(
        go_empty(&dev, &m, Req::new([1, 1, 1], [1, 1, 65])),
        "empty",
        &["block", "[1, 1, 65]"],
    );
    assert!(
        msg.contains("64"),
        "the message should give the limit: {msg}"
    );
    refused(
        go_empty(&dev, &m, Req::new([1, 1, 1], [1025, 1, 1])),
        "empty",
        &["block", "1024"],
    );
    refused(
        go_empty(&dev, &m, Req::new([1, 1, 1], [1, 1025, 1])),
        "empty",
        &["block", "1024"],
    );
}

#[test]
fn a_zero_dimension() {
    let dev = h200();
    let m = load(&dev, EMPTY);
    for (grid, block) in [
        ([1, 1, 1], [0, 1, 1]),
        ([1, 1, 1], [32, 0, 1]),
        ([1, 1, 1], [32, 1, 0]),
        ([0, 1, 1], [32, 1, 1]),
        ([1, 0, 1], [32, 1, 1]),
        ([1, 1, 0], [32, 1, 1]),
    ] {
        refused(
            go_empty(&dev, &m, Req::new(grid, block)),
            "empty",
            &["zero"],
        );
    }
    accepted(go_empty(&dev, &m, Req::new([1, 1, 1], [1, 1, 1])), "1x1");
}

#[test]
fn a_grid_above_the_device_maximum() {
    let dev = h200();
    let m = load(&dev, EMPTY);
    let stats = accepted(
        go_empty(&dev, &m, Req::new([1, 65535, 1], [1, 1, 1])),
        "grid y = 65535",
    );
    assert_eq!(stats.blocks, 65535);
    refused(
        go_empty(&dev, &m, Req::new([1, 65536, 1], [1, 1, 1])),
        "empty",
        &["grid", "65536", "65535"],
    );
    refused(
        go_empty(&dev, &m, Req::new([1, 1, 65536], [1, 1, 1])),
        "empty",
        &["grid", "65535"],
    );
    refused(
        go_empty(&dev, &m, Req::new([1 << 31, 1, 1], [1, 1, 1])),
        "empty",
        &["grid", "2147483647"],
    );
}

const MAXNTID: &str = r#"
.visible .entry capped(.param .u64 p)
.maxntid 128, 1, 1
{
    ret;
}

.visible .entry exact(.param .u64 p)
.reqntid 64, 1, 1
{
    ret;
}

.visible .entry exact2d(.param .u64 p)
.reqntid 8, 4
{
    ret;
}
"#;

#[test]
fn more_threads_than_the_kernels_maxntid() {
    let dev = h200();
    let m = load(&dev, MAXNTID);
    accepted(
        go(
            &dev,
            &m,
            "capped",
            Req::new([1, 1, 1], [128, 1, 1]),
            &[0; 8],
        ),
        "128 threads",
    );
    accepted(
        go(&dev, &m, "capped", Req::new([1, 1, 1], [64, 2, 1]), &[0; 8]),
        "64x2 threads",
    );
    refused(
        go(
            &dev,
            &m,
            "capped",
            Req::new([1, 1, 1], [129, 1, 1]),
            &[0; 8],
        ),
        "capped",
        &[".maxntid", "128"],
    );
    refused(
        go(
            &dev,
            &m,
            "capped",
            Req::new([1, 1, 1], [16, 16, 1]),
            &[0; 8],
        ),
        "capped",
        &[".maxntid", "256"],
    );
}

#[test]
fn a_block_other_than_the_kernels_reqntid() {
    let dev = h200();
    let m = load(&dev, MAXNTID);
    accepted(
        go(&dev, &m, "exact", Req::new([2, 1, 1], [64, 1, 1]), &[0; 8]),
        "64 threads",
    );
    refused(
        go(&dev, &m, "exact", Req::new([1, 1, 1], [32, 1, 1]), &[0; 8]),
        "exact",
        &[".reqntid"],
    );
    refused(
        go(&dev, &m, "exact", Req::new([1, 1, 1], [128, 1, 1]), &[0; 8]),
        "exact",
        &[".reqntid"],
    );
    // The same number of threads in another shape.
    refused(
        go(&dev, &m, "exact", Req::new([1, 1, 1], [32, 2, 1]), &[0; 8]),
        "exact",
        &[".reqntid", "[32, 2, 1]"],
    );
    // Two dimensions given; the third is 1.
    accepted(
        go(&dev, &m, "exact2d", Req::new([1, 1, 1], [8, 4, 1]), &[0; 8]),
        "8x4",
    );
    refused(
        go(
            &dev,
            &m,
            "exact2d",
            Req::new([1, 1, 1], [32, 1, 1]),
            &[0; 8],
        ),
        "exact2d",
        &[".reqntid"],
    );
}

/// 1 KiB of static shared memory; every thread writes the u32 at byte `poff` of the dynamic
/// shared memory after it.
const SMEM: &str = r#"
.extern .shared .align 16 .b8 dsh[];

.visible .entry smem(.param .u32 poff)
{
    .reg .pred %p<2>;
    .reg .b32 %r<8>;
    .shared .align 16 .b8 st[1024];
    ld.param.u32 %r1, [poff];
    mov.u32 %r2, dsh;
    add.u32 %r3, %r2, %r1;
    mov.u32 %r4, 7;
    mov.u32 %r5, %tid.x;
    setp.eq.u32 %p1, %r5, 0;
    @%p1 st.shared.u32 [%r3], %r4;
    mov.u32 %r6, st;
    @%p1 st.shared.u32 [%r6], %r4;
    ret;
}
"#;

#[test]
fn dynamic_shared_memory_above_the_kernels_limit() {
    let dev = h200();
    let m = load(&dev, SMEM);
    assert_eq!(m.kernels["smem"].static_smem, 1024);
    // The default attribute: 48 KiB minus the static 1 KiB.
    let max: u32 = 48 * 1024 - 1024;
    let last = (max - 4).to_le_bytes();
    accepted(
        go(
            &dev,
            &m,
            "smem",
            Req::new([1, 1, 1], [32, 1, 1]).smem(max, max),
            &last,
        ),
        "47 KiB dynamic",
    );
    let msg = refused(
        go(
            &dev,
            &m,
            "smem",
            Req::new([1, 1, 1], [32, 1, 1]).smem(max + 1, max),
            &last,
        ),
        "smem",
        &[
            "dynamic shared memory",
            &(max + 1).to_string(),
            &max.to_string(),
        ],
    );
    let _ = msg;
    // A raised attribute admits more.
    accepted(
        go(
            &dev,
            &m,
            "smem",
            Req::new([1, 1, 1], [32, 1, 1]).smem(max + 1, 64 * 1024),
            &last,
        ),
        "a raised attribute",
    );
}

#[test]
fn shared_memory_above_the_devices_opt_in_limit() {
    for (config, optin) in [
        (DeviceConfig::h200(1 << 26), 227 * 1024u32),
        (DeviceConfig::a100(1 << 26), 163 * 1024),
    ] {
        assert_eq!(config.shared_per_block_optin, optin);
        let dev = device_of(config);
        let m = load(&dev, SMEM);
        let attr = 256 * 1024;
        // Static 1 KiB + dynamic: the total is what the device limits.
        let fits = optin - 1024;
        let last = (fits - 4).to_le_bytes();
        accepted(
            go(
                &dev,
                &m,
                "smem",
                Req::new([1, 1, 1], [32, 1, 1]).smem(fits, attr),
                &last,
            ),
            "static + dynamic = the opt-in limit",
        );
        refused(
            go(
                &dev,
                &m,
                "smem",
                Req::new([1, 1, 1], [32, 1, 1]).smem(fits + 1, attr),
                &last,
            ),
            "smem",
            &[
                "shared memory",
                &(optin + 1).to_string(),
                &optin.to_string(),
            ],
        );
    }
}

#[test]
fn static_shared_memory_above_48_kib_is_refused_at_load() {
    let dev = h200();
    let kernel = |decls: &str| {
        format!(
            r#"
.visible .entry big(.param .u32 p)
{{
    .reg .b32 %r<4>;
{decls}
    mov.u32 %r1, 0;
    ret;
}}
"#
        )
    };
    let m = load(&dev, &kernel("    .shared .align 4 .b8 a[49152];"));
    assert_eq!(m.kernels["big"].static_smem, 49152);
    dev.unload(m);
    for decls in [
        "    .shared .align 4 .b8 a[49153];",
        "    .shared .align 4 .b8 a[24576];\n    .shared .align 4 .b8 b[24580];",
        "    .shared .align 8 .b64 a[6145];",
    ] {
        let ptx = format!("{HEADER}{}", kernel(decls));
        match dev.load_module(&ptx) {
            Err(EmuError::Unsupported { kernel, msg, .. }) => {
                assert_eq!(kernel, "big");
                assert!(
                    msg.contains("static shared memory") && msg.contains("49152"),
                    "{msg}"
                );
            }
            Err(e) => panic!("{decls}: expected Unsupported, got {e:?}"),
            Ok(_) => panic!("{decls}: more than 48 KiB of static shared memory loaded"),
        }
    }
}

#[test]
fn a_parameter_buffer_of_the_wrong_size() {
    let dev = h200();
    let m = load(
        &dev,
        r#"
.visible .entry params(.param .u64 pa, .param .u32 pb, .param .align 8 .b8 pc[24])
{
    ret;
}
"#,
    );
    let k = &m.kernels["params"];
    let size = k.param_bytes as usize;
    assert_eq!(size, 40, "u64 at 0, u32 at 8, a 24-byte struct at 16");
    accepted(
        go(
            &dev,
            &m,
            "params",
            Req::new([1, 1, 1], [1, 1, 1]),
            &vec![0; size],
        ),
        "the right size",
    );
    for n in [0, 8, 12, size - 1, size + 1, 64] {
        match go(
            &dev,
            &m,
            "params",
            Req::new([1, 1, 1], [1, 1, 1]),
            &vec![0; n],
        ) {
            Err(EmuError::InvalidValue(msg)) => {
                assert!(msg.contains("`params`"), "{msg}");
                assert!(
                    msg.contains(&format!("{size} bytes")) && msg.contains(&format!("{n} given")),
                    "{msg}"
                );
            }
            r => panic!("{n} bytes of parameters: expected InvalidValue, got {r:?}"),
        }
    }
}

/// Kernel `bad` with `line` after its parameter load, on line 10 of the module.
fn one_line(line: &str) -> String {
    format!(
        "{HEADER}
.visible .entry bad(.param .u64 p)
{{
    .reg .b32 %r<4>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [p];
    {line}
    ret;
}}
"
    )
}

#[test]
fn an_unknown_instruction_is_refused_at_load() {
    let dev = h200();
    assert!(
        dev.load_module(&one_line("add.u32 %r1, %r2, %r3;")).is_ok(),
        "the control"
    );
    for (line, name) in [
        ("frobnicate.u32 %r1, %r2;", "frobnicate"),
        ("atom.global.add.u32 %r1, [%rd1], 1;", "atom"),
        ("prefetch.global.L2 [%rd1];", "prefetch"),
    ] {
        match dev.load_module(&one_line(line)) {
            Err(EmuError::Unsupported {
                kernel,
                ptx_line,
                instruction,
                msg,
            }) => {
                assert_eq!(kernel, "bad");
                assert_eq!(ptx_line, 10, "{line}: {msg}");
                assert!(instruction.contains(name), "{line}: {instruction}");
                let e = EmuError::Unsupported {
                    kernel,
                    ptx_line,
                    instruction,
                    msg,
                };
                assert!(
                    e.to_string().contains(name) && e.to_string().contains("line 10"),
                    "{e}"
                );
            }
            Err(e) => panic!("{line}: expected Unsupported, got {e:?}"),
            Ok(_) => panic!("{line}: loaded"),
        }
    }
}

#[test]
fn a_device_function_is_refused_at_load() {
    let dev = h200();
    let ptx = format!(
        "{HEADER}
.func (.param .b32 r) twice(.param .b32 x)
{{
    .reg .b32 %r<3>;
    ld.param.b32 %r1, [x];
    add.u32 %r2, %r1, %r1;
    st.param.b32 [r], %r2;
    ret;
}}
{EMPTY}"
    );
    match dev.load_module(&ptx) {
        Err(e @ (EmuError::Parse { .. } | EmuError::Unsupported { .. })) => {
            assert!(e.to_string().contains(".func"), "{e}");
            if let EmuError::Parse { line, .. } = e {
                assert_eq!(line, 5, "{e}");
            }
        }
        Err(e) => panic!("expected a Parse or Unsupported error, got {e:?}"),
        Ok(_) => panic!("a module with a .func loaded"),
    }
}

#[test]
fn a_module_targeting_a_newer_architecture() {
    let module =
        |target: &str| format!(".version 8.0\n.target {target}\n.address_size 64\n{EMPTY}");
    let a100 = device_of(DeviceConfig::a100(1 << 24));
    let h200 = h200();
    for target in ["sm_80", "sm_75", "sm_70"] {
        assert!(
            a100.load_module(&module(target)).is_ok(),
            "{target} on an A100"
        );
    }
    for target in ["sm_90", "sm_90a", "sm_86", "sm_89"] {
        match a100.load_module(&module(target)) {
            Ok(_) => panic!("{target} loaded on an sm_80 device"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(target) && msg.contains("sm_80"),
                    "{target}: {msg}"
                );
            }
        }
        assert!(
            h200.load_module(&module(target)).is_ok(),
            "{target} on an H200"
        );
    }
    assert!(
        h200.load_module(&module("sm_100")).is_err(),
        "sm_100 on an H200"
    );
}

fn expect_parse_error_at(dev: &Device, line: &str, what: &str, at: u32) {
    match dev.load_module(&one_line(line)) {
        Err(EmuError::Parse { line: l, msg }) => {
            assert_eq!(l, at, "{what} (`{line}`): {msg}");
            let e = EmuError::Parse { line: l, msg };
            assert!(e.to_string().contains(&format!("line {at}")), "{e}");
        }
        Err(e) => panic!("{what} (`{line}`): expected a Parse error, got {e:?}"),
        Ok(_) => panic!("{what} (`{line}`): loaded"),
    }
}

#[test]
fn a_syntax_error_names_its_line() {
    let dev = h200();
    for (line, what) in [
        ("add.u32 %r1, %r2,, %r3;", "an empty operand"),
        ("add.u32 %r1 %r2 %r3;", "operands without commas"),
        (
            "ld.global.u32 %r1, [%rd1+];",
            "an address offset without a number",
        ),
        ("mov.u32 %r1, 0x;", "a number without digits"),
        ("add.u32 %r1, %r2, %r3", "a missing `;`"),
    ] {
        expect_parse_error_at(&dev, line, what, 10);
    }
    // A body that is never closed.
    let ptx = format!("{HEADER}\n.visible .entry open(.param .u64 p)\n{{\n    ret;\n");
    assert!(matches!(dev.load_module(&ptx), Err(EmuError::Parse { .. })));
    // A module-level directive the parser does not know.
    let ptx = format!("{HEADER}\n.frobnicate 3\n{EMPTY}");
    match dev.load_module(&ptx) {
        Err(EmuError::Parse { line, .. }) => assert_eq!(line, 5),
        r => panic!("expected a Parse error, got {:?}", r.err()),
    }
}

/// An operand bracket that is never closed: the error should be on its line (10), not at the
/// end of the module.
#[test]

fn an_unclosed_bracket_names_its_line() {
    let dev = h200();
    expect_parse_error_at(&dev, "ld.global.u32 %r1, [%rd1;", "an unclosed address", 10);
    expect_parse_error_at(&dev, "add.u32 %r1, {%r2, %r3;", "an unclosed vector", 10);
}

#[test]
fn allocating_beyond_device_memory() {
    let total = 1u64 << 20;
    let dev = device_of(DeviceConfig::h200(total));
    assert_eq!(dev.memory_info(), (total, total));
    match dev.alloc(total + 1) {
        Err(EmuError::OutOfMemory { requested, free }) => {
            assert_eq!((requested, free), (total + 1, total));
        }
        r => panic!("expected OutOfMemory, got {r:?}"),
    }
    let a = dev.alloc(total / 2).expect("half");
    let b = dev.alloc(total / 4).expect("a quarter");
    match dev.alloc(total / 2) {
        Err(e @ EmuError::OutOfMemory { .. }) => {
            assert!(e.to_string().contains("out of device memory"), "{e}");
        }
        r => panic!("expected OutOfMemory, got {r:?}"),
    }
    dev.free(a).expect("free");
    let c = dev.alloc(total / 2).expect("half again, after the free");
    dev.free(b).unwrap();
    dev.free(c).unwrap();
    let all = dev.alloc(total).expect("all of it");
    assert!(matches!(dev.alloc(1), Err(EmuError::OutOfMemory { .. })));
    dev.free(all).unwrap();
    assert_eq!(dev.memory_info().0, total);
}
