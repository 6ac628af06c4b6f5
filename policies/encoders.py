"""Observation encoders: normalised obs dict (B, n_obs, ...) -> one feature vector (B, F).

Low-dim keys go through one MLP over the whole flattened history; each camera gets its own small ResNet-style
CNN (GroupNorm, since EMA weights and BatchNorm statistics do not mix) with a spatial-softmax keypoint head, applied
per frame. Depth, when a ``<cam>_depth`` key accompanies ``<cam>_rgb``, is a fourth input channel of that camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from policies.spec import PolicySpec


@dataclass
class EncoderConfig:
    lowdim_hidden: int = 256  # width of the low-dim MLP's hidden layer
    lowdim_features: int = 64  # low-dim feature size (0 = pass the normalised history through unchanged)
    rgb_base_channels: int = 32  # channels of the first ResNet stage; doubled at every later stage
    rgb_stages: int = 4  # number of ResNet stages (ResNet-18 has 4, of 2 basic blocks each)
    rgb_blocks_per_stage: int = 2  # basic residual blocks per stage
    rgb_stem_stride: int = 2  # stride of the stem conv; 1 keeps detail for tiny (e.g. 32x32) images
    rgb_groups: int = 8  # GroupNorm groups (must divide every stage's width)
    num_keypoints: int = 32  # spatial-softmax keypoints per camera; 2 coordinates each
    rgb_features: int = 64  # per-frame feature size of each camera after the keypoint projection
    crop_ratio: float = 0.9  # random crop (training) / centre crop (eval) side, relative to the image side


def random_or_center_crop(images: torch.Tensor, ratio: float, random: bool,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop (N, H, W, C) images to round(ratio * side); independent random offsets per image when ``random``."""
    n, h, w, _ = images.shape
    ch, cw = max(1, round(h * ratio)), max(1, round(w * ratio))
    if ch == h and cw == w:
        return images
    if not random:
        top, left = (h - ch) // 2, (w - cw) // 2
        return images[:, top:top + ch, left:left + cw]
    top = torch.randint(0, h - ch + 1, (n,), generator=generator).to(images.device)
    left = torch.randint(0, w - cw + 1, (n,), generator=generator).to(images.device)
    rows = top[:, None] + torch.arange(ch, device=images.device)[None]  # (N, ch)
    cols = left[:, None] + torch.arange(cw, device=images.device)[None]  # (N, cw)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]  # one gather instead of a Python loop


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with GroupNorm and a projected shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(groups, c_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.shortcut(x))


class SpatialSoftmax(nn.Module):
    """Feature map -> expected (x, y) image coordinates of K learned keypoints, in [-1, 1]."""

    def __init__(self, channels: int, num_keypoints: int):
        super().__init__()
        self.to_keypoints = nn.Conv2d(channels, num_keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heat = self.to_keypoints(x)  # (N, K, H, W)
        n, k, h, w = heat.shape
        probs = torch.softmax(heat.reshape(n, k, h * w), dim=-1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device),
                                indexing="ij")
        grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1).to(probs.dtype)  # (H*W, 2)
        return (probs @ grid).reshape(n, 2 * k)


class CameraEncoder(nn.Module):
    """ResNet-18-style trunk (configurable width/depth) + spatial softmax + linear, for one camera's frames."""

    def __init__(self, in_channels: int, cfg: EncoderConfig):
        super().__init__()
        c = cfg.rgb_base_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, cfg.rgb_stem_stride, 1, bias=False),
                                   nn.GroupNorm(cfg.rgb_groups, c), nn.ReLU(inplace=True)]
        c_in = c
        for stage in range(cfg.rgb_stages):
            c_out = c * 2 ** stage
            for block in range(cfg.rgb_blocks_per_stage):
                stride = 2 if (stage > 0 and block == 0) else 1
                layers.append(BasicBlock(c_in, c_out, stride, cfg.rgb_groups))
                c_in = c_out
        self.trunk = nn.Sequential(*layers)
        self.keypoints = SpatialSoftmax(c_in, cfg.num_keypoints)
        self.project = nn.Linear(2 * cfg.num_keypoints, cfg.rgb_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, rgb_features)
        return self.project(self.keypoints(self.trunk(images)))


