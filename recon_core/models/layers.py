"""Shared building blocks for the reconstruction models (DRAEM, DSR, baselines).

Everything here works on (B, C, H, W) tensors and any spatial size (odd sizes included: decoders upsample to
the exact size of the matching encoder feature, not by a fixed factor of 2).

- `make_norm`, `ConvNormAct`, `DoubleConv`: 3x3 conv -> norm -> ReLU, twice (DRAEM's block).
- `Encoder`: double-conv blocks with 2x2 max-pooling between them; returns every block's output (for skips).
- `Decoder`: mirrored, bilinear upsampling + conv, then a double conv; with or without skip connections.
- `UNet`: Encoder + Decoder + 3x3 head. `skips=False` gives DRAEM's reconstructive network (a plain
  encoder-decoder, so defects cannot be copied through), `skips=True` its discriminative network.
- `SSPCAB`: self-supervised predictive convolutional attentive block (Ristea et al. 2022).
- Losses: `ssim_map` / `ssim_loss` (Gaussian window 11, sigma 1.5), `focal_loss` (multi-class on logits or
  probabilities, gamma 2), `binary_focal_loss` (one logit channel).
- `mean_pool_max`: image score = max of an average-pooled map (DRAEM's official test code).
- Inference copies: `weights_key` (changes whenever weights do), `freeze_for_inference` (batch norm folded into
  the convolutions, channels_last memory on the CPU: faster oneDNN convolutions).

Append new blocks at the end; keep existing signatures stable (other models import them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from recon_core.errors import ConfigError

NORMS = ("batch", "group", "instance", "none")


# ---------------------------------------------------------------------------------------------------------
# Convolution blocks
# ---------------------------------------------------------------------------------------------------------


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation layer by name. 'group' uses up to 8 groups that divide `channels` (works at tiny widths)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"norm {kind!r} is not one of {list(NORMS)}")


class ConvNormAct(nn.Sequential):
    """3x3 conv (no bias when normalised) -> norm -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", kernel: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=norm == "none"),
            make_norm(norm, out_ch),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two ConvNormAct in a row (in -> mid -> out, mid defaults to out): DRAEM's encoder/decoder block."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", mid_ch: int | None = None) -> None:
        mid_ch = mid_ch or out_ch
        super().__init__(ConvNormAct(in_ch, mid_ch, norm), ConvNormAct(mid_ch, out_ch, norm))


def double_conv(in_ch: int, out_ch: int, norm: str = "batch", mid_ch: int | None = None) -> DoubleConv:
    return DoubleConv(in_ch, out_ch, norm, mid_ch)


def draem_widths(base: int, depth: int, cap: int = 8) -> list[int]:
    """DRAEM's width ladder: base * (1, 2, 4, 8, 8, 8, ...) - doubling until `cap` x base, then flat."""
    if base < 1 or depth < 1:
        raise ConfigError(f"widths: base ({base}) and depth ({depth}) must be at least 1")
    return [base * min(2**i, cap) for i in range(depth)]


# ---------------------------------------------------------------------------------------------------------
# SSPCAB
# ---------------------------------------------------------------------------------------------------------


class SqueezeExcite(nn.Module):
    """Channel attention: global average -> bottleneck MLP -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class SSPCAB(nn.Module):
    """Self-supervised predictive convolutional attentive block (Ristea et al., CVPR 2022).

    A masked convolution: four k x k kernels look at the corners of a (2k + 2d + 1) window whose centre is
    hidden, so the block must *predict* each position from its context; then squeeze-excitation. Keeps the
    channel count and spatial size. Train with `0.1 * MSE(output, input)` added to the loss (the block learns
    to reconstruct its masked input); `self.last_loss` holds that term after each forward pass.
    """

    def __init__(self, channels: int, kernel: int = 1, dilation: int = 1, reduction: int = 8) -> None:
        super().__init__()
        self.pad = kernel + dilation
        self.border = kernel + 2 * dilation + 1
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, kernel) for _ in range(4))
        self.se = SqueezeExcite(channels, reduction)
        self.last_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, b = self.pad, self.border
        padded = F.pad(x, (p, p, p, p))
        corners = (
            padded[:, :, :-b, :-b],
            padded[:, :, b:, :-b],
            padded[:, :, :-b, b:],
            padded[:, :, b:, b:],
        )
        out = F.relu(sum(conv(c) for conv, c in zip(self.convs, corners, strict=True)))
        out = self.se(out)
        self.last_loss = F.mse_loss(out, x.detach()) if self.training else None
        return out


# ---------------------------------------------------------------------------------------------------------
# Encoder / decoder / U-Net
# ---------------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Double-conv blocks at `widths` with 2x2 max-pooling before every block but the first.

    `sspcab=True` replaces the last block by an SSPCAB (its input then has widths[-2] channels, so the block
    keeps that width; DRAEM's ladder ends in 8w, 8w so nothing changes there).
    """

    def __init__(self, in_ch: int, widths: Sequence[int], norm: str = "batch", sspcab: bool = False) -> None:
        super().__init__()
        widths = list(widths)
        if sspcab and len(widths) < 2:
            raise ConfigError("SSPCAB needs an encoder of depth >= 2")
        blocks: list[nn.Module] = []
        prev = in_ch
        for i, w in enumerate(widths):
            if sspcab and i == len(widths) - 1:
                blocks.append(SSPCAB(prev))
                widths[i] = prev
            else:
                blocks.append(DoubleConv(prev, w, norm))
                prev = w
        self.blocks = nn.ModuleList(blocks)
        self.widths = widths
        self.sspcab = blocks[-1] if sspcab else None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = F.max_pool2d(x, 2) if min(x.shape[-2:]) >= 2 else x
            x = block(x)
            feats.append(x)
        return feats

    def aux_loss(self) -> torch.Tensor | None:
        """The SSPCAB reconstruction MSE of the last training forward pass (None without SSPCAB or in eval mode).
        Returns it and clears it, so no graph is kept alive (and the module stays deep-copyable)."""
        if self.sspcab is None:
            return None
        loss, self.sspcab.last_loss = self.sspcab.last_loss, None
        return loss


