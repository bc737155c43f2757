"""Whole-batch augmentation on the device: tensor ops over (B, 1, H, W) float batches, no per-image Python.

Every function draws one set of random parameters per image from torch's global RNG on the batch's device
(so a checkpoint's RNG state reproduces them) and returns a new tensor of the same dtype and device. Batches
are normalised first, so 0 is the training mean: erased boxes and the corners uncovered by a rotation are
filled with the mean gray (as are the borders a shift or zoom-out uncovers).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fer_tune.training.config import AugmentConfig


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (B, 48, 48) -> float32 (B, 1, 48, 48), standardised by the training split's mean/std (0..255).

    Args:
        images: (B, H, W) uint8 pixels.
        mean: the training split's pixel mean, on the 0..255 scale.
        std: the training split's pixel standard deviation, on the 0..255 scale.

    Returns:
        (B, 1, H, W) float32, on the device of `images`.
    """
    return ((images.float() - mean) / std).unsqueeze(1)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size window of a (B, C, H, W) batch (identity when size is the image side).

    Args:
        x: the batch.
        size: the side of the window, px (at most H and W).

    Returns:
        A (B, C, size, size) view of `x`.
    """
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def random_hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p.

    Args:
        x: a (B, C, H, W) batch.
        p: the probability of each image's flip.

    Returns:
        The batch with some images mirrored.
    """
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p
    return torch.where(flip, x.flip(-1), x)


