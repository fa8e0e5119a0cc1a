"""Encoder and decoder blocks shared by the notebooks.

Notebook 02 writes its VAE out cell by cell; later notebooks import these blocks so
that they can spend their cells on what they teach. Every model here exposes
``encode(x) -> (z_loc, z_logvar)`` and ``decode(z) -> decoder output`` (logits for a
Bernoulli likelihood, the mean for a Gaussian one), which is the interface
``course_utils.losses.iw_log_likelihood`` and ``course_utils.train.fit`` rely on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from torch import nn


@dataclass
class ConvConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W); H and W divisible by 2**len(channels)
    z_dim: int = 32                                   # size of the latent code
    channels: tuple[int, ...] = (32, 64)              # conv channels; each conv halves H and W
    hidden: int = 256                                 # width of the fully connected layer


def _check_image(x: torch.Tensor, image_shape: tuple[int, int, int]) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"expected images of shape [B, {', '.join(map(str, image_shape))}], got {tuple(x.shape)}. "
            "Add the channel dimension with x.unsqueeze(1) or build the model with the right image_shape."
        )


class ConvEncoder(nn.Module):
    """Images ``[B, C, H, W]`` -> (z_loc, z_logvar), each ``[B, z_dim]``.

    A stack of 4x4 stride-2 convolutions (each halves H and W), then a hidden layer.
    """

    def __init__(self, config: ConvConfig, out_dim: int | None = None):
        super().__init__()
        self.config = config
        c, h, w = config.image_shape
        layers, prev = [], c
        for ch in config.channels:
            layers += [nn.Conv2d(prev, ch, kernel_size=4, stride=2, padding=1), nn.GELU()]
            prev = ch
        self.conv = nn.Sequential(*layers)
        scale = 2 ** len(config.channels)
        if h % scale or w % scale:
            raise ValueError(f"image size {h}x{w} is not divisible by 2**{len(config.channels)} = {scale}.")
        self.feature_shape = (prev, h // scale, w // scale)
        # out_dim: 2 * z_dim for a VAE (loc and logvar); z_dim for a deterministic encoder (WAE).
        self.out_dim = out_dim or 2 * config.z_dim
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(self.feature_shape), config.hidden), nn.GELU(),
                                nn.Linear(config.hidden, self.out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.config.image_shape)
        return self.fc(self.conv(x))  # [B, C, H, W] -> [B, out_dim]


class ConvDecoder(nn.Module):
    """Latent codes ``[B, z_dim]`` -> decoder output ``[B, C, H, W]`` (mirror of ConvEncoder)."""

    def __init__(self, config: ConvConfig):
        super().__init__()
        self.config = config
        c, h, w = config.image_shape
        scale = 2 ** len(config.channels)
        chans = list(reversed(config.channels))
        self.feature_shape = (chans[0], h // scale, w // scale)
        self.fc = nn.Sequential(nn.Linear(config.z_dim, config.hidden), nn.GELU(),
                                nn.Linear(config.hidden, math.prod(self.feature_shape)), nn.GELU())
        layers = []
        for i, ch in enumerate(chans):
            out = chans[i + 1] if i + 1 < len(chans) else c
            layers.append(nn.ConvTranspose2d(ch, out, kernel_size=4, stride=2, padding=1))
            if i + 1 < len(chans):
                layers.append(nn.GELU())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, *self.feature_shape)  # [B, hidden] -> [B, C', H/s, W/s]
        return self.deconv(h)  # -> [B, C, H, W]


class ConvVAE(nn.Module):
    """A convolutional VAE with a diagonal Gaussian q(z|x) and a prior N(0, I).

    ``ConvVAE(ConvConfig(z_dim=2))``, ``ConvVAE(z_dim=2)`` (the fields of ``ConvConfig``), or both:
    ``ConvVAE(config, z_dim=2)`` is ``config`` with z_dim replaced.
    """

    def __init__(self, config: ConvConfig | None = None, **overrides):
        super().__init__()
        unknown = sorted(set(overrides) - {f.name for f in fields(ConvConfig)})
        if unknown:
            raise TypeError(f"ConvVAE got {unknown}, which ConvConfig has no field for; its fields are "
                            f"{[f.name for f in fields(ConvConfig)]}.")
        if config is None:
            config = ConvConfig(**overrides)
        elif overrides:
            config = replace(config, **overrides)  # a copy: the caller's config is left as it was
        self.config = config
        self.z_dim = config.z_dim
        self.encoder = ConvEncoder(config)
        self.decoder = ConvDecoder(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_loc, z_logvar = self.encoder(x).chunk(2, dim=-1)  # [B, 2D] -> 2 x [B, D]
        return z_loc, z_logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    @staticmethod
    def reparameterize(z_loc: torch.Tensor, z_logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps with eps ~ N(0, I): the sample stays differentiable in mu and sigma."""
        return z_loc + torch.exp(0.5 * z_logvar) * torch.randn_like(z_loc)

    def forward(self, x: torch.Tensor):
        """Returns (decoder output, z_loc, z_logvar) for one reparameterized sample per image."""
        z_loc, z_logvar = self.encode(x)
        z = self.reparameterize(z_loc, z_logvar)
        return self.decode(z), z_loc, z_logvar


class MLPVAE(nn.Module):
    """A fully connected VAE on flattened images: the smallest model that works (notebooks 04, 05)."""

    def __init__(self, *, image_shape: tuple[int, int, int] = (1, 28, 28), z_dim: int = 20,
                 hidden: tuple[int, ...] = (400,)):
        super().__init__()
        self.image_shape, self.z_dim = image_shape, z_dim
        d = math.prod(image_shape)
        enc, prev = [nn.Flatten()], d
        for h in hidden:
            enc += [nn.Linear(prev, h), nn.GELU()]
            prev = h
        enc.append(nn.Linear(prev, 2 * z_dim))
        self.encoder = nn.Sequential(*enc)
        dec, prev = [], z_dim
        for h in reversed(hidden):
            dec += [nn.Linear(prev, h), nn.GELU()]
            prev = h
        dec.append(nn.Linear(prev, d))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_image(x, self.image_shape)
        z_loc, z_logvar = self.encoder(x).chunk(2, dim=-1)  # [B, 2D] -> 2 x [B, D]
        return z_loc, z_logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.image_shape)  # [B, C*H*W] -> [B, C, H, W]

    reparameterize = staticmethod(ConvVAE.reparameterize)
    forward = ConvVAE.forward
