//! TEMPORARY stand-in (merge replaces it).
pub const ARCHS: [&str; 2] = ["sm_80", "sm_90"];
pub fn expand(source: &str, common: &str) -> String {
    source.replace("#include \"common.cuh\"", common)
}
pub fn nvrtc_options(arch: &str) -> Vec<String> {
    vec![
        format!(
            "--gpu-architecture=compute_{}",
            arch.trim_start_matches("sm_")
        ),
        "--std=c++17".into(),
        "-default-device".into(),
        "-lineinfo".into(),
    ]
}
