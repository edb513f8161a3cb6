// Pointwise and data-movement kernels: layout changes at the API boundary (NCHW f32 <-> NHWC
// in the model dtype), casts, adds, SiLU, GELU, quick GELU (CLIP's MLPs), GEGLU, nearest
// upsampling, the sinusoidal timestep embedding, the decoder's channel concatenation with
// Skip-Tuning's scale fused in, and the U-ViT's token moves (concatenation with the position
// table added, gathering the visible tokens, slicing q/k/v out of a fused projection).
// All are grid-stride loops over output elements (any grid works; the host launches
// min(ceil(n/256), 2^20) blocks of 256), arithmetic in f32.

#include "common.cuh"

// torch's nearest index for an output coordinate (exact 2× and identity are the common cases).
__device__ __forceinline__ int nearest_src(int o, int in, int out) {
    if (out == in) return o;
    if (out == 2 * in) return o >> 1;
    const float scale = (float)in / (float)out;
    return min((int)floorf((float)o * scale), in - 1);
}

__device__ __forceinline__ float gelu_erf(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

#define ELEMENTWISE_KERNELS(SUFFIX, T)                                                         \
    /* x: f32 [B, C, HW] -> y: [B, HW, C] */                                                   \
    extern "C" __global__ void nchw_f32_to_nhwc_##SUFFIX(const float* x, T* y, int B, int C,   \
                                                         int HW) {                             \
        GRID_STRIDE(i, (long long)B * C * HW) {                                                \
            const int c = (int)(i % C);                                                        \
            const long long bp = i / C;                                                        \
            const int p = (int)(bp % HW);                                                      \
            const long long b = bp / HW;                                                       \
            y[i] = from_f32<T>(x[(b * C + c) * HW + p]);                                       \
        }                                                                                      \
    }                                                                                          \
    /* x: [B, HW, C] -> y: f32 [B, C, HW] */                                                   \
    extern "C" __global__ void nhwc_##SUFFIX##_to_nchw_f32(const T* x, float* y, int B, int C, \
                                                           int HW) {                           \
        GRID_STRIDE(i, (long long)B * C * HW) {                                                \
            const int p = (int)(i % HW);                                                       \
            const long long bc = i / HW;                                                       \
            const int c = (int)(bc % C);                                                       \
            const long long b = bc / C;                                                        \
            y[i] = to_f32(x[(b * HW + p) * C + c]);                                            \
        }                                                                                      \
    }                                                                                          \
    /* y = (a + b) · scale */                                                                  \
    extern "C" __global__ void add_##SUFFIX(const T* a, const T* b, T* y, long long n,         \
                                            float scale) {                                     \
        GRID_STRIDE(i, n) y[i] = from_f32<T>((to_f32(a[i]) + to_f32(b[i])) * scale);           \
    }                                                                                          \
    extern "C" __global__ void scale_##SUFFIX(const T* x, T* y, long long n, float s) {        \
        GRID_STRIDE(i, n) y[i] = from_f32<T>(to_f32(x[i]) * s);                                \
    }                                                                                          \
    extern "C" __global__ void silu_##SUFFIX(const T* x, T* y, long long n) {                  \
        GRID_STRIDE(i, n) y[i] = from_f32<T>(silu_f32(to_f32(x[i])));                          \
    }                                                                                          \
    extern "C" __global__ void gelu_##SUFFIX(const T* x, T* y, long long n) {                  \
        GRID_STRIDE(i, n) y[i] = from_f32<T>(gelu_erf(to_f32(x[i])));                          \
    }                                                                                          \
    /* transformers' quick_gelu, x · sigmoid(1.702 · x) */                                     \
    extern "C" __global__ void quick_gelu_##SUFFIX(const T* x, T* y, long long n) {            \
        GRID_STRIDE(i, n) {                                                                    \
            const float v = to_f32(x[i]);                                                      \
            y[i] = from_f32<T>(v / (1.0f + expf(-1.702f * v)));                                \
        }                                                                                      \
    }                                                                                          \
    /* x: [M, 2·inner] (value, gate) -> y: [M, inner] = value · gelu(gate) */                  \
    extern "C" __global__ void geglu_##SUFFIX(const T* x, T* y, long long M, int inner) {      \
        GRID_STRIDE(i, M * inner) {                                                            \
            const long long m = i / inner;                                                     \
            const int j = (int)(i - m * inner);                                                \
            const T* row = x + m * 2 * inner;                                                  \
            y[i] = from_f32<T>(to_f32(row[j]) * gelu_erf(to_f32(row[inner + j])));             \
        }                                                                                      \
    }                                                                                          \
    /* x: [B, H, W, C] -> y: [B, Ho, Wo, C] */                                                 \
    extern "C" __global__ void upsample_nearest_##SUFFIX(const T* x, T* y, int B, int H,       \
                                                         int W, int C, int Ho, int Wo) {       \
        GRID_STRIDE(i, (long long)B * Ho * Wo * C) {                                           \
            const int c = (int)(i % C);                                                        \
            long long r = i / C;                                                               \
            const int ox = (int)(r % Wo);                                                      \
            r /= Wo;                                                                           \
            const int oy = (int)(r % Ho);                                                      \
            const long long b = r / Ho;                                                        \
            const int iy = nearest_src(oy, H, Ho), ix = nearest_src(ox, W, Wo);                \
            y[i] = x[((b * H + iy) * W + ix) * C + c];                                         \
        }                                                                                      \
    }                                                                                          \
    /* y[r] = [h[r], skip[r] · skip_scale] over rows r of [rows, Ch] and [rows, Cs] */         \
    extern "C" __global__ void concat_channels_##SUFFIX(const T* h, const T* skip, T* y,       \
                                                        long long rows, int Ch, int Cs,        \
                                                        float skip_scale) {                    \
        const int C = Ch + Cs;                                                                 \
        GRID_STRIDE(i, rows * C) {                                                             \
            const long long r = i / C;                                                         \
            const int c = (int)(i - r * C);                                                    \
            y[i] = c < Ch ? h[r * Ch + c]                                                      \
                          : from_f32<T>(to_f32(skip[r * Cs + (c - Ch)]) * skip_scale);         \
        }                                                                                      \
    }                                                                                          \
    /* [a; b] along tokens of [B, Na, C] and [B, Nb, C], plus pos [1, Na+Nb, C] if has_pos */  \
    extern "C" __global__ void cat_tokens_##SUFFIX(const T* a, const T* b, const T* pos, T* y,  \
                                                   int B, int Na, int Nb, int C,              \
                                                   int has_pos) {                             \
        const int N = Na + Nb;                                                                 \
        GRID_STRIDE(i, (long long)B * N * C) {                                                 \
            const int c = (int)(i % C);                                                        \
            const long long r = i / C;                                                         \
            const int n = (int)(r % N);                                                        \
            const long long s = r / N;                                                         \
            float v = to_f32(n < Na ? a[(s * Na + n) * C + c]                                  \
                                    : b[(s * Nb + (n - Na)) * C + c]);                         \
            if (has_pos) v += to_f32(pos[(long long)n * C + c]);                               \
            y[i] = from_f32<T>(v);                                                             \
        }                                                                                      \
    }                                                                                          \
    /* y[s, j] = x[s, rows[s·M + j]]: [B, N, C] -> [B, M, C]; rows checked < N by the host */  \
    extern "C" __global__ void gather_tokens_##SUFFIX(const T* x, const int* rows, T* y,       \
                                                      int N, int M, int C, long long total) {  \
        GRID_STRIDE(i, total) {                                                                \
            const int c = (int)(i % C);                                                        \
            const long long r = i / C;                                                         \
            const long long s = r / M;                                                         \
            y[i] = x[(s * N + rows[r]) * C + c];                                               \
        }                                                                                      \
    }                                                                                          \
    /* y[r] = x[r, start .. start + Cy] over the rows of [rows, Cx] */                         \
    extern "C" __global__ void slice_channels_##SUFFIX(const T* x, T* y, long long rows,       \
                                                       int Cx, int start, int Cy) {            \
        GRID_STRIDE(i, rows * Cy) {                                                            \
            const long long r = i / Cy;                                                        \
            const int c = (int)(i - r * Cy);                                                   \
            y[i] = x[r * Cx + start + c];                                                      \
        }                                                                                      \
    }                                                                                          \
    /* diffusers' get_timestep_embedding: [B] -> [B, dim] */                                   \
    extern "C" __global__ void timestep_embedding_##SUFFIX(const float* t, T* y, int B,        \
                                                           int dim, int flip_sin_to_cos,       \
                                                           float downscale_freq_shift) {       \
        const int half = dim / 2;                                                              \
        GRID_STRIDE(i, (long long)B * dim) {                                                   \
            const int b = (int)(i / dim), j = (int)(i % dim);                                  \
            float v = 0.0f; /* the zero column of an odd dim */                                \
            if (j < 2 * half) {                                                                \
                const bool first = j < half;                                                   \
                const int f = first ? j : j - half;                                            \
                const float freq =                                                             \
                    expf((-9.210340371976184f * (float)f) / ((float)half - downscale_freq_shift)); \
                const float arg = t[b] * freq;                                                 \
                const bool is_sin = first != (bool)flip_sin_to_cos;                            \
                v = is_sin ? sinf(arg) : cosf(arg);                                            \
            }                                                                                  \
            y[i] = from_f32<T>(v);                                                             \
        }                                                                                      \
    }
