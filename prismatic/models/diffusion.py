"""The deterministic DDIM sampler used by OpenVLA-OFT's diffusion action head.

It reproduces ``diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")`` with that
class's defaults (epsilon prediction, ``clip_sample`` to [-1, 1], ``set_alpha_to_one``, "leading" timestep
spacing, eta = 0), so checkpoints trained upstream sample the same way without a diffusers dependency.
"""

from __future__ import annotations

import math

import torch


def squaredcos_cap_v2_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """The Glide cosine schedule: beta_t = 1 - alpha_bar(t+1)/alpha_bar(t), capped at ``max_beta``."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


class DDIMScheduler:
    """Forward noising (``add_noise``) and deterministic reverse steps (``step``) on a cosine schedule."""

    def __init__(self, num_train_timesteps: int = 50, clip_sample_range: float = 1.0) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.clip_sample_range = clip_sample_range
        self.alphas_cumprod = torch.cumprod(1.0 - squaredcos_cap_v2_betas(num_train_timesteps), dim=0)
        self.final_alpha_cumprod = 1.0
        self.set_timesteps(num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Use ``num_inference_steps`` evenly spaced ("leading") timesteps for sampling, highest first."""
        if not 1 <= num_inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} must be in [1, num_train_timesteps="
                f"{self.num_train_timesteps}]."
            )
        self.num_inference_steps = num_inference_steps
        step_ratio = self.num_train_timesteps // num_inference_steps
        self.timesteps = (torch.arange(num_inference_steps) * step_ratio).flip(0)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, one timestep per batch element."""
        alphas_cumprod = self.alphas_cumprod.to(device=original.device, dtype=original.dtype)[timesteps]
        alphas_cumprod = alphas_cumprod.reshape(-1, *([1] * (original.ndim - 1)))  # broadcast over non-batch dims
        return alphas_cumprod.sqrt() * original + (1 - alphas_cumprod).sqrt() * noise

    def step(self, noise_pred: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM step x_t -> x_{t - T/num_inference_steps} given the predicted noise."""
        timestep = int(timestep)
        prev_timestep = timestep - self.num_train_timesteps // self.num_inference_steps
        alpha_prod = float(self.alphas_cumprod[timestep])
        alpha_prod_prev = float(self.alphas_cumprod[prev_timestep]) if prev_timestep >= 0 else self.final_alpha_cumprod
        pred_original = (sample - (1 - alpha_prod) ** 0.5 * noise_pred) / alpha_prod**0.5
        pred_original = pred_original.clamp(-self.clip_sample_range, self.clip_sample_range)
        return alpha_prod_prev**0.5 * pred_original + (1 - alpha_prod_prev) ** 0.5 * noise_pred
