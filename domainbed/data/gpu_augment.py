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
  with `sampling_ratio=-1` an output pixel spanning s source pixels averages ceil(s)^2 bilinear
  samples, an area filter against aliasing when the crop shrinks);
- flip with probability 1/2;
- colour: brightness, contrast and saturation factors U(0.7, 1.3), hue shift U(-0.3, 0.3),
  applied in a random order drawn per sample (torchvision's `randperm(4)` per image), with
  torchvision's tensor formulas;
- grayscale with probability 0.1; ImageNet normalisation (torchvision.transforms.v2.functional,
  with the mean and std kept on the device: `DeviceConstant`).

Why not a library for the per-sample part: torchvision.transforms.v2 draws one set of
parameters per call, so per-sample augmentation is a Python loop over the images, some fifteen
kernel launches per image (about 1,500 per step of 96 images, against about 150 here: on a GPU
the loop is bound by launch overhead; not measured in this session, which had no GPU); kornia
0.9's ColorJitter draws one order of the four colour operations per batch, not per image, which
changes the joint distribution of what the model sees, and it would be a new dependency. On
the CPU none is clearly faster (`python -m domainbed.scripts.benchmark augment`, 1 thread, 96
images from 256 px cache slots): 64 px ours 253 ms, v2 loop 265 ms, kornia 171 ms; 112 px ours
474 ms, v2 loop 380 ms, kornia 433 ms. Ours does more arithmetic when a crop shrinks (it
averages up to ceil(s)^2 samples per output pixel where kornia takes one bilinear sample). The
parameter-free steps (flip, grayscale, normalisation) and the batched crop-resize are
torchvision's; the hue rotation is written out (torchvision's HSV conversion takes one scalar
shift) and checked against torchvision.

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

HUE = 3  # the columns of `factors`: brightness, contrast, saturation, hue


class DeviceConstant:
    """Numbers that meet device tensors in arithmetic (normalisation's mean and std, the HSV
    cone's offsets), copied to each device and dtype once. Built from python numbers at every use
    (`torch.as_tensor(list, device=cuda)`, as torchvision's normalize does with lists) they would
    cost a blocking copy, a wait for the device, every time."""

    def __init__(self, values):
        self.values = torch.tensor(values, dtype=torch.float64)
        self._copies = {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """The numbers on `x`'s device in `x`'s dtype (rounded once, as from python floats)."""
        key = (x.device, x.dtype)
        if key not in self._copies:
            self._copies[key] = self.values.to(x.device, x.dtype, non_blocking=True)
        return self._copies[key]


def normalize(x: torch.Tensor, mean: DeviceConstant, std: DeviceConstant, inplace: bool = False) -> torch.Tensor:
    """torchvision's normalize (the same arithmetic: subtract, then divide) with the mean and std
    already on the device."""
    return TF.normalize(x, mean.like(x), std.like(x), inplace=inplace)


_HSV_OFFSETS = DeviceConstant([5.0, 3.0, 1.0])  # n of hsv_to_rgb for R, G, B


@dataclass
class AugmentParams:
    """One draw per sample; `boxes` are (top, left, height, width) in source pixels."""

    boxes: torch.Tensor
    flip: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    grayscale: torch.Tensor


class TrainAugment:
    """`draw(sizes, generator)` the parameters of a batch on the CPU, then `apply(images, params)`
    on the device."""

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
        self._mean, self._std = DeviceConstant(self.mean), DeviceConstant(self.std)

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
        x = self.crop_resize(images, params.boxes)
        _on_rows(x, params.flip, lambda rows, _: TF.horizontal_flip(rows))
        x = self.color_jitter_(x, params.factors.to(x.device, non_blocking=True), params.order)
        _on_rows(x, params.grayscale, lambda rows, _: TF.rgb_to_grayscale(rows, num_output_channels=3))
        return normalize(x, self._mean, self._std, inplace=True)

    def color_jitter_(self, x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """In place: position k of every sample's order applies that sample's k-th operation; the
        samples sharing an operation at a position are gathered and transformed together. `order`
        stays on the CPU, so the grouping needs no device synchronisation."""
        operations = (_brightness, _contrast, _saturation, _hue)
        for position in range(4):
            for op in range(4):
                _on_rows(x, order[:, position] == op, lambda rows, index, op=op: operations[op](
                    rows, factors.index_select(0, index)[:, op].view(-1, 1, 1, 1)))
        return x


def _on_rows(x: torch.Tensor, selected: torch.Tensor, fn) -> None:
    """x[rows] = fn(x[rows], rows) in place for the rows of the CPU mask `selected`, whose
    indices are thus known without a device synchronisation."""
    rows = selected.nonzero()[:, 0].to(x.device, non_blocking=True)
    if len(rows) == len(x):
        x.copy_(fn(x, rows))
    elif len(rows):
        x.index_copy_(0, rows, fn(x.index_select(0, rows), rows))


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
    """HSV in [0, 1] of float RGB in [0, 1], (..., 3, H, W), with torchvision's conventions
    (hue and saturation 0 for grey pixels, red wins ties of the maximum, then green)."""
    r, g, b = image.unbind(dim=-3)
    minc, maxc = torch.aminmax(image, dim=-3)
    chroma = maxc - minc
    # grey pixels have chroma 0, so every difference below is 0 and the clamp only avoids 0/0
    safe = chroma.clamp_min(1e-12)
    s = chroma / maxc.clamp_min(1e-12)
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return torch.stack([torch.remainder(h / 6.0, 1.0), s, maxc], dim=-3)


def hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """The closed form of the HSV cone: channel n in (R, G, B) = (5, 3, 1) is
    v - v * s * clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6 (equal to torchvision's
    sector table, in a few passes over the image instead of one per sector)."""
    h, s, v = image.unsqueeze(-3).unbind(dim=-4)
    n = _HSV_OFFSETS.like(image).view(3, 1, 1)
    k = torch.remainder(n + 6.0 * h, 6.0)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
