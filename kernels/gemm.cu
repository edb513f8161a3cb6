// Masked implicit GEMM: every linear layer and every convolution of the U-Net.
//
// One problem shape covers both: activations are NHWC, a linear layer is a 1×1 convolution over
// an image one row high (H = 1, W = tokens), and weights are [N, KH, KW, Cin] = [N, K] rows, so
//   y[b, m, n] = (sum_k A_b[m, k] · (W ⊙ M_b)[n, k] + bias[n] + add_bn[b, n] + res[b, m, n]) · s
// where A_b[m, k] is the input pixel that tap k of output pixel m reads (im2col by address
// arithmetic; zero outside the padded image). M_b is MaskUNet's binary mask, bit-packed as
// 32-bit words per weight row (bit k of row n keeps W[n, k]); the mask is applied while a weight
// tile is staged from global memory into shared memory, so masked and dense runs read the same
// bytes plus 1/16 (f16) of mask, and W ⊙ M_b never exists in memory. Samples are grid.z, so
// every CTA has exactly one mask (mask_sample_stride = 0 shares one mask across the batch).
//
// Two kernels:
// - gemm_conv_{f16,bf16}[_vec]: tensor cores (mma.sync m16n8k16, f32 accumulate), CTA tile
//   128×128×32, 8 warps of 64×32, ldmatrix fragments from padded shared memory (conflict-free),
//   register-staged double buffering (the loads of tile k+1 are in flight during the MMAs of
//   tile k). `_vec` loads 16-byte vectors and needs Cin % 8 == 0; the plain one loads elements
//   (e.g. conv_in with 3 or 4 channels).
// - gemm_conv_f32: exact f32 FFMA (no TF32), CTA tile 64×64×16, 4×4 outputs per thread.
// Limits: M, N, K < 2^31 per sample; ragged M, N and K are handled by zero-filled tiles.

#include "common.cuh"

struct ConvGemmParams {
    const void* x;         // [B, H, W, Cin]
    const void* w;         // [N, K], K = KH·KW·Cin in (ky, kx, ci) order
    const unsigned* mask;  // [N, kwords] per mask, or null for dense
    const float* bias;     // [N] or null
    const void* add_bn;    // [B, N] or null (the time embedding of a resnet)
    const void* residual;  // [B, Ho, Wo, N] or null
    void* y;               // [B, Ho, Wo, N]
    long long mask_sample_stride;  // words between samples' masks; 0: one mask for all
    int H, W, Cin, Ho, Wo, N, K, KW, stride, pad_top, pad_left, kwords;
    float out_scale;
};

// Offset of A[m, k] within the sample's input, or -1 where the tap reads padding.
__device__ __forceinline__ long long a_offset(const ConvGemmParams& p, int m, int k) {
    const int tap = k / p.Cin, ci = k - tap * p.Cin;
    const int ky = tap / p.KW, kx = tap - ky * p.KW;
    const int oy = m / p.Wo, ox = m - oy * p.Wo;
    const int iy = oy * p.stride - p.pad_top + ky, ix = ox * p.stride - p.pad_left + kx;
    if (iy < 0 || iy >= p.H || ix < 0 || ix >= p.W) return -1;
    return ((long long)iy * p.W + ix) * p.Cin + ci;
}

__device__ __forceinline__ bool mask_bit(const unsigned* mask, int kwords, int n, int k) {
    return mask == nullptr || ((mask[(long long)n * kwords + (k >> 5)] >> (k & 31)) & 1u);
}