def random_affine(
    x: torch.Tensor, degrees: float, scale: float, shift: float = 0.0, aspect: float = 1.0
) -> torch.Tensor:
    """Rotate, zoom, stretch and translate each image at random: one sampling grid for the whole batch.

    Together, zoom, stretch and translation are a random resized crop (torchvision's `RandomResizedCrop`) and
    translation alone is `RandomAffine(translate=...)`, without per-image Python.

    Args:
        x: a normalised (B, C, H, W) batch of square images; uncovered borders become 0, the mean gray.
        degrees: the largest rotation either way, in degrees; 0 for none.
        scale: the largest relative zoom either way (0.1: 0.9x to 1.1x); 0 for none.
        shift: the largest translation either way, per axis, as a fraction of the side (0.2: +-20%); 0 for
            none.
        aspect: the largest width:height stretch either way, drawn log-uniform (4/3: 3/4 to 4/3; the area is
            kept); 1 for none.

    Returns:
        The transformed batch (`x` itself when all four are off).
    """
    if degrees == 0 and scale == 0 and shift == 0 and aspect == 1:
        return x
    b = x.shape[0]

    def uniform() -> torch.Tensor:  # U(-1, 1) per image
        return torch.rand(b, device=x.device) * 2 - 1

    angle = uniform() * math.radians(degrees)
    zoom = 1 + uniform() * scale  # > 1 zooms in
    zoom_x = zoom_y = zoom
    if aspect != 1:  # drawn only when on: configs without it keep their random stream
        stretch = torch.exp(uniform() * (math.log(aspect) / 2))  # width:height = stretch**2
        zoom_x, zoom_y = zoom * stretch, zoom / stretch
    cos, sin = torch.cos(angle), torch.sin(angle)
    move_x = move_y = torch.zeros_like(cos)
    if shift != 0:
        move_x, move_y = uniform() * 2 * shift, uniform() * 2 * shift  # the side spans 2 grid units
    # theta maps output to input coordinates (normalised to [-1, 1]): R(angle) @ diag(1 / zoom) + move
    theta = torch.stack(
        [
            torch.stack([cos / zoom_x, -sin / zoom_y, move_x], 1),
            torch.stack([sin / zoom_x, cos / zoom_y, move_y], 1),
        ],
        1,
    )  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def crop_at(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Per-image size x size windows of a (B, C, H, W) batch at offsets top[b], left[b], as one gather.

    Args:
        x: the batch.
        top: (B,) row offsets, px.
        left: (B,) column offsets, px.
        size: the side of the windows, px.

    Returns:
        (B, C, size, size) crops.
    """
    ar = torch.arange(size, device=x.device)
    rows = (top[:, None] + ar)[:, None, :, None]  # (B, 1, size, 1)
    cols = (left[:, None] + ar)[:, None, None, :]  # (B, 1, 1, size)
    b = torch.arange(x.shape[0], device=x.device)[:, None, None, None]
    c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[b, c, rows, cols]


def random_crop(x: torch.Tensor, size: int, pad: int = 0) -> torch.Tensor:
    """Random size x size crop per image of the batch reflect-padded by pad px (size=H: a shift up to pad).

    Args:
        x: a (B, C, H, W) batch.
        size: the side of the crops, px.
        pad: reflect padding on each side before cropping, px; 0 for none.

    Returns:
        (B, C, size, size) crops.
    """
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    h, w = x.shape[-2:]
    if size == h == w:
        return x
    top = torch.randint(0, h - size + 1, (x.shape[0],), device=x.device)
    left = torch.randint(0, w - size + 1, (x.shape[0],), device=x.device)
    return crop_at(x, top, left, size)


def random_erasing(x: torch.Tensor, p: float, area: tuple[float, float] = (0.02, 0.33)) -> torch.Tensor:
    """With probability p per image, set a random box (area and aspect ratio as torchvision's) to 0.

    Args:
        x: a normalised (B, C, H, W) batch.
        p: the probability of each image's erasing; 0 for none.
        area: the range of the box's area, as fractions of the image's.

    Returns:
        The batch with the boxes set to 0 (`x` itself when p is 0).
    """
    if p == 0:
        return x
    b, _, h, w = x.shape
    dev = x.device
    frac = torch.empty(b, device=dev).uniform_(*area)
    ratio = torch.exp(torch.empty(b, device=dev).uniform_(math.log(0.3), math.log(1 / 0.3)))
    eh = (torch.sqrt(frac * h * w * ratio).round().clamp(1, h)).long()
    ew = (torch.sqrt(frac * h * w / ratio).round().clamp(1, w)).long()
    top = (torch.rand(b, device=dev) * (h - eh + 1)).long()
    left = (torch.rand(b, device=dev) * (w - ew + 1)).long()
    r = torch.arange(h, device=dev)[None, :, None]
    c = torch.arange(w, device=dev)[None, None, :]
    box = (r >= top[:, None, None]) & (r < (top + eh)[:, None, None])
    box = box & (c >= left[:, None, None]) & (c < (left + ew)[:, None, None])
    apply = torch.rand(b, device=dev)[:, None, None] < p
    return x.masked_fill((box & apply)[:, None], 0.0)


def mix(
    x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup or cutmix (one chosen at random per batch when both are on), timm-style: one lambda per batch.

    Returns the mixed batch, both target vectors and lam, the weight of the first: the loss is
    `lam * CE(out, y) + (1 - lam) * CE(out, y_perm)`. With both alphas 0 it returns (x, y, y, 1.0).

    Args:
        x: a (B, C, H, W) batch.
        y: (B,) class indices.
        mixup: mixup's Beta(alpha, alpha) parameter; 0 for none.
        cutmix: cutmix's Beta(alpha, alpha) parameter; 0 for none.

    Returns:
        (mixed x, y, y of the images mixed in, lam).
    """
    if mixup == 0 and cutmix == 0:
        return x, y, y, 1.0
    use_cutmix = cutmix > 0 and (mixup == 0 or torch.rand(()).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())  # CPU RNG: no device sync
    perm = torch.randperm(x.shape[0], device=x.device)
    if not use_cutmix:
        return x * lam + x[perm] * (1 - lam), y, y[perm], lam
    h, w = x.shape[-2:]
    cut = math.sqrt(1 - lam)
    ch, cw = round(h * cut), round(w * cut)
    cy, cx = torch.randint(0, h, ()).item(), torch.randint(0, w, ()).item()
    top, bottom = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
    left, right = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
    x = x.clone()
    x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
    lam = 1 - (bottom - top) * (right - left) / (h * w)  # the area actually pasted
    return x, y, y[perm], lam


def augment_batch(
    x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The training transform of a normalised (B, 1, 48, 48) batch; returns `mix`'s (x, y_a, y_b, lam).

    Order: `views` copies of the batch, flip, rotation + zoom + stretch + translation (one affine grid), shift
    or crop to `cfg.input_size`, erasing, mixup/cutmix. Each copy draws its own parameters.

    Args:
        x: a normalised (B, 1, 48, 48) batch.
        y: (B,) class indices.
        cfg: the `augment:` keys of the run.

    Returns:
        (augmented x, y, y of the images mixed in, lam), as `mix` returns them; with `cfg.views` = V, x holds
        V * B images (copy v of image i at v * B + i) and the targets are repeated to match.
    """
    if cfg.views > 1:  # batch augmentation (Hoffer et al. 2019): one larger step, not V smaller ones
        x, y = x.repeat(cfg.views, 1, 1, 1), y.repeat(cfg.views)
    if cfg.hflip:
        x = random_hflip(x)
    x = random_affine(x, cfg.rotation, cfg.scale, cfg.shift, cfg.aspect)
    if 1 <= cfg.crop <= 16:
        x = random_crop(x, x.shape[-1], pad=cfg.crop)
    elif cfg.crop >= 32:
        x = random_crop(x, cfg.crop)
    x = random_erasing(x, cfg.erasing)
    return mix(x, y, cfg.mixup, cfg.cutmix)


def eval_batch(images: torch.Tensor, mean: float, std: float, input_size: int) -> torch.Tensor:
    """The evaluation transform: normalise, then the center crop when the model was trained on crops.

    Args:
        images: (B, 48, 48) uint8 pixels.
        mean: the training split's pixel mean (0..255).
        std: the training split's pixel standard deviation (0..255).
        input_size: the side the model was trained on, px.

    Returns:
        (B, 1, input_size, input_size) float32.
    """
    return center_crop(normalize(images, mean, std), input_size)
