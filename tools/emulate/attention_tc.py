"""Lane-level numpy emulation of the tensor-core flash attention of kernels/attention.cu
(attn_tc::attention_tc_impl): 4 warps × 32 lanes, shared memory with the kernel's addressing
(NaN-initialised, with per-barrier race tracking), ldmatrix / ldmatrix.trans, mma.sync m16n8k16,
cvt.rn.{f16,bf16}x2 packing, quad shuffles and the online softmax, against softmax(QKᵀ·s)·V.
A hand-written mirror of the kernel (update it with the kernel). Run:
    python tools/emulate/attention_tc.py            # a few shapes
    python tools/emulate/attention_sweep.py 0 1     # the full sweep (slow)"""
import numpy as np, itertools, sys
rng = np.random.default_rng(7)
WARPS, BQ, BK = 4, 64, 64

def rnd(x, T):
    x = np.asarray(x, np.float32)
    if T == 'f16':
        return x.astype(np.float16).astype(np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)

class Smem:
    """flat 16-bit shared memory with epoch-based race tracking"""
    def __init__(s, n, LD, DP):
        s.a = np.full(n, np.nan, np.float32)  # uninitialised = NaN (would poison results)
        s.n, s.LD, s.DP = n, LD, DP
        s.epoch_w = {}; s.epoch_r = {}
        s.issues = []
    def sync(s):
        s.epoch_w = {}; s.epoch_r = {}
    def write(s, tid, addr, vals):
        for i, v in enumerate(vals):
            x = addr + i
            assert 0 <= x < s.n, ("smem write OOB", x)
            if x in s.epoch_r and any(w != tid // 32 for w in s.epoch_r[x]):
                s.issues.append(("WAR race", x))
            if x in s.epoch_w and s.epoch_w[x] != tid:
                s.issues.append(("WAW race", x))
            s.epoch_w[x] = tid
            s.a[x] = v
    def read_row8(s, warp, addr, region):
        # one ldmatrix row: 8 contiguous 16-bit values at addr (16B aligned)
        assert addr % 8 == 0, "ldmatrix row address not 16B aligned"
        base, rows = region
        off = addr - base
        r, c = divmod(off, s.LD)
        assert 0 <= r < rows and 0 <= c and c + 8 <= s.DP, ("smem read out of tile", r, c)
        for i in range(8):
            x = addr + i
            if x in s.epoch_w and s.epoch_w[x] // 32 != warp:
                s.issues.append(("RAW race (no barrier)", x))
            s.epoch_r.setdefault(x, set()).add(warp)
        v = s.a[addr:addr + 8]
        assert not np.isnan(v).any(), ("read of unwritten smem", r, c)
        return v

def ldsm_x4(sm, warp, addrs, region, trans):
    """addrs[lane] = element address supplied by lane. returns r[4][32][2] (lo,hi)"""
    r = np.zeros((4, 32, 2), np.float32)
    for i in range(4):
        M = np.stack([sm.read_row8(warp, addrs[8 * i + j], region) for j in range(8)])  # 8x8
        for ln in range(32):
            gg, tt = ln >> 2, ln & 3
            if not trans:
                r[i, ln] = (M[gg, 2 * tt], M[gg, 2 * tt + 1])
            else:
                r[i, ln] = (M[2 * tt, gg], M[2 * tt + 1, gg])
    return r

def mma(c, a, b0, b1):
    """c[32][4] f32, a[4][32][2], b0/b1[32][2]  (m16n8k16 row.col)"""
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for ln in range(32):
        gg, tt = ln >> 2, ln & 3
        for ri, (ro, co) in enumerate([(0, 0), (8, 0), (0, 8), (8, 8)]):
            A[gg + ro, 2 * tt + co] = a[ri][ln][0]; A[gg + ro, 2 * tt + co + 1] = a[ri][ln][1]
        B[2 * tt, gg], B[2 * tt + 1, gg] = b0[ln]
        B[2 * tt + 8, gg], B[2 * tt + 9, gg] = b1[ln]
    Dm = A @ B
    for ln in range(32):
        gg, tt = ln >> 2, ln & 3
        c[ln] = (c[ln].astype(np.float64) + [Dm[gg, 2 * tt], Dm[gg, 2 * tt + 1], Dm[gg + 8, 2 * tt], Dm[gg + 8, 2 * tt + 1]]).astype(np.float32)

def pack2(lo, hi, T):
    # cvt.rn.{f16,bf16}x2.f32 d, a(=hi), b(=lo): a -> upper half, b -> lower half
    a_, b_ = hi, lo
    upper, lower = rnd(a_, T), rnd(b_, T)
    return np.stack([lower, upper], -1)  # (lo, hi) register halves

def shfl_xor(x, m):
    return x[np.arange(32) ^ m]

def stage(sm, gmem, dst, src, rows, ld, n, d, DP, tids=128):
    VPR = DP // 8; LD = DP + 8
    for e in range(rows * VPR):
        tid = e % tids
        r = e // VPR; c = (e - r * VPR) * 8
        v = np.zeros(8, np.float32)
        if r < n and c < d:
            ga = src + r * ld + c
            assert ga % 8 == 0, "misaligned uint4 global load"
            assert 0 <= ga and ga + 8 <= gmem.size, ("global OOB", ga)
            v = gmem[ga:ga + 8]
        sm.write(tid, dst + r * LD + c, v)

def attention_tc(T, DP, p, grid, bufs):
    q_g, k_g, v_g, o_g = bufs
    LD, KS, NT, DT = DP + 8, DP // 16, BK // 8, DP // 8
    issues = []
    assert 2 * BK * LD * 2 == 2 * 64 * (DP + 8) * 2
    for bz, by, bx in itertools.product(range(grid[2]), range(grid[1]), range(grid[0])):
        sm = Smem(2 * BK * LD, LD, DP)
        Ks, Vs = 0, BK * LD
        b, h, q0 = bz, by, bx * BQ
        D = p['D']
        q = b * p['q_batch'] + h * D; k = b * p['k_batch'] + h * D
        v = b * p['v_batch'] + h * D; o = b * p['o_batch'] + h * D
        sl2 = np.float32(p['scale']) * np.float32(1.4426950408889634)
        ninf = np.float32(-np.inf)
        lanes = np.arange(32); g = lanes >> 2; t = lanes & 3
        stage(sm, q_g, Ks, q + q0 * p['q_row'], BQ, p['q_row'], p['Nq'] - q0, D, DP)
        sm.sync()
        W = []
        for warp in range(WARPS):
            qf = [ldsm_x4(sm, warp, [Ks + (warp * 16 + (ln & 15)) * LD + kk * 16 + (ln >> 4) * 8 for ln in range(32)],
                          (Ks, BK), False) for kk in range(KS)]
            W.append(dict(qf=qf, acc=np.zeros((DT, 32, 4), np.float32),
                          m=np.full((2, 32), ninf, np.float32), l=np.zeros((2, 32), np.float32)))
        for k0 in range(0, p['Nk'], BK):
            sm.sync()
            stage(sm, k_g, Ks, k + k0 * p['k_row'], BK, p['k_row'], p['Nk'] - k0, D, DP)
            stage(sm, v_g, Vs, v + k0 * p['v_row'], BK, p['v_row'], p['Nk'] - k0, D, DP)
            sm.sync()
            for warp in range(WARPS):
                st = W[warp]
                s = np.zeros((NT, 32, 4), np.float32)
                for kk in range(KS):
                    for j in range(0, NT, 2):
                        mi = lanes >> 3
                        addrs = [Ks + (j * 8 + (mi[ln] >> 1) * 8 + (ln & 7)) * LD + kk * 16 + (mi[ln] & 1) * 8 for ln in range(32)]
                        r = ldsm_x4(sm, warp, addrs, (Ks, BK), False)
                        mma(s[j], st['qf'][kk], r[0], r[1])
                        mma(s[j + 1], st['qf'][kk], r[2], r[3])
                mt = np.full((2, 32), ninf, np.float32)
                for j in range(NT):
                    for e in range(4):
                        key = k0 + j * 8 + 2 * t + (e & 1)
                        s[j][:, e] = np.where(key < p['Nk'], s[j][:, e] * sl2, ninf)
                        mt[e >> 1] = np.fmax(mt[e >> 1], s[j][:, e])
                corr = np.zeros((2, 32), np.float32)
                for rr in range(2):
                    mt[rr] = np.fmax(mt[rr], shfl_xor(mt[rr], 1))
                    mt[rr] = np.fmax(mt[rr], shfl_xor(mt[rr], 2))
                    mnew = np.fmax(st['m'][rr], mt[rr])
                    assert np.isfinite(mnew).all()
                    with np.errstate(invalid='ignore'):
                        corr[rr] = np.exp2(st['m'][rr] - mnew)
                    st['m'][rr] = mnew
                    st['l'][rr] *= corr[rr]
                for j in range(NT):
                    for e in range(4):
                        s[j][:, e] = np.exp2(s[j][:, e] - st['m'][e >> 1])
                        st['l'][e >> 1] += s[j][:, e]
                for j in range(DT):
                    st['acc'][j][:, 0] *= corr[0]; st['acc'][j][:, 1] *= corr[0]
                    st['acc'][j][:, 2] *= corr[1]; st['acc'][j][:, 3] *= corr[1]
                for kk in range(BK // 16):
                    a = [pack2(s[2 * kk][:, 0], s[2 * kk][:, 1], T), pack2(s[2 * kk][:, 2], s[2 * kk][:, 3], T),
                         pack2(s[2 * kk + 1][:, 0], s[2 * kk + 1][:, 1], T), pack2(s[2 * kk + 1][:, 2], s[2 * kk + 1][:, 3], T)]
                    for j in range(0, DT, 2):
                        mi = lanes >> 3
                        addrs = [Vs + (kk * 16 + (mi[ln] & 1) * 8 + (ln & 7)) * LD + j * 8 + (mi[ln] >> 1) * 8 for ln in range(32)]
                        r = ldsm_x4(sm, warp, addrs, (Vs, BK), True)
                        mma(st['acc'][j], a, r[0], r[1])
                        mma(st['acc'][j + 1], a, r[2], r[3])
        for warp in range(WARPS):
            st = W[warp]
            for rr in range(2):
                st['l'][rr] += shfl_xor(st['l'][rr], 1)
                st['l'][rr] += shfl_xor(st['l'][rr], 2)
            for ln in range(32):
                for rr in range(2):
                    qi = q0 + warp * 16 + g[ln] + 8 * rr
                    if qi >= p['Nq']:
                        continue
                    inv = np.float32(1.0) / st['l'][rr][ln]
                    row = o + qi * p['o_row']
                    for j in range(DT):
                        d = j * 8 + 2 * t[ln]
                        for dd, e in ((d, 2 * rr), (d + 1, 2 * rr + 1)):
                            if dd < D:
                                assert 0 <= row + dd < o_g.size
                                assert np.isnan(o_g[row + dd]), "double write"
                                o_g[row + dd] = rnd(st['acc'][j][ln, e] * inv, T)
        issues += sm.issues
    return issues

def host_run(T, Bn, heads, D, Nq, Nk, scale=None):
    dp = next((x for x in [48, 64, 80, 96, 128, 160] if D <= x), None)
    assert dp is not None and D % 8 == 0
    inner = heads * D
    scale = 1 / np.sqrt(D) if scale is None else scale
    Q = rnd(rng.standard_normal((Bn, Nq, inner)) * 1.5, T)
    K = rnd(rng.standard_normal((Bn, Nk, inner)) * 1.5, T)
    V = rnd(rng.standard_normal((Bn, Nk, inner)), T)
    O = np.full(Bn * Nq * inner, np.nan, np.float32)
    p = dict(q_batch=Nq * inner, k_batch=Nk * inner, v_batch=Nk * inner, o_batch=Nq * inner,
             q_row=inner, k_row=inner, v_row=inner, o_row=inner, Nq=Nq, Nk=Nk, heads=heads, D=D, scale=scale)
    grid = (-(-Nq // 64), heads, Bn)
    issues = attention_tc(T, dp, p, grid, (Q.ravel(), K.ravel(), V.ravel(), O))
    O = O.reshape(Bn, Nq, inner)
    assert not np.isnan(O).any(), "unwritten output"
    Qh = Q.reshape(Bn, Nq, heads, D).astype(np.float64); Kh = K.reshape(Bn, Nk, heads, D).astype(np.float64)
    Vh = V.reshape(Bn, Nk, heads, D).astype(np.float64)
    S = np.einsum('bqhd,bkhd->bhqk', Qh, Kh) * scale
    S -= S.max(-1, keepdims=True); P = np.exp(S); P /= P.sum(-1, keepdims=True)
    R = np.einsum('bhqk,bkhd->bqhd', P, Vh).reshape(Bn, Nq, inner)
    rel = np.linalg.norm(O - R) / np.linalg.norm(R)
    mx = np.abs(O - R).max()
    return dp, rel, mx, issues

if __name__ == '__main__':
    cfgs = [(T, Bn, hd, D, Nq, Nk) for (T, Bn, hd, D, Nq, Nk) in [
        ('f16', 1, 1, 8, 1, 1), ('bf16', 1, 1, 8, 17, 5),
        ('f16', 2, 2, 40, 70, 77), ('bf16', 2, 2, 40, 17, 200),
        ('f16', 1, 2, 64, 130, 64), ('bf16', 2, 1, 64, 64, 77),
        ('f16', 1, 1, 80, 70, 200), ('bf16', 1, 2, 80, 1, 5),
        ('f16', 2, 1, 160, 17, 77), ('bf16', 1, 1, 160, 130, 64),
        ('f16', 1, 2, 8, 64, 200), ('f16', 2, 1, 160, 1, 1),
        ('bf16', 1, 1, 40, 130, 1), ('f16', 1, 1, 64, 17, 5),
        ('f16', 1, 1, 96, 70, 130), ('bf16', 1, 1, 128, 65, 129),
    ]]
    if len(sys.argv) > 1: cfgs = cfgs[int(sys.argv[1])::int(sys.argv[2])]
    for c in cfgs:
        dp, rel, mx, iss = host_run(*c)
        print(c, 'DP', dp, f'relL2 {rel:.2e} maxabs {mx:.2e}', 'issues', len(iss), iss[:3], flush=True)
