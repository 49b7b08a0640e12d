"""SWAD's training augmentation (datasets/transforms.py), per sample, on a batch on the device.

The classic path runs, per image in a worker process, on a PIL image:

    RandomResizedCrop(size, scale=(0.7, 1), ratio=(3/4, 4/3)) -> RandomHorizontalFlip(0.5)
    -> ColorJitter(0.3, 0.3, 0.3, 0.3) -> RandomGrayscale(0.1) -> ToTensor -> Normalize

Here the parameters of every sample are drawn on the CPU from one seeded generator (a few
hundred numbers per step), with exactly torchvision's distributions, and the whole batch is
transformed at once on the device:

- crop: torchvision's `RandomResizedCrop.get_params`, vectorised: ten proposals per sample
  (area fraction U(scale), log aspect ratio U(log ratio)), the first that fits is kept, else the
  central crop with the ratio clamped. The crops of all samples are resized in one call of
  `torchvision.ops.roi_align` (bilinear, half-pixel centres as `interpolate(align_corners=False)`;
  with `sampling_ratio=-1` a bin spanning more than one source pixel averages 2x2 samples, an
  anti-aliasing filter for the mild down-scaling the cache allows);
- flip with probability 1/2;
- colour: brightness, contrast and saturation factors U(0.7, 1.3), hue shift U(-0.3, 0.3),
  applied in a random order drawn per sample (torchvision's `randperm(4)` per image), with
  torchvision's tensor formulas;
- grayscale with probability 0.1; ImageNet normalisation (torchvision.transforms.v2.functional).

Why not a library for the per-sample part: torchvision.transforms.v2 draws one set of
parameters per call, so a per-sample batch would need a Python loop over images (about 10x
slower, see the benchmark in readme_parts/speed.md); kornia's ColorJitter draws a single order
of the four colour operations per batch, not per image, so it changes the joint distribution of
what the model sees, and it would be a new dependency. The parameter-free steps (grayscale,
normalisation) and the batched crop-resize are torchvision's.

Differences from the classic PIL path, all below the resolution of the parameter
distributions: PIL applies the colour operations to uint8 with rounding after each, and PIL's
contrast uses the integer mean of the grey image and its hue shift a uint8 hue; here the image
stays float from the resize on. The crop is resized from the cached image, which equals the
decoded file for images no larger than the cache size (PACS) and is otherwise a PIL bilinear
down-scale of it (see cache.py).
"""

import math
from dataclasses import dataclass

import torch
import torchvision.ops
import torchvision.transforms.v2.functional as TF

from domainbed.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass
class AugmentParams:
    """One draw per sample; `boxes` are (top, left, height, width) in source pixels."""

    boxes: torch.Tensor
    flip: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    grayscale: torch.Tensor