template <typename T>
__device__ __forceinline__ void store_output(const ConvGemmParams& p, int b, int m, int n,
                                             float acc) {
    const int M = p.Ho * p.Wo;
    if (m >= M || n >= p.N) return;
    float v = acc;
    if (p.bias) v += p.bias[n];
    if (p.add_bn) v += to_f32(((const T*)p.add_bn)[(long long)b * p.N + n]);
    const long long o = ((long long)b * M + m) * p.N + n;
    if (p.residual) v += to_f32(((const T*)p.residual)[o]);
    ((T*)p.y)[o] = from_f32<T>(v * p.out_scale);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core path (f16 / bf16 storage).

namespace tc {
constexpr int BM = 128, BN = 128, BK = 32, LDS = BK + 8;  // +8 halves: ldmatrix conflict-free
constexpr int THREADS = 256;

// Zeroes the 16-bit lanes of `v` (8 values at k..k+7) whose mask bit is clear.
__device__ __forceinline__ uint4 apply_mask8(uint4 v, unsigned bits) {
    unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const unsigned keep = ((bits >> (2 * j)) & 1u ? 0x0000ffffu : 0u) |
                              ((bits >> (2 * j + 1)) & 1u ? 0xffff0000u : 0u);
        w[j] &= keep;
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// Eight consecutive k of A row m (or W row n), as 16-bit values packed in a uint4.
template <bool VEC>
__device__ __forceinline__ uint4 load_a8(const ConvGemmParams& p, const unsigned short* x, int m,
                                         int k0) {
    const int M = p.Ho * p.Wo;
    if constexpr (VEC) {
        if (m >= M || k0 >= p.K) return make_uint4(0, 0, 0, 0);
        const long long o = a_offset(p, m, k0);  // Cin % 8 == 0: one tap for all eight
        return o < 0 ? make_uint4(0, 0, 0, 0) : *(const uint4*)(x + o);
    } else {
        unsigned short e[8];
    #pragma unroll
        for (int i = 0; i < 8; ++i) {
            long long o = (m < M && k0 + i < p.K) ? a_offset(p, m, k0 + i) : -1;
            e[i] = o < 0 ? 0 : x[o];
    }
    return make_uint4(e[0] | ((unsigned)e[1] << 16), e[2] | ((unsigned)e[3] << 16),
                      e[4] | ((unsigned)e[5] << 16), e[6] | ((unsigned)e[7] << 16));
    }
}

template <bool VEC>
__device__ __forceinline__ uint4 load_w8(const ConvGemmParams& p, const unsigned short* w,
                                         const unsigned* mask, int n, int k0) {
    if (n >= p.N || k0 >= p.K) return make_uint4(0, 0, 0, 0);
    if constexpr (VEC) {
        uint4 v = *(const uint4*)(w + (long long)n * p.K + k0);
        if (mask) v = apply_mask8(v, (mask[(long long)n * p.kwords + (k0 >> 5)] >> (k0 & 31)));
        return v;
    } else {
        unsigned short e[8];
    #pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int k = k0 + i;
            e[i] = (k < p.K && mask_bit(mask, p.kwords, n, k)) ? w[(long long)n * p.K + k] : 0;
    }
    return make_uint4(e[0] | ((unsigned)e[1] << 16), e[2] | ((unsigned)e[3] << 16),
                      e[4] | ((unsigned)e[5] << 16), e[6] | ((unsigned)e[7] << 16));
    }
}

template <typename T, bool VEC>
__device__ __forceinline__ void gemm_conv_tc(const ConvGemmParams& p) {
    __shared__ __align__(16) unsigned short As[2][BM][LDS];
    __shared__ __align__(16) unsigned short Bs[2][BN][LDS];

    const int b = blockIdx.z;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3;  // 2 × 4 warps, each 64 × 32

    const unsigned short* x =
        (const unsigned short*)p.x + (long long)b * p.H * p.W * p.Cin;
    const unsigned short* w = (const unsigned short*)p.w;
    const unsigned* mask = p.mask ? p.mask + b * p.mask_sample_stride : nullptr;

    // Each thread stages two 8-wide vectors of A and two of W per k-tile.
    int lrow[2], lk[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int v = tid + i * THREADS;
        lrow[i] = v >> 2;
        lk[i] = (v & 3) * 8;
    }
    uint4 ra[2], rb[2];
    auto fetch = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            ra[i] = load_a8<VEC>(p, x, m0 + lrow[i], k0 + lk[i]);
            rb[i] = load_w8<VEC>(p, w, mask, n0 + lrow[i], k0 + lk[i]);
        }
    };
    auto stage = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            *(uint4*)&As[buf][lrow[i]][lk[i]] = ra[i];
            *(uint4*)&Bs[buf][lrow[i]][lk[i]] = rb[i];
        }
    };

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    const int ktiles = (p.K + BK - 1) / BK;
    fetch(0);
    stage(0);
    __syncthreads();
    for (int kt = 0; kt < ktiles; ++kt) {
        const int buf = kt & 1;
        if (kt + 1 < ktiles) fetch((kt + 1) * BK);
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            unsigned af[4][4], bf[4][2];
#pragma unroll
            for (int i = 0; i < 4; ++i)
                ldmatrix_x4(af[i], &As[buf][wm * 64 + i * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                unsigned r[4];
                const int mi = lane >> 3;
                ldmatrix_x4(r, &Bs[buf][wn * 32 + j * 16 + (mi >> 1) * 8 + (lane & 7)]
                                  [kk + (mi & 1) * 8]);
                bf[2 * j][0] = r[0];
                bf[2 * j][1] = r[1];
                bf[2 * j + 1][0] = r[2];
                bf[2 * j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_16816<T>(acc[i][j], af[i], bf[j][0], bf[j][1]);
        }
        if (kt + 1 < ktiles) stage(buf ^ 1);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int m = m0 + wm * 64 + i * 16 + (lane >> 2);
            const int n = n0 + wn * 32 + j * 8 + (lane & 3) * 2;
            store_output<T>(p, b, m, n, acc[i][j][0]);
            store_output<T>(p, b, m, n + 1, acc[i][j][1]);
            store_output<T>(p, b, m + 8, n, acc[i][j][2]);
            store_output<T>(p, b, m + 8, n + 1, acc[i][j][3]);
        }
}
}  // namespace tc

