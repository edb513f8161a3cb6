"""Lane-level numpy emulation of the tensor-core GEMM of kernels/gemm.cu (gemm_conv_tc): ldmatrix
and mma.sync m16n8k16 fragment semantics per the PTX ISA, the CTA/warp tiling and the epilogue
mapping, against A·Wᵀ on a ragged 130×135×40 problem. A hand-written mirror of the kernel (update it
with the kernel); it checks fragment layouts, not timing. Run: python tools/emulate/gemm_tc.py"""
import numpy as np
rng=np.random.default_rng(1)
BM=BN=128;BK=32
def ldm(smem, addrs):  # addrs: list of 32 (row,col) ; returns r[lane][i] -> (v0,v1)
    out=[[None]*4 for _ in range(32)]
    for i in range(4):
        rows=[smem[addrs[8*i+j][0], addrs[8*i+j][1]:addrs[8*i+j][1]+8] for j in range(8)]
        for t in range(32):
            out[t][i]=(rows[t//4][2*(t%4)], rows[t//4][2*(t%4)+1])
    return out
def mma(c,a,b0,b1):
    # c[lane][4], a[lane][4] pairs, b0/b1[lane] pairs
    A=np.zeros((16,16));B=np.zeros((16,8))
    for t in range(32):
        g,tig=t//4,t%4
        for r,(ro,co) in enumerate([(0,0),(8,0),(0,8),(8,8)]):
            A[g+ro,2*tig+co]=a[t][r][0];A[g+ro,2*tig+co+1]=a[t][r][1]
        B[2*tig,g]=b0[t][0];B[2*tig+1,g]=b0[t][1];B[2*tig+8,g]=b1[t][0];B[2*tig+9,g]=b1[t][1]
    D=A@B
    for t in range(32):
        g,tig=t//4,t%4
        c[t][0]+=D[g,2*tig];c[t][1]+=D[g,2*tig+1];c[t][2]+=D[g+8,2*tig];c[t][3]+=D[g+8,2*tig+1]
def run(M,N,K):
    Am=rng.standard_normal((M,K));Wm=rng.standard_normal((N,K))
    Y=np.full((M,N),np.nan)
    for bx in range((M+127)//128):
      for by in range((N+127)//128):
        m0,n0=bx*128,by*128
        acc={(w,l):[[0.0]*4 for _ in range(16)] for w in range(8) for l in range(32)}
        for kt in range((K+31)//32):
            As=np.zeros((128,40));Bs=np.zeros((128,40))
            for r in range(128):
                for k in range(32):
                    kk=kt*32+k
                    if m0+r<M and kk<K: As[r,k]=Am[m0+r,kk]
                    if n0+r<N and kk<K: Bs[r,k]=Wm[n0+r,kk]
            for w in range(8):
                wm,wn=w>>2,w&3
                for kk in (0,16):
                    af=[ldm(As,[(wm*64+i*16+(l&15),kk+(l>>4)*8) for l in range(32)]) for i in range(4)]
                    bf=[None]*4
                    for j in range(2):
                        r=ldm(Bs,[(wn*32+j*16+((l>>3)>>1)*8+(l&7),kk+((l>>3)&1)*8) for l in range(32)])
                        bf[2*j]=([r[l][0] for l in range(32)],[r[l][1] for l in range(32)])
                        bf[2*j+1]=([r[l][2] for l in range(32)],[r[l][3] for l in range(32)])
                    for i in range(4):
                        for j in range(4):
                            c=[acc[(w,l)][i*4+j] for l in range(32)]
                            mma(c,af[i],bf[j][0],bf[j][1])
        for w in range(8):
            wm,wn=w>>2,w&3
            for l in range(32):
                for i in range(4):
                    for j in range(4):
                        m=m0+wm*64+i*16+(l>>2);n=n0+wn*32+j*8+(l&3)*2
                        a=acc[(w,l)][i*4+j]
                        for (mm,nn,v) in [(m,n,a[0]),(m,n+1,a[1]),(m+8,n,a[2]),(m+8,n+1,a[3])]:
                            if mm<M and nn<N: Y[mm,nn]=v
    print(M,N,K,np.abs(Y-Am@Wm.T).max())
run(130,135,40)
