// Multi-head scaled dot-product attention, flash style: softmax(Q·Kᵀ·scale)·V per head with an
// online (running max / running sum) softmax, so no Nq × Nk score matrix ever exists.
//
// Layout: tokens are rows; head h of a row is columns [h·D, (h+1)·D). Strides are parameters,
// so Q, K and V may be column slices of one fused projection. Grid (ceil(Nq/16), heads, B),
// 128 threads: 4 warps × 4 query rows. Each 32-key tile of K and V is staged in shared memory
// as f32 (K rows padded to D+1 floats: lane j reads key j without bank conflicts for even D);
// lane j scores key j against the warp's 4 rows, the warp reduces max and sum with shuffles,
// then every lane accumulates its own output dims (d ≡ lane mod 32) over the tile's keys.
// All arithmetic is f32 in base 2 (Q pre-scaled by scale·log2 e).
// Limits: D ≤ 32·DPL of the chosen instantiation (64, 96, 160, 256 or 512); dynamic shared
// memory is (80·D + 32)·4 bytes, over 48 KiB from D = 154 (the host raises the limit).
// This is the exact SIMT form for every dtype; tensor-core (mma) attention is future work.

#include "common.cuh"

struct AttentionParams {
    const void* q;
    const void* k;
    const void* v;
    void* o;
    long long q_batch, k_batch, v_batch, o_batch;  // elements between samples
    int q_row, k_row, v_row, o_row;                // elements between tokens
    int Nq, Nk, heads, D;
    float scale;
};

namespace attn {
constexpr int KT = 32, ROWS_PER_WARP = 4, WARPS = 4, ROWS = ROWS_PER_WARP * WARPS;
}

template <typename T, int DPL>
__device__ __forceinline__ void attention_impl(const AttentionParams& p) {
    using namespace attn;
    extern __shared__ float smem[];
    const int D = p.D;
    float* Ks = smem;              // [KT][D + 1]
    float* Vs = Ks + KT * (D + 1);  // [KT][D]
    float* Qs = Vs + KT * D;        // [ROWS][D]

    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * ROWS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const T* q = (const T*)p.q + b * p.q_batch + (long long)h * D;
    const T* k = (const T*)p.k + b * p.k_batch + (long long)h * D;
    const T* v = (const T*)p.v + b * p.v_batch + (long long)h * D;
    T* o = (T*)p.o + b * p.o_batch + (long long)h * D;
    const float qscale = p.scale * 1.4426950408889634f;
    const float neg_inf = __int_as_float(0xff800000);

    for (int e = threadIdx.x; e < ROWS * D; e += blockDim.x) {
        const int r = e / D, d = e - r * D, qi = q0 + r;
        Qs[e] = qi < p.Nq ? to_f32(q[(long long)qi * p.q_row + d]) * qscale : 0.0f;
    }

    float m[ROWS_PER_WARP], l[ROWS_PER_WARP], acc[ROWS_PER_WARP][DPL];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        m[r] = neg_inf;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; ++i) acc[r][i] = 0.0f;
    }
    const float* qrow = Qs + warp * ROWS_PER_WARP * D;

    for (int k0 = 0; k0 < p.Nk; k0 += KT) {
        __syncthreads();  // the previous tile is consumed (first pass: Q is staged)
        for (int e = threadIdx.x; e < KT * D; e += blockDim.x) {
            const int j = e / D, d = e - j * D, kj = k0 + j;
            const bool in = kj < p.Nk;
            Ks[j * (D + 1) + d] = in ? to_f32(k[(long long)kj * p.k_row + d]) : 0.0f;
            Vs[j * D + d] = in ? to_f32(v[(long long)kj * p.v_row + d]) : 0.0f;
        }
        __syncthreads();

        float s[ROWS_PER_WARP];
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; ++r) s[r] = 0.0f;
        const float* krow = Ks + lane * (D + 1);
        for (int d = 0; d < D; ++d) {
            const float kd = krow[d];
#pragma unroll
            for (int r = 0; r < ROWS_PER_WARP; ++r) s[r] = fmaf(qrow[r * D + d], kd, s[r]);
        }
        const bool valid = k0 + lane < p.Nk;
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; ++r) {
            const float sr = valid ? s[r] : neg_inf;
            const float mnew = fmaxf(m[r], warp_max(sr));  // finite: key k0 is always valid
            const float pr = exp2f(sr - mnew);
            const float corr = exp2f(m[r] - mnew);
            l[r] = l[r] * corr + warp_sum(pr);
#pragma unroll
            for (int i = 0; i < DPL; ++i) acc[r][i] *= corr;
            m[r] = mnew;
            s[r] = pr;
        }
        const int kn = min(KT, p.Nk - k0);
        for (int j = 0; j < kn; ++j) {
            float pj[ROWS_PER_WARP];
#pragma unroll
            for (int r = 0; r < ROWS_PER_WARP; ++r) pj[r] = __shfl_sync(0xffffffffu, s[r], j);
            const float* vrow = Vs + j * D;
#pragma unroll
            for (int i = 0; i < DPL; ++i) {
                const int d = lane + 32 * i;
                const float vd = d < D ? vrow[d] : 0.0f;
#pragma unroll
                for (int r = 0; r < ROWS_PER_WARP; ++r) acc[r][i] = fmaf(pj[r], vd, acc[r][i]);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        const int qi = q0 + warp * ROWS_PER_WARP + r;
        if (qi >= p.Nq) continue;
        const float inv = 1.0f / l[r];
#pragma unroll
        for (int i = 0; i < DPL; ++i) {
            const int d = lane + 32 * i;
            if (d < D) o[(long long)qi * p.o_row + d] = from_f32<T>(acc[r][i] * inv);
        }
    }
}

#define ATTENTION_KERNEL(SUFFIX, T, DPL)                                                       \
    extern "C" __global__ void __launch_bounds__(128)                                          \
        attention_##SUFFIX##_d##DPL(const AttentionParams p) {                                 \
        attention_impl<T, DPL>(p);                                                             \
    }
#define ATTENTION_KERNELS(SUFFIX, T)                                                           \
    ATTENTION_KERNEL(SUFFIX, T, 2)                                                             \
    ATTENTION_KERNEL(SUFFIX, T, 3)                                                             \
    ATTENTION_KERNEL(SUFFIX, T, 5)                                                             \
    ATTENTION_KERNEL(SUFFIX, T, 8)                                                             \
    ATTENTION_KERNEL(SUFFIX, T, 16)
FOR_EACH_DTYPE(ATTENTION_KERNELS)
