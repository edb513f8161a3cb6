// GroupNorm (optionally followed by a time-embedding scale/shift and SiLU, fused) and LayerNorm.
//
// GroupNorm over NHWC: one CTA per (group, sample) reduces the group's H·W·(C/G) values in three
// sweeps (sum; sum of squared deviations from the mean — the two-pass form, as robust as the
// CPU reference; then normalise and write), all in f32. The sweeps after the first usually hit
// L2. LayerNorm: one CTA per row, the same two-pass statistics. Biased variance, eps inside the
// square root, as torch. Limits: a group or row must fit in 2^31 elements.

#include "common.cuh"

template <typename T>
__device__ __forceinline__ void group_norm_impl(const T* x, const float* gamma, const float* beta,
                                                const T* scale_shift, T* y, int HW, int C,
                                                int G, float eps, int silu) {
    __shared__ float scratch[32];
    const int g = blockIdx.x, b = blockIdx.y, cg = C / G;
    const long long base = (long long)b * HW * C + (long long)g * cg;
    const long long n = (long long)HW * cg;
    auto at = [&](long long e) { return base + (e / cg) * C + (e % cg); };

    float s = 0.0f;
    for (long long e = threadIdx.x; e < n; e += blockDim.x) s += to_f32(x[at(e)]);
    const float mean = block_sum(s, scratch) / (float)n;
    float q = 0.0f;
    for (long long e = threadIdx.x; e < n; e += blockDim.x) {
        const float d = to_f32(x[at(e)]) - mean;
        q += d * d;
    }
    const float rstd = rsqrtf(block_sum(q, scratch) / (float)n + eps);
    for (long long e = threadIdx.x; e < n; e += blockDim.x) {
        const int c = g * cg + (int)(e % cg);
        float v = (to_f32(x[at(e)]) - mean) * rstd * gamma[c] + beta[c];
        if (scale_shift) {
            const T* row = scale_shift + (long long)b * 2 * C;
            v = v * (1.0f + to_f32(row[c])) + to_f32(row[C + c]);
        }
        if (silu) v = silu_f32(v);
        y[at(e)] = from_f32<T>(v);
    }
}

template <typename T>
__device__ __forceinline__ void layer_norm_impl(const T* x, const float* gamma, const float* beta,
                                                T* y, int D, float eps) {
    __shared__ float scratch[32];
    const long long row = (long long)blockIdx.x * D;
    float s = 0.0f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) s += to_f32(x[row + d]);
    const float mean = block_sum(s, scratch) / (float)D;
    float q = 0.0f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        const float v = to_f32(x[row + d]) - mean;
        q += v * v;
    }
    const float rstd = rsqrtf(block_sum(q, scratch) / (float)D + eps);
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        y[row + d] = from_f32<T>((to_f32(x[row + d]) - mean) * rstd * gamma[d] + beta[d]);
}

// grid (G, B), block 256. scale_shift: [B, 2C] (scale then shift) or null.
#define NORM_KERNELS(SUFFIX, T)                                                                \
    extern "C" __global__ void group_norm_##SUFFIX(const T* x, const float* gamma,             \
                                                   const float* beta, const T* scale_shift,    \
                                                   T* y, int HW, int C, int G, float eps,      \
                                                   int silu) {                                 \
        group_norm_impl<T>(x, gamma, beta, scale_shift, y, HW, C, G, eps, silu);               \
    }                                                                                          \
    extern "C" __global__ void layer_norm_##SUFFIX(const T* x, const float* gamma,             \
                                                   const float* beta, T* y, int D, float eps) { \
        layer_norm_impl<T>(x, gamma, beta, y, D, eps);                                         \
    }
FOR_EACH_DTYPE(NORM_KERNELS)
