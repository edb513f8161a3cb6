// FreeU on NHWC decoder features: backbone scaling (v1 and v2 in one kernel) and the Fourier
// skip filter, both as the exact FFT-free direct form (one fused kernel) and around cuFFT
// (layout kernels plus a spectrum-scaling kernel of ours; the transforms are cuFFT's).
//
// The filter multiplies by s the centred-spectrum window the Python slice selects; in
// unshifted indices that is the product of two cyclic ranges, rows u0..u0+nu and columns
// v0..v0+nv (mod H, W). Keeping only the real part of the inverse transform equals applying
// the Hermitian-symmetrised factor (f(u,v) + f(-u,-v))/2, which is what the R2C/C2R path does;
// the direct path adds (s-1)/HW · Re(sum over the window of X[u,v]·e^{+iθ}) to each pixel, with
// X[u,v] = sum x·e^{-iθ} evaluated for the ≤ 16 window frequencies only (threshold ≤ 2; the
// host uses cuFFT beyond that). Phases are reduced exactly in integers before sincospif.

#include "common.cuh"

// v2: factor (b-1)·m̂+1 with m̂ the min-max normalised channel mean (1 where max == min);
// v1: factor b. Applied in place to channels [0, C/2) of every pixel. grid B, block 1024:
// warp w handles pixels w, w+32, ...; lanes stride over channels (coalesced).
template <typename T>
__device__ __forceinline__ void freeu_backbone_impl(T* h, int HW, int C, float bscale, int v2) {
    __shared__ float lo_s[32], hi_s[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    T* x = h + (long long)blockIdx.x * HW * C;
    auto mean = [&](int p) {
        float s = 0.0f;
        for (int c = lane; c < C; c += 32) s += to_f32(x[(long long)p * C + c]);
        return warp_sum(s) / (float)C;
    };
    float lo = 0.0f, hi = 0.0f;
    if (v2) {
        float l = __int_as_float(0x7f800000), u = __int_as_float(0xff800000);
        for (int p = warp; p < HW; p += warps) {
            const float m = mean(p);
            l = fminf(l, m);
            u = fmaxf(u, m);
        }
        if (lane == 0) {
            lo_s[warp] = l;
            hi_s[warp] = u;
        }
        __syncthreads();
        l = lane < warps ? lo_s[lane] : __int_as_float(0x7f800000);
        u = lane < warps ? hi_s[lane] : __int_as_float(0xff800000);
        lo = warp_min(l);
        hi = warp_max(u);
    }
    const int half = C / 2;
    for (int p = warp; p < HW; p += warps) {
        float f = bscale;
        if (v2) {
            const float m = mean(p);
            const float m_hat = hi > lo ? (m - lo) / (hi - lo) : 1.0f;
            f = (bscale - 1.0f) * m_hat + 1.0f;
        }
        for (int c = lane; c < half; c += 32) {
            const long long i = (long long)p * C + c;
            x[i] = from_f32<T>(to_f32(x[i]) * f);
        }
    }
}

namespace fdirect {
constexpr int MAXF = 16, WARPS = 8;

// cos and sin of θ = 2π(u·py/H + v·px/W) for window frequency f, the phase reduced exactly in
// integers before the float maths.
__device__ __forceinline__ void twiddle(int f, int u0, int v0, int nv, int py, int px, int H,
                                        int W, float* sn, float* cs) {
    const int u = (u0 + f / nv) % H, v = (v0 + f % nv) % W;
    const float t =
        2.0f * ((float)((u * py) % H) / (float)H + (float)((v * px) % W) / (float)W);
    sincospif(t, sn, cs);
}
}  // namespace fdirect

// grid (ceil(C/32), B), block 256: lane = channel within a 32-channel slice, warps split pixels.
template <typename T>
__device__ __forceinline__ void freeu_filter_direct_impl(const T* x, T* y, int H, int W, int C,
                                                         int u0, int nu, int v0, int nv,
                                                         float s) {
    using namespace fdirect;
    __shared__ float part[WARPS][MAXF][2][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int c = blockIdx.x * 32 + lane, HW = H * W, nf = nu * nv;
    const long long base = (long long)blockIdx.y * HW * C;
    const bool live = c < C;

    float re[MAXF], im[MAXF];
#pragma unroll
    for (int f = 0; f < MAXF; ++f) re[f] = im[f] = 0.0f;
    for (int p = warp; p < HW; p += WARPS) {
        const int py = p / W, px = p - py * W;
        const float val = live ? to_f32(x[base + (long long)p * C + c]) : 0.0f;
#pragma unroll
        for (int f = 0; f < MAXF; ++f) {
            if (f >= nf) break;
            float sn, cs;
            twiddle(f, u0, v0, nv, py, px, H, W, &sn, &cs);
            re[f] += val * cs;
            im[f] -= val * sn;
        }
    }
#pragma unroll
    for (int f = 0; f < MAXF; ++f) {
        part[warp][f][0][lane] = re[f];
        part[warp][f][1][lane] = im[f];
    }
    __syncthreads();
#pragma unroll
    for (int f = 0; f < MAXF; ++f) {
        float r = 0.0f, i = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) {
            r += part[w][f][0][lane];
            i += part[w][f][1][lane];
        }
        re[f] = r;
        im[f] = i;
    }
    if (!live) return;
    const float k = (s - 1.0f) / (float)HW;
    for (int p = warp; p < HW; p += WARPS) {
        const int py = p / W, px = p - py * W;
        float corr = 0.0f;
#pragma unroll
        for (int f = 0; f < MAXF; ++f) {
            if (f >= nf) break;
            float sn, cs;
            twiddle(f, u0, v0, nv, py, px, H, W, &sn, &cs);
            corr += re[f] * cs - im[f] * sn;  // Re(X · e^{+iθ})
        }
        const long long i = base + (long long)p * C + c;
        y[i] = from_f32<T>(to_f32(x[i]) + k * corr);
    }
}

__device__ __forceinline__ bool in_window(int u, int u0, int nu, int n) {
    return ((u - u0 + n) % n) < nu;
}

// X: the R2C half spectra [planes, H, W/2+1] of complex (re, im) pairs, scaled in place by
// the symmetrised window factor.
extern "C" __global__ void freeu_spectrum_scale(float* X, long long planes, int H, int W, int u0,
                                                int nu, int v0, int nv, float s) {
    const int Wh = W / 2 + 1;
    GRID_STRIDE(i, planes * H * Wh) {
        const int v = (int)(i % Wh), u = (int)((i / Wh) % H);
        const float f1 = in_window(u, u0, nu, H) && in_window(v, v0, nv, W) ? s : 1.0f;
        const int mu = (H - u) % H, mv = (W - v) % W;
        const float f2 = in_window(mu, u0, nu, H) && in_window(mv, v0, nv, W) ? s : 1.0f;
        const float f = 0.5f * (f1 + f2);
        X[2 * i] *= f;
        X[2 * i + 1] *= f;
    }
}

#define FREEU_KERNELS(SUFFIX, T)                                                               \
    extern "C" __global__ void __launch_bounds__(1024)                                     \
        freeu_backbone_##SUFFIX(T* h, int HW, int C, float b, int v2) {                        \
        freeu_backbone_impl<T>(h, HW, C, b, v2);                                               \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) freeu_filter_direct_##SUFFIX(            \
        const T* x, T* y, int H, int W, int C, int u0, int nu, int v0, int nv, float s) {      \
        freeu_filter_direct_impl<T>(x, y, H, W, C, u0, nu, v0, nv, s);                         \
    }                                                                                          \
    /* x: [B, HW, C] -> planes: f32 [B, C, HW] (the cuFFT input) */                            \
    extern "C" __global__ void freeu_to_planes_##SUFFIX(const T* x, float* planes, int B,      \
                                                        int HW, int C) {                       \
        GRID_STRIDE(i, (long long)B * C * HW) {                                                \
            const int p = (int)(i % HW);                                                       \
            const long long bc = i / HW;                                                       \
            const int c = (int)(bc % C);                                                       \
            const long long b = bc / C;                                                        \
            planes[i] = to_f32(x[(b * HW + p) * C + c]);                                       \
        }                                                                                      \
    }                                                                                          \
    /* planes (cuFFT's unnormalised C2R output) -> y: [B, HW, C] = planes · scale */           \
    extern "C" __global__ void freeu_from_planes_##SUFFIX(const float* planes, T* y, int B,    \
                                                          int HW, int C, float scale) {        \
        GRID_STRIDE(i, (long long)B * C * HW) {                                                \
            const int c = (int)(i % C);                                                        \
            const long long bp = i / C;                                                        \
            const int p = (int)(bp % HW);                                                      \
            const long long b = bp / HW;                                                       \
            y[i] = from_f32<T>(planes[(b * C + c) * HW + p] * scale);                          \
        }                                                                                      \
    }
FOR_EACH_DTYPE(FREEU_KERNELS)
