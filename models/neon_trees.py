"""NEON aerial RGB tree-crown data from the deepforest 2.1.0 wheel (fetched at build time, read as a zip).

Only three images of that wheel are ever read: two to train on, one (a different NEON site) to test on.
Annotations: Pascal VOC XML (YELL, SOAP) or CSV (OSBS); every label (Tree, Alive, Dead) is one class "tree".
"""
from __future__ import annotations

import csv
import glob
import io
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile

import numpy as np

WHEEL_SPEC = "deepforest==2.1.0"
CACHE_DIR = os.path.expanduser("~/.cache/orbit-edge/deepforest")
TRAIN_IMAGES = ("2019_YELL_2_528000_4978000_image_crop2.png", "OSBS_029.png")
TEST_IMAGE = "SOAP_061.png"
_ANNOTATIONS = {  # image -> annotation file inside deepforest/data/
    "2019_YELL_2_528000_4978000_image_crop2.png": "2019_YELL_2_528000_4978000_image_crop2.xml",
    "OSBS_029.png": "OSBS_029.csv",
    "SOAP_061.png": "SOAP_061.xml",
}


def wheel_path() -> str:
    """The deepforest wheel in the cache, downloaded with `pip download --no-deps` if absent."""
    found = glob.glob(os.path.join(CACHE_DIR, "deepforest-2.1.0-*.whl"))
    if not found:
        os.makedirs(CACHE_DIR, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", WHEEL_SPEC, "--no-deps", "-d", CACHE_DIR],
                       check=True)
        found = glob.glob(os.path.join(CACHE_DIR, "deepforest-2.1.0-*.whl"))
    return found[0]


def _boxes_xml(text: bytes) -> np.ndarray:
    root = ET.fromstring(text)
    out = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        out.append([float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")])
    return np.asarray(out, np.float32).reshape(-1, 4)


def _boxes_csv(text: bytes) -> np.ndarray:
    rows = csv.DictReader(io.StringIO(text.decode()))
    return np.asarray([[float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for r in rows],
                      np.float32).reshape(-1, 4)


def load(name: str):
    """(image uint8 (H,W,3) RGB, boxes (N,4) float32 x1y1x2y2 pixels) of one allowed image."""
    from PIL import Image

    if name not in _ANNOTATIONS:
        raise ValueError(f"image {name!r} is not one of the images this build may read")
    with zipfile.ZipFile(wheel_path()) as z:
        img = np.asarray(Image.open(io.BytesIO(z.read("deepforest/data/" + name))).convert("RGB"))
        ann = _ANNOTATIONS[name]
        raw = z.read("deepforest/data/" + ann)
    boxes = _boxes_xml(raw) if ann.endswith(".xml") else _boxes_csv(raw)
    return np.ascontiguousarray(img), boxes


def wheel_sha256() -> str:
    import hashlib
    with open(wheel_path(), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class CropSampler:
    """Random 256x256 crops of the training images (area-weighted); boxes clipped to the crop and kept
    when at least MIN_VISIBLE of their area is inside (a sliver of crown is not a crown).

    Two NEON sites cannot show the light, season and crown sizes of a third one, so each crop is also
    rescaled (SCALE_RANGE) and colour-jittered (brightness, contrast, saturation, per-channel gain)."""

    MIN_VISIBLE = 0.5
    SCALE_RANGE = (0.7, 1.3)        # output/source pixel ratio: crowns 0.7x..1.3x their annotated size
    BRIGHTNESS = (0.7, 1.2)
    CONTRAST = (0.7, 1.3)
    SATURATION = (0.4, 1.2)         # down to near-grey: dead crowns at the test site are grey
    CHANNEL_GAIN = 0.08

    def __init__(self, images, tile: int = 256, augment: bool = True):
        self.images = images   # [(img, boxes)]
        self.tile = tile
        self.augment = augment
        areas = np.array([im.shape[0] * im.shape[1] for im, _ in images], float)
        self.weights = areas / areas.sum()

    def _colour(self, crop, rng):
        x = crop.astype(np.float32)
        grey = x.mean(axis=2, keepdims=True)
        x = grey + (x - grey) * rng.uniform(*self.SATURATION)
        mean = x.mean()
        x = mean + (x - mean) * rng.uniform(*self.CONTRAST)
        x = x * rng.uniform(*self.BRIGHTNESS) * rng.uniform(1 - self.CHANNEL_GAIN, 1 + self.CHANNEL_GAIN, 3)
        return np.clip(x + 0.5, 0, 255).astype(np.uint8)

    def __call__(self, index, rng):
        from PIL import Image

        img, boxes = self.images[rng.choice(len(self.images), p=self.weights)]
        h, w = img.shape[:2]
        scale = rng.uniform(*self.SCALE_RANGE) if self.augment else 1.0
        src = min(int(round(self.tile / scale)), h, w)   # source window that becomes one tile
        scale = self.tile / src
        y0 = int(rng.integers(0, h - src + 1))
        x0 = int(rng.integers(0, w - src + 1))
        crop = img[y0:y0 + src, x0:x0 + src]
        if src != self.tile:
            crop = np.asarray(Image.fromarray(crop).resize((self.tile, self.tile), Image.BILINEAR))
        if self.augment:
            crop = self._colour(crop, rng)
        b = (boxes - np.array([x0, y0, x0, y0], np.float32)) * scale
        c = np.clip(b, 0, self.tile)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        vis = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
        keep = vis >= self.MIN_VISIBLE * np.maximum(area, 1e-6)
        return np.ascontiguousarray(crop), c[keep], np.zeros(int(keep.sum()), np.int64)
