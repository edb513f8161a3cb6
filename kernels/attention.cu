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
// This SIMT form serves f32 (exact, no TF32) and head dims the tensor-core form does not take.
//
// Tensor-core form (attention_tc_{f16,bf16}_d{DP}), FlashAttention-2 style: grid
// (ceil(Nq/64), heads, B), 4 warps × 16 query rows. Q's fragments stay in registers for the
// whole pass; each 64-key tile of K and V is staged in shared memory (rows padded by 8 halves so
// ldmatrix is conflict-free; head dims zero-padded to DP, a multiple of 16). S = Q·Kᵀ and
// O += P·V are mma.sync m16n8k16 with f32 accumulation; P goes from S's accumulators straight
// into A fragments (the m16n8 C layout of two adjacent key tiles is the m16n8k16 A layout), V's
// B fragments come from ldmatrix.trans. Row max and sum live in the four threads of a quad.
// Limits: D % 8 == 0, D ≤ DP ≤ 160, row strides % 8 == 0 (16-byte vector loads).

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
    int causal;  // non-zero: query i sees keys 0..i only (CLIP's text encoder)
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

    // Under the causal mask no row of this block sees a key past its last row.
    const int k_end = p.causal ? min(p.Nk, q0 + ROWS) : p.Nk;
    for (int k0 = 0; k0 < k_end; k0 += KT) {
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
            const int qi = q0 + warp * ROWS_PER_WARP + r;
            // Key 0 is always visible, so the running max is finite after the first tile and a
            // fully masked later tile only adds zeros.
            const bool seen = valid && (!p.causal || k0 + lane <= qi);
            const float sr = seen ? s[r] : neg_inf;
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

// ---------------------------------------------------------------------------------------------
// Tensor-core flash attention (f16 / bf16).

namespace attn_tc {
constexpr int WARPS = 4, BQ = 16 * WARPS, BK = 64;

// Two f32 as one register of two 16-bit values: `lo` in bits 0..15, `hi` in 16..31.
template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<half_t>(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <> __device__ __forceinline__ unsigned pack2<bf16_t>(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// rows × DP tile of 16-bit values from `src` (row stride `ld` elements, `n` valid rows, `d`
// valid columns) into shared memory with row stride DP + 8; the rest is zero.
template <int DP>
__device__ __forceinline__ void stage(unsigned short* dst, const unsigned short* src, int rows,
                                      long long ld, int n, int d) {
    constexpr int VPR = DP / 8;  // 16-byte vectors per row
    for (int e = threadIdx.x; e < rows * VPR; e += blockDim.x) {
        const int r = e / VPR, c = (e - r * VPR) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < n && c < d) v = *(const uint4*)(src + r * ld + c);
        *(uint4*)(dst + r * (DP + 8) + c) = v;
    }
}

template <typename T, int DP>
__device__ __forceinline__ void attention_tc_impl(const AttentionParams& p) {
    constexpr int LD = DP + 8, KS = DP / 16, NT = BK / 8, DT = DP / 8;
    extern __shared__ __align__(16) unsigned short sm[];
    unsigned short* Ks = sm;            // [BK][LD]; first holds Q's [BQ][LD]
    unsigned short* Vs = sm + BK * LD;  // [BK][LD]

    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BQ;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int D = p.D;
    const unsigned short* q = (const unsigned short*)p.q + b * p.q_batch + (long long)h * D;
    const unsigned short* k = (const unsigned short*)p.k + b * p.k_batch + (long long)h * D;
    const unsigned short* v = (const unsigned short*)p.v + b * p.v_batch + (long long)h * D;
    T* o = (T*)p.o + b * p.o_batch + (long long)h * D;
    const float sl2 = p.scale * 1.4426950408889634f;
    const float neg_inf = __int_as_float(0xff800000);

    // Q fragments for this warp's 16 rows, all of DP.
    stage<DP>(Ks, q + (long long)q0 * p.q_row, BQ, p.q_row, p.Nq - q0, D);
    __syncthreads();
    unsigned qf[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; ++kk)
        ldmatrix_x4(qf[kk], Ks + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);

    float acc[DT][4];
#pragma unroll
    for (int j = 0; j < DT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    float m[2] = {neg_inf, neg_inf}, l[2] = {0.0f, 0.0f};  // rows g and g + 8

    const int k_end = p.causal ? min(p.Nk, q0 + BQ) : p.Nk;
    for (int k0 = 0; k0 < k_end; k0 += BK) {
        __syncthreads();  // Q's fragments are read / the previous tile is consumed
        stage<DP>(Ks, k + (long long)k0 * p.k_row, BK, p.k_row, p.Nk - k0, D);
        stage<DP>(Vs, v + (long long)k0 * p.v_row, BK, p.v_row, p.Nk - k0, D);
        __syncthreads();

        float s[NT][4];
#pragma unroll
        for (int j = 0; j < NT; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk)
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                unsigned r[4];
                const int mi = lane >> 3;
                ldmatrix_x4(r, Ks + (j * 8 + (mi >> 1) * 8 + (lane & 7)) * LD + kk * 16 + (mi & 1) * 8);
                mma_16816<T>(s[j], qf[kk], r[0], r[1]);
                mma_16816<T>(s[j + 1], qf[kk], r[2], r[3]);
            }

        // Online softmax over this tile; thread holds rows g (s[.][0..1]) and g+8 ([2..3]).
        float mt[2] = {neg_inf, neg_inf};
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = k0 + j * 8 + 2 * t + (e & 1);
                const int qi = q0 + warp * 16 + g + 8 * (e >> 1);
                const bool seen = key < p.Nk && (!p.causal || key <= qi);
                s[j][e] = seen ? s[j][e] * sl2 : neg_inf;
                mt[e >> 1] = fmaxf(mt[e >> 1], s[j][e]);
            }
        float corr[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mt[r] = fmaxf(mt[r], __shfl_xor_sync(0xffffffffu, mt[r], 1));
            mt[r] = fmaxf(mt[r], __shfl_xor_sync(0xffffffffu, mt[r], 2));
            const float mnew = fmaxf(m[r], mt[r]);  // finite: key k0 is valid
            corr[r] = exp2f(m[r] - mnew);
            m[r] = mnew;
            l[r] *= corr[r];
        }
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[j][e] = exp2f(s[j][e] - m[e >> 1]);
                l[e >> 1] += s[j][e];
            }
#pragma unroll
        for (int j = 0; j < DT; ++j) {
            acc[j][0] *= corr[0];
            acc[j][1] *= corr[0];
            acc[j][2] *= corr[1];
            acc[j][3] *= corr[1];
        }

        // O += P·V, 16 keys at a time.
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            unsigned a[4] = {
                pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]),
            };
#pragma unroll
            for (int j = 0; j < DT; j += 2) {
                unsigned r[4];
                const int mi = lane >> 3;
                ldmatrix_x4_trans(r, Vs + (kk * 16 + (mi & 1) * 8 + (lane & 7)) * LD + j * 8 + (mi >> 1) * 8);
                mma_16816<T>(acc[j], a, r[0], r[1]);
                mma_16816<T>(acc[j + 1], a, r[2], r[3]);
            }
        }
    }

    // The row sums are spread over the quad.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int qi = q0 + warp * 16 + g + 8 * r;
        if (qi >= p.Nq) continue;
        const float inv = 1.0f / l[r];
        T* row = o + (long long)qi * p.o_row;
