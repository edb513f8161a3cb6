//! TEMPORARY stand-in until build.rs generates this (merge replaces it).
pub static COMMON: &str = include_str!("../../kernels/common.cuh");
pub static SOURCES: &[(&str, &str)] = &[
    ("attention", include_str!("../../kernels/attention.cu")),
    ("elementwise", include_str!("../../kernels/elementwise.cu")),
    ("freeu", include_str!("../../kernels/freeu.cu")),
    ("gemm", include_str!("../../kernels/gemm.cu")),
    ("norm", include_str!("../../kernels/norm.cu")),
];
pub static PTX: &[(&str, &str, &str)] = &[];