class UpBlock(nn.Module):
    """Bilinear upsampling to the target size -> ConvNormAct (in -> up_ch) -> (concat skip) -> DoubleConv (-> out).

    up_ch defaults to out_ch (U-Net style, DRAEM's discriminative decoder). DRAEM's reconstructive decoder keeps
    the width through the upsampling conv and the first conv of the double conv (up_ch = mid_ch = in_ch) and
    narrows only in the last conv.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        skip_ch: int = 0,
        norm: str = "batch",
        up_ch: int | None = None,
        mid_ch: int | None = None,
    ) -> None:
        super().__init__()
        up_ch = up_ch or out_ch
        self.up_conv = ConvNormAct(in_ch, up_ch, norm)
        self.block = DoubleConv(up_ch + skip_ch, out_ch, norm, mid_ch)

    def forward(self, x: torch.Tensor, size: tuple[int, int], skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up_conv(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.block(x)


def draem_decoder_widths(enc_widths: Sequence[int]) -> list[int]:
    """Output width per decoder level k (k = 0 is full resolution) in the official DRAEM networks: the width of
    encoder level k - 1 (so w, w, 2w, 4w, 8w for an encoder w, 2w, 4w, 8w, 8w, 8w)."""
    return [enc_widths[max(0, k - 1)] for k in range(len(enc_widths) - 1)]


class Decoder(nn.Module):
    """Decoder for an Encoder with widths `enc_widths`: one UpBlock per pooling, deepest first.

    widths[k] = output width at level k (default `draem_decoder_widths`). With skips, level k concatenates the
    encoder feature of level k (DRAEM's discriminative decoder); without, each level keeps its input width until
    the last conv (DRAEM's reconstructive decoder). Both reproduce the official parameter counts (69M at w = 128,
    28M at w = 64). `out_width` = widths[0].
    """

    def __init__(
        self,
        enc_widths: Sequence[int],
        skips: bool = True,
        norm: str = "batch",
        widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        enc_widths = list(enc_widths)
        dec = list(widths) if widths is not None else draem_decoder_widths(enc_widths)
        if len(dec) != len(enc_widths) - 1:
            raise ConfigError(f"decoder widths: expected {len(enc_widths) - 1} values, got {len(dec)}")
        self.skips = skips
        ups = []
        prev = enc_widths[-1]
        for k in range(len(enc_widths) - 2, -1, -1):
            if skips:
                ups.append(UpBlock(prev, dec[k], enc_widths[k], norm))
            else:
                ups.append(UpBlock(prev, dec[k], 0, norm, up_ch=prev, mid_ch=prev))
            prev = dec[k]
        self.ups = nn.ModuleList(ups)
        self.out_width = prev

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for j, up in enumerate(self.ups):
            target = feats[len(feats) - 2 - j]
            x = up(x, target.shape[-2:], target if self.skips else None)
        return x


class UNet(nn.Module):
    """Configurable encoder-decoder. skips=False: reconstructive (no shortcut for defects); skips=True: U-Net.

    Output = 3x3 conv head with `out_ch` channels (as in DRAEM), no activation (logits / raw image).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        widths: Sequence[int],
        *,
        skips: bool = True,
        norm: str = "batch",
        sspcab: bool = False,
        decoder_widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(in_ch, widths, norm, sspcab)
        self.decoder = Decoder(self.encoder.widths, skips, norm, decoder_widths)
        self.head = nn.Conv2d(self.decoder.out_width, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))

    def aux_loss(self) -> torch.Tensor | None:
        return self.encoder.aux_loss()


# ---------------------------------------------------------------------------------------------------------
# Losses and scoring
# ---------------------------------------------------------------------------------------------------------