#define TC_KERNELS(SUFFIX, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(tc::THREADS)                                  \
        gemm_conv_##SUFFIX(const ConvGemmParams p) {                                           \
        tc::gemm_conv_tc<T, false>(p);                                                         \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(tc::THREADS)                                  \
        gemm_conv_##SUFFIX##_vec(const ConvGemmParams p) {                                     \
        tc::gemm_conv_tc<T, true>(p);                                                          \
    }
TC_KERNELS(f16, half_t)
TC_KERNELS(bf16, bf16_t)

// ---------------------------------------------------------------------------------------------
// Exact f32 path.

namespace simt {
constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;
}

extern "C" __global__ void __launch_bounds__(simt::THREADS)
    gemm_conv_f32(const ConvGemmParams p) {
    using namespace simt;
    __shared__ float As[2][BK][BM + 4];
    __shared__ float Bs[2][BK][BN + 4];

    const int b = blockIdx.z;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int M = p.Ho * p.Wo;
    const float* x = (const float*)p.x + (long long)b * p.H * p.W * p.Cin;
    const float* w = (const float*)p.w;
    const unsigned* mask = p.mask ? p.mask + b * p.mask_sample_stride : nullptr;

    // Element e = tid + 256·i of a 64 × 16 tile: row e / 16, column e % 16 (k fastest, so a
    // warp reads 16 consecutive k of two rows).
    float ra[4], rb[4];
    auto fetch = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int e = tid + i * THREADS, r = e >> 4, k = k0 + (e & 15);
            const int m = m0 + r, n = n0 + r;
            const long long o = (m < M && k < p.K) ? a_offset(p, m, k) : -1;
            ra[i] = o < 0 ? 0.0f : x[o];
            rb[i] = (n < p.N && k < p.K && mask_bit(mask, p.kwords, n, k))
                        ? w[(long long)n * p.K + k]
                        : 0.0f;
        }
    };
    auto stage = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int e = tid + i * THREADS;
            As[buf][e & 15][e >> 4] = ra[i];
            Bs[buf][e & 15][e >> 4] = rb[i];
        }
    };

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    const int ktiles = (p.K + BK - 1) / BK;
    fetch(0);
    stage(0);
    __syncthreads();
    for (int kt = 0; kt < ktiles; ++kt) {
        const int buf = kt & 1;
        if (kt + 1 < ktiles) fetch((kt + 1) * BK);
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[buf][k][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = Bs[buf][k][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], bv[j], acc[i][j]);
        }
        if (kt + 1 < ktiles) stage(buf ^ 1);
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
            store_output<float>(p, b, m0 + ty + 16 * i, n0 + tx + 16 * j, acc[i][j]);
}