#pragma unroll
        for (int j = 0; j < DT; ++j) {
            const int d = j * 8 + 2 * t;
            if (d < D) row[d] = from_f32<T>(acc[j][2 * r] * inv);
            if (d + 1 < D) row[d + 1] = from_f32<T>(acc[j][2 * r + 1] * inv);
        }
    }
}
}  // namespace attn_tc

#define ATTENTION_TC_KERNEL(SUFFIX, T, DP)                                                     \
    extern "C" __global__ void __launch_bounds__(128)                                          \
        attention_tc_##SUFFIX##_d##DP(const AttentionParams p) {                               \
        attn_tc::attention_tc_impl<T, DP>(p);                                                  \
    }
#define ATTENTION_TC_KERNELS(SUFFIX, T)                                                        \
    ATTENTION_TC_KERNEL(SUFFIX, T, 48)                                                         \
    ATTENTION_TC_KERNEL(SUFFIX, T, 64)                                                         \
    ATTENTION_TC_KERNEL(SUFFIX, T, 80)                                                         \
    ATTENTION_TC_KERNEL(SUFFIX, T, 96)                                                         \
    ATTENTION_TC_KERNEL(SUFFIX, T, 128)                                                        \
    ATTENTION_TC_KERNEL(SUFFIX, T, 160)
ATTENTION_TC_KERNELS(f16, half_t)
ATTENTION_TC_KERNELS(bf16, bf16_t)
