"""Generic CenterNet trainer over a sample source.

A sample source is `sample(index, rng) -> (image uint8 HWC RGB 256x256, boxes (N,4) float32 x1y1x2y2 px,
classes (N,) int64)`. Targets at stride 4: a gaussian heatmap peak per object centre (TTFNet-style
elliptical gaussian, sized by the box), size (w, h in pixels) and sub-cell offset at the centre cell.
Loss: CenterNet focal loss on the heatmap + L1 on size and offset at the centre cells.
Seeded (torch, numpy) and limited to 2 threads: a rebuild reproduces the same metrics within noise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from models.detector import SIZE_SCALE, STRIDE, CenterNet, build

GAUSSIAN_ALPHA = 0.54      # TTFNet: gaussian sigma = alpha * box side / 6
MIN_SIGMA = 0.6            # cells; a very small box still gets a peak wider than one cell
FOCAL_ALPHA, FOCAL_BETA = 2.0, 4.0   # CenterNet focal loss exponents
SIZE_WEIGHT = 0.4          # L1 on size/SIZE_SCALE (= CenterNet's 0.1 on size in output cells)
OFFSET_WEIGHT = 1.0
TRAIN_THREADS = 2          # the build machine has 2 cores shared with others


def make_targets(boxes, classes, num_classes: int, tile: int = 256):
    """Dense training targets for one tile: heatmap (C,H,W), size (2,H,W), offset (2,H,W), mask (H,W)."""
    h = w = tile // STRIDE
    heat = np.zeros((num_classes, h, w), np.float32)
    size = np.zeros((2, h, w), np.float32)
    off = np.zeros((2, h, w), np.float32)
    mask = np.zeros((h, w), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    # Large boxes first: where centres collide, the smaller object's regression wins the cell.
    order = np.argsort(-((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))) if len(boxes) else []
    for i in order:
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        bw, bh = x2 - x1, y2 - y1
        if bw <= 1 or bh <= 1:
            continue
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
        sx = max(GAUSSIAN_ALPHA * bw / STRIDE / 6, MIN_SIGMA)
        sy = max(GAUSSIAN_ALPHA * bh / STRIDE / 6, MIN_SIGMA)
        g = np.exp(-((xs - ix) ** 2 / (2 * sx * sx) + (ys - iy) ** 2 / (2 * sy * sy)))
        c = int(classes[i])
        np.maximum(heat[c], g, out=heat[c])
        heat[c, iy, ix] = 1.0
        size[:, iy, ix] = (bw, bh)
        off[:, iy, ix] = (cx - ix, cy - iy)
        mask[iy, ix] = 1.0
    return heat, size, off, mask


def augment(image, boxes, rng):
    """Random horizontal/vertical flip and 90-degree rotation (overhead imagery has no 'up')."""
    h, w = image.shape[:2]
    boxes = boxes.copy()
    if rng.random() < 0.5:
        image = image[:, ::-1]
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    if rng.random() < 0.5:
        image = image[::-1]
        boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
    if rng.random() < 0.5:  # transpose (with the flips this reaches all 8 dihedral poses)
        image = image.transpose(1, 0, 2)
        boxes = boxes[:, [1, 0, 3, 2]]
    return np.ascontiguousarray(image), boxes


def focal_loss(logits, target):
    """CenterNet's penalty-reduced pixel-wise focal loss, normalised by the number of peaks."""
    logp = torch.nn.functional.logsigmoid(logits)
    log1mp = torch.nn.functional.logsigmoid(-logits)
    p = logp.exp()
    pos = target.eq(1.0).float()
    neg = 1.0 - pos
    pos_loss = -(logp * (1 - p) ** FOCAL_ALPHA * pos).sum()
    neg_loss = -(log1mp * p ** FOCAL_ALPHA * (1 - target) ** FOCAL_BETA * neg).sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1.0)