class ObservationEncoder(nn.Module):
    """Normalised observation dict with (B, n_obs, ...) tensors -> (B, feature_dim).

    Images arrive channel-last as stored ((B, n_obs, H, W, C), already mapped to [-1, 1] by the normaliser).
    """

    def __init__(self, spec: PolicySpec, cfg: EncoderConfig):
        super().__init__()
        self.cfg, self.n_obs = cfg, spec.n_obs
        self.lowdim_keys = spec.lowdim_keys
        lowdim_in = spec.n_obs * sum(_numel(spec.obs_keys[k][0]) for k in self.lowdim_keys)
        self.lowdim: nn.Module = nn.Identity()
        lowdim_out = lowdim_in
        if lowdim_in and cfg.lowdim_features:
            self.lowdim = nn.Sequential(nn.Linear(lowdim_in, cfg.lowdim_hidden), nn.Mish(),
                                        nn.Linear(cfg.lowdim_hidden, cfg.lowdim_features))
            lowdim_out = cfg.lowdim_features
        # One encoder per camera; a camera is named by its rgb and/or depth key.
        rgb, depth = set(spec.rgb_keys), set(spec.depth_keys)
        self.cameras = sorted({k[:-4] for k in rgb} | {k[:-6] for k in depth})
        self.camera_keys: dict[str, list[str]] = {}
        encoders = {}
        for cam in self.cameras:
            keys = [k for k in (f"{cam}_rgb", f"{cam}_depth") if k in spec.obs_keys]
            self.camera_keys[cam] = keys
            channels = sum(spec.obs_keys[k][0][-1] for k in keys)
            encoders[cam] = CameraEncoder(channels, cfg)
        self.camera_encoders = nn.ModuleDict(encoders)
        self.feature_dim = lowdim_out + len(self.cameras) * spec.n_obs * cfg.rgb_features
        # Frame-feature cache for deployment: a frame seen in the previous call (it is still in the observation
        # history) is not re-encoded. Only used without augmentation and without autograd, so training never sees
        # it; keyed by the weights' version counters, so loading or swapping weights invalidates it.
        self.cache_frames = True
        self._frame_cache: dict[str, tuple[tuple[int, ...], int, torch.Tensor, torch.Tensor]] = {}
        self.frames_encoded = 0  # frames that went through a camera trunk (diagnostics and tests)

    def forward(self, obs: dict[str, torch.Tensor], augment: bool | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``augment`` (default: ``self.training``) picks random vs centre crops."""
        augment = self.training if augment is None else augment
        feats = []
        if self.lowdim_keys:
            b = obs[self.lowdim_keys[0]].shape[0]
            flat = torch.cat([obs[k].reshape(b, -1) for k in self.lowdim_keys], dim=-1)
            feats.append(self.lowdim(flat))
        for cam in self.cameras:
            keys = self.camera_keys[cam]
            frames = [obs[k].float() for k in keys]
            if keys[-1].endswith("_depth"):  # beyond the normaliser's range is clipped, not extrapolated
                frames[-1] = frames[-1].clamp(-1.0, 1.0)
            x = torch.cat(frames, dim=-1)  # (B, n_obs, H, W, C)
            b, t = x.shape[:2]
            x = random_or_center_crop(x.reshape(b * t, *x.shape[2:]), self.cfg.crop_ratio, augment, generator)
            if self.cache_frames and not augment and not torch.is_grad_enabled():
                f = self._encode_cached(cam, x, b, t)
            else:
                self._frame_cache.pop(cam, None)
                f = self.camera_encoders[cam](x.permute(0, 3, 1, 2).contiguous())
                self.frames_encoded += x.shape[0]
            feats.append(f.reshape(b, t * f.shape[-1]))
        return torch.cat(feats, dim=-1)

    def clear_frame_cache(self) -> None:
        """Forget cached frame features. Version counters miss writes through ``.data`` (diffusers' EMA swaps
        weights that way), so whoever swaps weights calls this (PolicyBase does)."""
        self._frame_cache.clear()

    def _encode_cached(self, cam: str, x: torch.Tensor, b: int, t: int) -> torch.Tensor:
        """Features of (b*t, H, W, C) frames, reusing those of frames identical to one of the same batch row in the
        previous call (with a history of n_obs frames, all but the newest were seen before)."""
        encoder = self.camera_encoders[cam]
        # Parameters made under torch.inference_mode carry no version counter (and cannot change outside it).
        version = tuple(-1 if p.is_inference() else p._version for p in encoder.parameters())
        cached = self._frame_cache.get(cam)
        out = torch.empty(0)
        hits: dict[int, torch.Tensor] = {}
        if cached is not None and cached[0] == version and cached[1] == b:
            old_frames, old_feats = cached[2].reshape(b, -1, *x.shape[1:]), cached[3].reshape(b, -1, cached[3].shape[-1])
            new_frames = x.reshape(b, t, *x.shape[1:])
            for row in range(b):
                for step in range(t):
                    for k in range(old_frames.shape[1]):
                        if torch.equal(new_frames[row, step], old_frames[row, k]):
                            hits[row * t + step] = old_feats[row, k]
                            break
        misses = [i for i in range(b * t) if i not in hits]
        if misses:
            computed = encoder(x[misses].permute(0, 3, 1, 2).contiguous())
            self.frames_encoded += len(misses)
            out = torch.empty(b * t, computed.shape[-1], dtype=computed.dtype, device=computed.device)
            out[misses] = computed
        else:
            first = next(iter(hits.values()))
            out = torch.empty(b * t, first.shape[-1], dtype=first.dtype, device=first.device)
        for i, feat in hits.items():
            out[i] = feat
        self._frame_cache[cam] = (version, b, x.clone(), out.clone())
        return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