FOR_EACH_DTYPE(ELEMENTWISE_KERNELS)

// Casts between f32 and the 16-bit storage types (f32 needs none).
#define CAST_KERNELS(SUFFIX, T)                                                                \
    extern "C" __global__ void cast_f32_to_##SUFFIX(const float* x, T* y, long long n) {       \
        GRID_STRIDE(i, n) y[i] = from_f32<T>(x[i]);                                            \
    }                                                                                          \
    extern "C" __global__ void cast_##SUFFIX##_to_f32(const T* x, float* y, long long n) {     \
        GRID_STRIDE(i, n) y[i] = to_f32(x[i]);                                                 \
    }
CAST_KERNELS(f16, half_t)
CAST_KERNELS(bf16, bf16_t)

// The U-Net's block-boundary check on the GPU: the first NaN or infinity of x[0..n), first in
// the tensor's semantic (NCHW) order, as the CPU finds it. x is stored NHWC when C > 0 ([B, HW,
// C]: its element i is NCHW element ((b·C + c)·HW + p)), as it is otherwise. Launched with
// exactly FIRST_NON_FINITE_BLOCKS blocks of 256 threads; block k scans its grid-stride share and
// writes the smallest semantic index it saw holding a non-finite value (NO_INDEX, 2^63 - 1, for
// none) to idx[k] and that element's f32 bits to bits[k]; the host takes the minimum over the
// blocks of every check of a call once, at its end (no atomics, no memset: every slot is
// written). A value is non-finite when all its exponent bits are set, tested on the f32 bits so
// no compiler setting can fold it away. Tested by tests/hostile_values.rs: the GPU names the
// layer and element the CPU names.
#define NO_INDEX 0x7fffffffffffffffLL
#define FIRST_NON_FINITE_KERNELS(SUFFIX, T)                                                    \
    extern "C" __global__ void first_non_finite_##SUFFIX(const T* x, long long n, int C,       \
                                                         long long HW, long long* idx,         \
                                                         unsigned* bits) {                     \
        __shared__ long long s_idx[256];                                                       \
        __shared__ unsigned s_bits[256];                                                       \
        long long best = NO_INDEX;                                                             \
        unsigned best_bits = 0;                                                                \
        GRID_STRIDE(i, n) {                                                                    \
            const unsigned u = __float_as_uint(to_f32(x[i]));                                  \
            if ((u & 0x7f800000u) == 0x7f800000u) {                                            \
                long long sem = i;                                                             \
                if (C > 0) {                                                                   \
                    const long long c = i % C, p = (i / C) % HW, b = i / (C * HW);             \
                    sem = (b * C + c) * HW + p;                                                \
                }                                                                              \
                if (sem < best) {                                                              \
                    best = sem;                                                                \
                    best_bits = u;                                                             \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        s_idx[threadIdx.x] = best;                                                             \
        s_bits[threadIdx.x] = best_bits;                                                       \
        __syncthreads();                                                                       \
        for (int half = 128; half > 0; half >>= 1) {                                           \
            if (threadIdx.x < half && s_idx[threadIdx.x + half] < s_idx[threadIdx.x]) {        \
                s_idx[threadIdx.x] = s_idx[threadIdx.x + half];                                \
                s_bits[threadIdx.x] = s_bits[threadIdx.x + half];                              \
            }                                                                                  \
            __syncthreads();                                                                   \
        }                                                                                      \
        if (threadIdx.x == 0) {                                                                \
            idx[blockIdx.x] = s_idx[0];                                                        \
            bits[blockIdx.x] = s_bits[0];                                                      \
        }                                                                                      \
    }
FOR_EACH_DTYPE(FIRST_NON_FINITE_KERNELS)