class TrainAugment:
    """`draw(sizes, generator)` the parameters of a batch, then `apply(images, sizes?, params)`."""

    def __init__(self, image_size: int, scale=(0.7, 1.0), ratio=(3 / 4, 4 / 3), jitter: float = 0.3,
                 grayscale_p: float = 0.1, flip_p: float = 0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.image_size = image_size
        self.scale = scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.ratio = ratio
        self.jitter = jitter
        self.grayscale_p = grayscale_p
        self.flip_p = flip_p
        self.mean = list(mean)
        self.std = list(std)

    def draw_boxes(self, sizes: torch.Tensor, generator: torch.Generator, attempts: int = 10) -> torch.Tensor:
        """(B, 4) int64 boxes (top, left, height, width) for images of `sizes` (B, 2) = (H, W)."""
        height, width = sizes[:, 0:1].double(), sizes[:, 1:2].double()
        n = len(sizes)
        area = height * width
        target_area = area * torch.empty(n, attempts, dtype=torch.float64).uniform_(*self.scale, generator=generator)
        aspect = torch.exp(torch.empty(n, attempts, dtype=torch.float64).uniform_(*self.log_ratio, generator=generator))
        w = torch.round(torch.sqrt(target_area * aspect))
        h = torch.round(torch.sqrt(target_area / aspect))
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
        w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
        top = torch.floor(torch.rand(n, dtype=torch.float64, generator=generator) * (height[:, 0] - h + 1))
        left = torch.floor(torch.rand(n, dtype=torch.float64, generator=generator) * (width[:, 0] - w + 1))

        # torchvision's fallback: the whole image, or its centre with the ratio clamped
        height, width = height[:, 0], width[:, 0]
        in_ratio = width / height
        fb_w = torch.where(in_ratio > self.ratio[1], torch.round(height * self.ratio[1]), width)
        fb_h = torch.where(in_ratio < self.ratio[0], torch.round(width / self.ratio[0]), height)
        fb_top, fb_left = torch.div(height - fb_h, 2, rounding_mode="floor"), torch.div(width - fb_w, 2, rounding_mode="floor")
        found = fits.any(dim=1)
        boxes = torch.stack([
            torch.where(found, top, fb_top), torch.where(found, left, fb_left),
            torch.where(found, h, fb_h), torch.where(found, w, fb_w),
        ], dim=1)
        return boxes.long()

    def draw(self, sizes: torch.Tensor, generator: torch.Generator) -> AugmentParams:
        n = len(sizes)
        boxes = self.draw_boxes(sizes, generator)
        flip = torch.rand(n, generator=generator) < self.flip_p
        low, high = max(0.0, 1 - self.jitter), 1 + self.jitter
        factors = torch.empty(n, 4).uniform_(low, high, generator=generator)
        factors[:, HUE].uniform_(-self.jitter, self.jitter, generator=generator)
        order = torch.argsort(torch.rand(n, 4, generator=generator), dim=1)
        grayscale = torch.rand(n, generator=generator) < self.grayscale_p
        return AugmentParams(boxes, flip, factors, order, grayscale)

    def crop_resize(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float (B, C, size, size) in [0, 1], each sample its own box."""
        top, left, h, w = boxes.to(images.device, torch.float32, non_blocking=True).unbind(1)
        index = torch.arange(len(images), device=images.device, dtype=torch.float32)
        rois = torch.stack([index, left, top, left + w, top + h], dim=1)
        out = torchvision.ops.roi_align(images.float(), rois, (self.image_size, self.image_size),
                                        spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        return out.div_(255.0)

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """uint8 images (B, 3, H, W) on the device (each sample's image in its top-left corner,
        as the cache stores them) -> normalised float (B, 3, size, size)."""
        device = images.device
        x = self.crop_resize(images, params.boxes)
        flip = params.flip.to(device, non_blocking=True).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        x = self.color_jitter(x, params.factors.to(device, non_blocking=True), params.order)
        gray = params.grayscale.to(device, non_blocking=True).view(-1, 1, 1, 1)
        x = torch.where(gray, TF.rgb_to_grayscale(x, num_output_channels=3), x)
        return TF.normalize(x, self.mean, self.std)

    def color_jitter(self, x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Position k of every sample's order applies that sample's k-th operation: the samples
        sharing an operation at a position are gathered and transformed together. `order` stays
        on the CPU, so the grouping needs no device synchronisation."""
        operations = (_brightness, _contrast, _saturation, _hue)
        for position in range(4):
            for op in range(4):
                rows = (order[:, position] == op).nonzero()[:, 0]
                if len(rows) == 0:
                    continue
                rows = rows.to(x.device, non_blocking=True)
                factor = factors[rows, op].view(-1, 1, 1, 1)
                x = x.index_copy(0, rows, operations[op](x.index_select(0, rows), factor))
        return x


def _blend(image, other, ratio):
    """torchvision's `_blend` for float images, with one ratio per sample."""
    return (ratio * image + (1.0 - ratio) * other).clamp_(0.0, 1.0)


def _brightness(x, factor):
    return (x * factor).clamp_(0.0, 1.0)


def _contrast(x, factor):
    mean = TF.rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factor)


def _saturation(x, factor):
    return _blend(x, TF.rgb_to_grayscale(x), factor)


def _hue(x, shift):
    h, s, v = rgb_to_hsv(x).unbind(dim=-3)
    h = torch.remainder(h + shift[:, 0], 1.0)
    return hsv_to_rgb(torch.stack([h, s, v], dim=-3))


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """HSV in [0, 1] of float RGB in [0, 1], (..., 3, H, W); torchvision's conventions (hue 0
    for grey pixels)."""
    r, g, b = image.unbind(dim=-3)
    maxc, _ = image.max(dim=-3)
    minc, _ = image.min(dim=-3)
    chroma = maxc - minc
    grey = chroma == 0
    s = chroma / torch.where(grey, torch.ones_like(maxc), maxc)
    safe = torch.where(grey, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(grey, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0, 1.0)
    return torch.stack([h, s, maxc], dim=-3)


def hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    h, s, v = image.unbind(dim=-3)
    sector = torch.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = (sector.to(torch.int64) % 6).unsqueeze(-3)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)

    def by_sector(*values):
        return torch.stack(values, dim=-3).gather(-3, sector).squeeze(-3)

    return torch.stack([by_sector(v, q, p, p, t, v), by_sector(t, v, v, q, p, p), by_sector(p, p, t, v, v, q)], dim=-3)