def loss_fn(model: CenterNet, images, heat, size, off, mask):
    hm_logit, size_px, off_logit = model.raw(images)
    m = mask.unsqueeze(1)
    npos = mask.sum().clamp(min=1.0)
    l_hm = focal_loss(hm_logit, heat)
    l_size = ((size_px - size).abs() * m).sum() / SIZE_SCALE / npos
    l_off = ((torch.sigmoid(off_logit) - off).abs() * m).sum() / npos
    return l_hm + SIZE_WEIGHT * l_size + OFFSET_WEIGHT * l_off, (l_hm.item(), l_size.item(), l_off.item())


def to_tensor(images_u8):
    """uint8 NHWC -> float32 NCHW raw/255 (the fp32 model input convention)."""
    return torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float().div_(255.0)


@dataclass
class TrainConfig:
    num_classes: int = 1
    steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    time_budget_s: float | None = None   # stop early (cosine schedule is laid out over `steps`)
    log_every: int = 50
    extra: dict = field(default_factory=dict)


def train(sample, config: TrainConfig, validate=None, log=print):
    """Train a fresh detector. sample(index, rng) gives the index-th training sample (the caller decides
    what an index means: a scene seed, a random crop...). Returns (model, info dict)."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(TRAIN_THREADS)
    torch.set_flush_denormal(True)  # denormal activations/grads made steps ~10x slower here
    rng = np.random.default_rng(config.seed)
    model = build(config.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = min(100, config.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, config.steps) / config.steps)))
    t0 = time.perf_counter()
    index = 0
    step = 0
    history = []
    model.train()
    for step in range(config.steps):
        imgs, targets = [], []
        for _ in range(config.batch_size):
            image, boxes, classes = sample(index, rng)
            index += 1
            image, boxes = augment(image, np.asarray(boxes, np.float32).reshape(-1, 4), rng)
            imgs.append(image)
            targets.append(make_targets(boxes, classes, config.num_classes, image.shape[0]))
        batch = [torch.from_numpy(np.stack(t)) for t in zip(*targets)]
        loss, parts = loss_fn(model, to_tensor(np.stack(imgs)), *batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        if step % config.log_every == 0 or step == config.steps - 1:
            el = time.perf_counter() - t0
            log(f"step {step} loss {loss.item():.4f} hm {parts[0]:.4f} size {parts[1]:.3f} off {parts[2]:.3f} "
                f"lr {sched.get_last_lr()[0]:.2e} {el:.0f}s")
            history.append((step, round(loss.item(), 5)))
        if config.time_budget_s is not None and time.perf_counter() - t0 > config.time_budget_s:
            log(f"time budget reached at step {step}")
            break
    model.eval()
    info = {"steps": step + 1, "batch_size": config.batch_size, "samples_seen": index, "lr": config.lr,
            "weight_decay": config.weight_decay, "optimizer": "AdamW, cosine schedule, 100-step warmup",
            "seed": config.seed, "threads": TRAIN_THREADS, "augment": "flips + transpose (8 dihedral poses)",
            "train_seconds": round(time.perf_counter() - t0, 1), "torch": str(torch.__version__), **config.extra}
    if validate is not None:
        info["validation"] = validate(model)
        log(f"validation {info['validation']}")
    return model, info


# --- quick evaluation (training progress only; shipped metrics come from edge.evaluate) -------------

def quick_eval(model, samples, threshold=0.3, batch=16):
    """AP50 of a torch model over [(image, boxes, classes)] 256x256 tiles, decoded and scored by
    the flight code (edge.heads.centernet, edge.evaluate) so validation means what the flight means."""
    from edge.evaluate import average_precision
    from edge.heads.centernet import decode_centernet

    dets, gts = [], []
    with torch.no_grad():
        for i in range(0, len(samples), batch):
            chunk = samples[i:i + batch]
            heat, size, off = (t.numpy() for t in model(to_tensor(np.stack([s[0] for s in chunk]))))
            for k, s in enumerate(chunk):
                dets.append(decode_centernet(heat[k], size[k], off[k], stride=STRIDE, score_threshold=0.01))
                gts.append(np.asarray(s[1], np.float32).reshape(-1, 4))
    m = average_precision(dets, gts, score_threshold=threshold)
    return {k: round(float(m[k]), 4) for k in ("ap50", "precision", "recall")}