def _gaussian_kernel(window: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(window, dtype=like.dtype, device=like.device) - window // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum()).view(1, -1)
    return (g.t() @ g).expand(channels, 1, window, window).contiguous()


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (B, H, W) of images in [0, 1], averaged over channels.

    Gaussian window (11, sigma 1.5) and the constants of Wang et al. 2004 with data range 1. Borders are
    reflect-padded (replicate when the image is smaller than the window) so edge pixels are not biased low.
    Always float32, also under bf16/fp16 autocast: the variances are differences of nearly equal local means
    (E[x²] - E[x]²), which 8 mantissa bits turn into SSIM values far outside [-1, 1], and into NaN on smooth
    images (a DRAEM step on real tire photos under bf16 failed at its first iteration).
    """
    with torch.autocast(x.device.type, enabled=False):
        return _ssim_map_fp32(x.float(), y.float(), window, sigma)


def _ssim_map_fp32(x: torch.Tensor, y: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
    channels = x.shape[1]
    kernel = _gaussian_kernel(window, sigma, channels, x)
    pad = window // 2
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, [pad] * 4, mode=mode), kernel, groups=channels)

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim.mean(dim=1)


def ssim_loss(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1 - mean SSIM (DRAEM adds this once to the L2 loss)."""
    return 1 - ssim_map(x, y, window, sigma).mean()


def focal_loss(
    inputs: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: Sequence[float] | None = None,
    from_logits: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Multi-class focal loss (Lin et al. 2017), mean over pixels.

    inputs: (B, C, H, W) logits (from_logits=True, computed stably with log_softmax) or probabilities.
    target: (B, H, W) or (B, 1, H, W) class indices (a {0,1} float mask works for C = 2).
    alpha: optional per-class weights. loss = -alpha_t * (1 - p_t)**gamma * log(p_t).
    Computed in float32 from 16-bit logits too: CPU autocast (unlike CUDA's) leaves log_softmax in bf16, where
    (1 - p_t) of the well-classified pixels, most of the map, has 8 bits and the focal weights go coarse.
    """
    inputs = inputs.float()
    if target.dim() == inputs.dim():
        target = target[:, 0]
    index = target.long().unsqueeze(1)
    if from_logits:
        logp = F.log_softmax(inputs, dim=1).gather(1, index).squeeze(1)
        p = logp.exp()
    else:
        p = inputs.gather(1, index).squeeze(1).clamp(eps, 1.0)
        logp = p.log()
    loss = -((1 - p) ** gamma) * logp
    if alpha is not None:
        weights = torch.as_tensor(list(alpha), dtype=loss.dtype, device=loss.device)
        loss = loss * weights[index.squeeze(1)]
    return loss.mean()


def binary_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss for one logit channel (B, 1, H, W) or (B, H, W) against a {0, 1} mask of the same shape."""
    logits = logits.reshape(target.shape) if logits.numel() == target.numel() else logits
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    return ((1 - p_t) ** gamma * bce).mean()


def pool_size_for(image_size: int, size_at_256: int = 21) -> int:
    """A pooling window scaled from its size at 256 px to `image_size`, kept odd and >= 1."""
    k = max(1, round(size_at_256 * image_size / 256))
    return k if k % 2 else k + 1


def mean_pool_max(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """Image score of (B, H, W) maps: max of the k x k average-pooled map (stride 1, zero padding k//2, as in
    DRAEM's official test code). kernel <= 1 gives the plain max."""
    if kernel <= 1:
        return maps.flatten(1).max(dim=1).values
    pooled = F.avg_pool2d(maps.unsqueeze(1), kernel, stride=1, padding=kernel // 2)
    return pooled.flatten(1).max(dim=1).values


def images_to_tensor(images: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) float [0, 1] -> (N, 3, size, size) on device; resizes (antialiased) only when needed."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ConfigError(f"expected images of shape (N, H, W, 3), got {tuple(images.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.to(device)


def weights_key(nets: Sequence[nn.Module]) -> tuple:
    """Changes whenever any weight or buffer of `nets` does: in-place updates (optimizer steps, batch-norm
    statistics, load_state_dict) bump a tensor's _version; moves change its data_ptr."""
    return tuple((t.data_ptr(), t._version) for net in nets for t in (*net.parameters(), *net.buffers()))


def freeze_for_inference(net: nn.Module, channels_last: bool = True) -> nn.Module:
    """In place, on an eval-mode copy: every ConvNormAct's batch norm folded into its convolution (exact up to float
    rounding), no gradients, and with `channels_last` NHWC memory (oneDNN's native layout on CPUs; a trained DSR
    scored 20.9 -> 18.7 ms per image with both, notes/dsr.md). Returns `net`."""
    net.eval()
    for module in net.modules():
        if isinstance(module, ConvNormAct) and isinstance(module[1], nn.BatchNorm2d):
            module[0] = fuse_conv_bn_eval(module[0], module[1])
            module[1] = nn.Identity()
    net.requires_grad_(False)
    return net.to(memory_format=torch.channels_last) if channels_last else net


__all__ = [
    "NORMS",
    "SSPCAB",
    "ConvNormAct",
    "Decoder",
    "DoubleConv",
    "Encoder",
    "SqueezeExcite",
    "UNet",
    "UpBlock",
    "binary_focal_loss",
    "double_conv",
    "draem_decoder_widths",
    "draem_widths",
    "focal_loss",
    "freeze_for_inference",
    "images_to_tensor",
    "make_norm",
    "mean_pool_max",
    "pool_size_for",
    "ssim_loss",
    "ssim_map",
    "weights_key",
]
