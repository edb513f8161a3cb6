import sys, itertools, numpy as np, attention_tc as e
i, n = int(sys.argv[1]), int(sys.argv[2])
allc = list(itertools.product(['f16','bf16'], [8,40,64,80,160], [1,17,64,70,130], [1,5,64,77,200]))
r = np.random.default_rng(3)
hb = [(int(r.integers(1,3)), int(r.integers(1,3))) for _ in allc]
for idx in range(i, len(allc), n):
    T, D, Nq, Nk = allc[idx]; Bn, H = hb[idx]
    dp, rel, mx, iss = e.host_run(T, Bn, H, D, Nq, Nk)
    print(T, Bn, H, D, Nq, Nk, dp, f'{rel:.3e}', f'{mx:.3e}', len(iss), flush=True)
