//! How a kernel file becomes an NVRTC program: the target architectures, the expansion of the
//! shared header and the compiler options. One source of truth for `build.rs` (which includes this
//! file with `#[path]` to compile PTX ahead of time) and for the CUDA backend (which compiles at
//! first use when the build found no NVRTC), so std only.

/// The GPU architectures every kernel file is compiled for, as `sm_XY`.
pub const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

/// The line, first in every `kernels/*.cu`, that [`expand`] replaces with `kernels/common.cuh`.
pub const COMMON_INCLUDE: &str = "#include \"common.cuh\"";

/// `source` (the text of `kernels/{stem}.cu`) with each line that reads [`COMMON_INCLUDE`]
/// (surrounding blanks allowed) replaced by `common`, the text of `kernels/common.cuh`: NVRTC then
/// needs no include path. `#line` directives around the header keep file names and line numbers
/// true to `kernels/`, so compiler messages and the PTX's `.loc` debug lines (which the PTX
/// executor's fault messages quote) name `kernels/{stem}.cu:N` and `kernels/common.cuh:N`. A
/// source without that line comes back unchanged.
pub fn expand(stem: &str, source: &str, common: &str) -> String {
    if !source.lines().any(|line| line.trim() == COMMON_INCLUDE) {
        return source.to_owned();
    }
    let mut out = String::with_capacity(source.len() + common.len() + 128);
    out.push_str(&format!("#line 1 \"kernels/{stem}.cu\"\n"));
    for (index, line) in source.split_inclusive('\n').enumerate() {
        if line.trim() == COMMON_INCLUDE {
            out.push_str("#line 1 \"kernels/common.cuh\"\n");
            out.push_str(common);
            if !common.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("#line {} \"kernels/{stem}.cu\"\n", index + 2));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The NVRTC options for `arch` (`"sm_80"` gives `compute_80` PTX). No `--use_fast_math`: the
/// kernels rely on accurate `expf`, `erff` and division.
///
/// # Panics
///
/// If `arch` is not of the form `sm_XY`.
pub fn nvrtc_options(arch: &str) -> Vec<String> {
    let number = arch
        .strip_prefix("sm_")
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or_else(|| panic!("GPU architecture {arch:?} is not of the form sm_XY"));
    vec![
        format!("--gpu-architecture=compute_{number}"),
        "--std=c++17".to_owned(),
        "-default-device".to_owned(),
        "-lineinfo".to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_replaces_only_the_include_line() {
        let source = "// k\n#include \"common.cuh\"\nextern \"C\" __global__ void k() {}\n";
        let out = expand("k", source, "struct half_t {};\n");
        assert_eq!(
            out,
            "#line 1 \"kernels/k.cu\"\n// k\n#line 1 \"kernels/common.cuh\"\nstruct half_t {};\n\
             #line 3 \"kernels/k.cu\"\nextern \"C\" __global__ void k() {}\n"
        );
        // A header without a final newline still ends its line.
        assert_eq!(
            expand("x", "#include \"common.cuh\"\nx\n", "h"),
            "#line 1 \"kernels/x.cu\"\n#line 1 \"kernels/common.cuh\"\nh\n#line 2 \"kernels/x.cu\"\nx\n"
        );
        // CRLF line ends and a missing final newline are kept as they are.
        assert!(expand("y", "#include \"common.cuh\"\r\ny", "h\n").ends_with("\"kernels/y.cu\"\ny"));
    }

    #[test]
    fn expand_without_the_include_is_the_identity() {
        let source = "// #include \"common.cuh\" in a comment stays\n__global__ void k() {}";
        assert_eq!(expand("k", source, "h\n"), source);
        assert_eq!(expand("k", "", "h\n"), "");
    }

    #[test]
    fn options_name_the_virtual_architecture() {
        assert_eq!(
            nvrtc_options("sm_80"),
            [
                "--gpu-architecture=compute_80",
                "--std=c++17",
                "-default-device",
                "-lineinfo"
            ]
        );
        assert_eq!(nvrtc_options("sm_90")[0], "--gpu-architecture=compute_90");
        assert_eq!(nvrtc_options("sm_90a")[0], "--gpu-architecture=compute_90a");
        for arch in ARCHS {
            assert!(!nvrtc_options(arch).iter().any(|o| o.contains("fast")));
        }
    }

    #[test]
    #[should_panic(expected = "not of the form sm_XY")]
    fn options_reject_a_bad_architecture() {
        nvrtc_options("compute_80");
    }
}
