//! The kernels that build.rs embeds: the sources match `kernels/`, expand to self-contained
//! programs, and their PTX goes through `ptxas -v` for every architecture, with no register
//! spills in the GEMM, convolution and attention kernels.
//!
//! The `ptxas` test needs NVRTC at build time (for the PTX) and `ptxas`; `tools/cuda_toolchain.sh`
//! installs both into `.cache/cuda`. Without them it prints that it skipped, unless
//! `FREELUNCH_REQUIRE_CUDA_TOOLS=1` (as `tools/test.sh` sets), when it fails instead. Run it with
//! `--nocapture` to see the register, spill and shared-memory table.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{self, Command};
use std::thread;

use freelunch::backend::cuda::kernels::{COMMON, PTX, SOURCES};
use freelunch::backend::cuda::source::{expand, ARCHS, COMMON_INCLUDE};

/// Set to `1` to fail, rather than skip, when NVRTC or ptxas is missing.
const REQUIRE_ENV: &str = "FREELUNCH_REQUIRE_CUDA_TOOLS";
/// The ptxas to run, overriding the one in `.cache/cuda` and the one on `PATH`.
const PTXAS_ENV: &str = "FREELUNCH_PTXAS";
/// Kernel families whose entry functions must not spill registers to local memory.
const NO_SPILL_FAMILIES: [&str; 3] = ["gemm", "conv", "attention"];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> bool {
    env::var(REQUIRE_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The ptxas to run, or what is missing.
fn find_ptxas() -> Result<PathBuf, String> {
    let runs = |path: &Path| {
        Command::new(path)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if let Some(path) = env::var_os(PTXAS_ENV) {
        let path = PathBuf::from(path);
        return if runs(&path) {
            Ok(path)
        } else {
            Err(format!(
                "ptxas: {PTXAS_ENV}={} does not run",
                path.display()
            ))
        };
    }
    let cached = manifest_dir().join(".cache/cuda/site/nvidia/cuda_nvcc/bin/ptxas");
    if runs(&cached) {
        return Ok(cached);
    }
    let on_path = PathBuf::from("ptxas");
    if runs(&on_path) {
        return Ok(on_path);
    }
    Err(format!(
        "ptxas: neither {PTXAS_ENV}, nor {}, nor on PATH",
        cached.display()
    ))
}

/// What `ptxas -v` says about one entry function.
#[derive(Debug, Default, PartialEq)]
struct EntryStats {
    name: String,
    registers: u32,
    stack_frame: u32,
    spill_stores: u32,
    spill_loads: u32,
    smem: u32,
}

/// The entry functions of a `ptxas -v` log, in the order ptxas compiled them. Lines about
/// non-entry functions (`.func`) are skipped.
fn parse_ptxas_log(log: &str) -> Vec<EntryStats> {
    let mut entries: Vec<EntryStats> = Vec::new();
    // Whether the last "Function properties for" line named the entry being compiled.
    let mut properties_of_entry = false;
    for line in log.lines() {
        let text = line
            .trim()
            .strip_prefix("ptxas info")
            .map_or(line.trim(), |rest| {
                rest.trim_start().trim_start_matches(':').trim()
            });
        if let Some(rest) = text.strip_prefix("Compiling entry function '") {
            let name = rest.split('\'').next().unwrap_or_default();
            entries.push(EntryStats {
                name: name.to_owned(),
                ..EntryStats::default()
            });
            properties_of_entry = false;
        } else if let Some(name) = text.strip_prefix("Function properties for ") {
            properties_of_entry = entries.last().is_some_and(|e| e.name == name.trim());
        } else if text.contains("bytes stack frame") {
            if let Some(entry) = entries.last_mut().filter(|_| properties_of_entry) {
                for item in text.split(',') {
                    let (value, what) = number_and_rest(item);
                    match what {
                        "bytes stack frame" => entry.stack_frame = value,
                        "bytes spill stores" => entry.spill_stores = value,
                        "bytes spill loads" => entry.spill_loads = value,
                        _ => {}
                    }
                }
            }
            properties_of_entry = false;
        } else if let Some(rest) = text.strip_prefix("Used ") {
            if let Some(entry) = entries.last_mut() {
                for item in rest.split(',') {
                    let item = item.trim();
                    let (value, what) = number_and_rest(item);
                    match what {
                        "registers" => entry.registers = value,
                        "bytes smem" => entry.smem = value,
                        _ => {}
                    }
                }
            }
        }
    }
    entries
}

/// `"12 bytes smem"` as `(12, "bytes smem")`; `(0, item)` when `item` starts with no number.
fn number_and_rest(item: &str) -> (u32, &str) {
    let item = item.trim();
    let digits = item.bytes().take_while(u8::is_ascii_digit).count();
    match item[..digits].parse() {
        Ok(value) => (value, item[digits..].trim()),
        Err(_) => (0, item),
    }
}

/// The function name in an Itanium-mangled name (`gemm_tile` in `_Z9gemm_tileIfEvPT_`, the last
/// component of a nested name); other names as they are.
fn base_name(name: &str) -> &str {
    let Some(mut rest) = name.strip_prefix("_Z") else {
        return name;
    };
    let nested = rest.starts_with('N');
    if nested {
        rest = &rest[1..];
    }
    let mut last = name;
    loop {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(len) = rest[..digits].parse::<usize>() else {
            break;
        };
        let Some(component) = rest.get(digits..digits + len) else {
            break;
        };
        last = component;
        rest = &rest[digits + len..];
        if !nested {
            break;
        }
    }
    last
}

fn must_not_spill(name: &str) -> bool {
    let base = base_name(name);
    NO_SPILL_FAMILIES
        .iter()
        .any(|family| base.starts_with(family))
}

#[test]
fn ptxas_assembles_every_kernel_without_spills() {
    if SOURCES.is_empty() {
        println!("no kernels/*.cu: nothing to assemble");
        return;
    }
    let mut missing = Vec::new();
    if PTX.is_empty() {
        missing.push(
            "NVRTC: build.rs found no NVRTC, so no PTX is embedded (see its warning; \
             FREELUNCH_NVRTC names the library)"
                .to_owned(),
        );
    }
    let ptxas = find_ptxas();
    if let Err(e) = &ptxas {
        missing.push(e.clone());
    }
    if !missing.is_empty() {
        if required() {
            panic!(
                "{REQUIRE_ENV} is set but CUDA build tools are missing (run tools/cuda_toolchain.sh):\n  {}",
                missing.join("\n  ")
            );
        }
        println!("skipped: NVRTC/ptxas not found (run tools/cuda_toolchain.sh)");
        println!("  {}", missing.join("\n  "));
        return;
    }
    let ptxas = ptxas.unwrap();

    let mut failures = Vec::new();
    for (stem, _) in SOURCES {
        for arch in ARCHS {
            if !PTX.iter().any(|&(s, a, _)| s == *stem && a == arch) {
                failures.push(format!("kernels/{stem}.cu has no PTX for {arch}"));
            }
        }
    }
    for (stem, arch, _) in PTX {
        if !SOURCES.iter().any(|(s, _)| s == stem) || !ARCHS.contains(arch) {
            failures.push(format!(
                "PTX for {stem} ({arch}) matches no kernel file or arch"
            ));
        }
    }

    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kernels_ptxas-{}", process::id()));
    fs::create_dir_all(&dir).unwrap();
    let outputs: Vec<_> = thread::scope(|scope| {
        let handles: Vec<_> = PTX
            .iter()
            .map(|&(stem, arch, ptx)| {
                let (dir, ptxas) = (&dir, &ptxas);
                scope.spawn(move || {
                    let input = dir.join(format!("{stem}.{arch}.ptx"));
                    fs::write(&input, ptx).unwrap();
                    Command::new(ptxas)
                        .arg(format!("-arch={arch}"))
                        .arg("-v")
                        .arg("-o")
                        .arg(dir.join(format!("{stem}.{arch}.cubin")))
                        .arg(&input)
                        .output()
                        .unwrap_or_else(|e| panic!("running {}: {e}", ptxas.display()))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The PTX stays for a look at the lines ptxas complains about.
    if outputs.iter().all(|output| output.status.success()) {
        fs::remove_dir_all(&dir).ok();
    }

    let mut rows = vec![[
        "file",
        "arch",
        "function",
        "registers",
        "spills (st/ld)",
        "smem",
    ]
    .map(String::from)];
    for (&(stem, arch, _), output) in PTX.iter().zip(&outputs) {
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            failures.push(format!(
                "ptxas -arch={arch} fails on the PTX of kernels/{stem}.cu ({}):\n{log}",
                output.status
            ));
            continue;
        }
        for entry in parse_ptxas_log(&log) {
            if must_not_spill(&entry.name) && (entry.spill_stores > 0 || entry.spill_loads > 0) {
                failures.push(format!(
                    "{} in kernels/{stem}.cu spills for {arch}: {} bytes stored, {} bytes loaded",
                    entry.name, entry.spill_stores, entry.spill_loads
                ));
            }
            rows.push([
                format!("{stem}.cu"),
                arch.to_owned(),
                entry.name,
                entry.registers.to_string(),
                format!("{}/{}", entry.spill_stores, entry.spill_loads),
                entry.smem.to_string(),
            ]);
        }
    }
    print_table(&rows);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn print_table(rows: &[[String; 6]]) {
    let mut widths = [0; 6];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            // Text columns to the left, numbers to the right.
            if i < 3 {
                line.push_str(&format!("{cell:<width$}  "));
            } else {
                line.push_str(&format!("{cell:>width$}  "));
            }
        }
        println!("{}", line.trim_end());
    }
}

#[test]
fn sources_are_the_kernels_directory() {
    let dir = manifest_dir().join("kernels");
    let mut on_disk: Vec<(String, String)> = fs::read_dir(&dir)
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "cu"))
                .map(|path| {
                    let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
                    (stem, fs::read_to_string(&path).unwrap())
                })
                .collect()
        })
        .unwrap_or_default();
    on_disk.sort();
    let embedded: Vec<(String, String)> = SOURCES
        .iter()
        .map(|&(stem, text)| (stem.to_owned(), text.to_owned()))
        .collect();
    let names = |list: &[(String, String)]| list.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&embedded),
        names(&on_disk),
        "SOURCES against kernels/*.cu"
    );
    assert!(
        embedded == on_disk,
        "SOURCES differ from the files in kernels/"
    );
    let common = fs::read_to_string(dir.join("common.cuh")).unwrap_or_default();
    assert_eq!(COMMON, common, "COMMON against kernels/common.cuh");
}

#[test]
fn expanded_sources_include_nothing() {
    for (stem, text) in SOURCES {
        if text.lines().any(|line| line.trim() == COMMON_INCLUDE) {
            assert!(
                !COMMON.is_empty(),
                "kernels/{stem}.cu includes a missing common.cuh"
            );
        }
        let expanded = expand(stem, text, COMMON);
        let includes: Vec<&str> = expanded
            .lines()
            .filter(|line| {
                line.trim_start()
                    .strip_prefix('#')
                    .is_some_and(|rest| rest.trim_start().starts_with("include"))
            })
            .collect();
        assert!(
            includes.is_empty(),
            "kernels/{stem}.cu still includes after expansion: {includes:?}"
        );
    }
}

#[test]
fn ptxas_logs_parse() {
    let log = "ptxas info    : 0 bytes gmem
ptxas info    : Function properties for _Z6helperv
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Compiling entry function '_Z9gemm_tileIfEvPT_' for 'sm_80'
ptxas info    : Function properties for _Z9gemm_tileIfEvPT_
    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 49152 bytes smem, 372 bytes cmem[0]
ptxas info    : Compile time = 2.643 ms
ptxas info    : Compiling entry function 'silu' for 'sm_90'
ptxas info    : Function properties for silu
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers
";
    let entries = parse_ptxas_log(log);
    assert_eq!(
        entries,
        [
            EntryStats {
                name: "_Z9gemm_tileIfEvPT_".into(),
                registers: 255,
                stack_frame: 16,
                spill_stores: 8,
                spill_loads: 12,
                smem: 49152,
            },
            EntryStats {
                name: "silu".into(),
                registers: 8,
                ..EntryStats::default()
            },
        ]
    );
    assert!(must_not_spill("_Z9gemm_tileIfEvPT_"));
    assert!(must_not_spill("_ZN4conv10conv2d_nhwcEPf"));
    assert!(must_not_spill("attention_softmax"));
    assert!(!must_not_spill("silu"));
    assert!(!must_not_spill("_Z5scaleIfEvPT_fi"));
    assert_eq!(base_name("_ZN2ns6conv3dILi3EEEvPf"), "conv3d");
    assert_eq!(base_name("_Z"), "_Z");
}
