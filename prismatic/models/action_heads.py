"""Continuous action heads of OpenVLA-OFT, read from the LLM's hidden states at the action slots.

The LLM spends one slot per action scalar (``num_actions_chunk * action_dim`` slots). A head regroups the slots of
one chunk step, concatenating their hidden states: [B, chunk * action_dim, D] -> [B, chunk, action_dim * D], and
maps each step to ``action_dim`` values. Parameter names match the released ``action_head--*_checkpoint.pt`` files
(after stripping DDP's ``module.`` prefix).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prismatic.models.diffusion import DDIMScheduler
from prismatic.vla.constants import LIBERO


class MLPResNetBlock(nn.Module):
    """Pre-LayerNorm feed-forward block with a residual connection: x + ReLU(Linear(LN(x)))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    """LN -> Linear -> ReLU -> residual blocks -> LN -> Linear."""

    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList([MLPResNetBlock(hidden_dim) for _ in range(num_blocks)])
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., input_dim] -> [..., output_dim]."""
        x = self.relu(self.fc1(self.layer_norm1(x)))  # [..., hidden_dim]
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


def group_action_slots(actions_hidden_states: torch.Tensor, num_actions_chunk: int) -> torch.Tensor:
    """[B, chunk * action_dim, D] -> [B, chunk, action_dim * D]: the slots of one chunk step side by side."""
    batch_size, num_slots, _ = actions_hidden_states.shape
    if num_slots % num_actions_chunk:
        raise ValueError(
            f"Got {num_slots} action slots, which is not a multiple of num_actions_chunk={num_actions_chunk}."
        )
    return actions_hidden_states.reshape(batch_size, num_actions_chunk, -1)


class L1RegressionActionHead(nn.Module):
    """Regresses an action chunk from the action-slot hidden states (trained with an L1 loss)."""

    def __init__(
        self,
        input_dim: int = 4096,
        hidden_dim: int = 4096,
        action_dim: int = LIBERO.action_dim,
        num_actions_chunk: int = LIBERO.num_actions_chunk,
    ) -> None:
        super().__init__()
        self.action_dim, self.num_actions_chunk = action_dim, num_actions_chunk
        self.model = MLPResNet(
            num_blocks=2, input_dim=input_dim * action_dim, hidden_dim=hidden_dim, output_dim=action_dim
        )

    def predict_action(self, actions_hidden_states: torch.Tensor) -> torch.Tensor:
        """[B, chunk * action_dim, D] -> normalised actions [B, chunk, action_dim]."""
        return self.model(group_action_slots(actions_hidden_states, self.num_actions_chunk))

    def forward(self, actions_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.predict_action(actions_hidden_states)

    def training_inputs(self, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """What a training step feeds the VLA beside the batch (nothing) and the target of :meth:`loss`: the
        normalised actions [B, chunk, action_dim]."""
        return {"target": actions}

    def loss(self, predicted: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``action_loss``: L1 between this head's output and the actions; logged beside it (detached), the L1 of
        the current step and of the later steps of the chunk."""
        predicted, target = predicted.float(), target.float()  # [B, chunk, action_dim]
        return {
            "action_loss": nn.functional.l1_loss(predicted, target),
            "curr_action_l1_loss": nn.functional.l1_loss(predicted[:, 0], target[:, 0]).detach(),
            "next_actions_l1_loss": nn.functional.l1_loss(predicted[:, 1:], target[:, 1:]).detach(),
        }


class SinusoidalPositionalEncoding(nn.Module):
    """Diffusion timesteps [B] -> sin/cos embeddings [B, dim] (frequencies 10000^(-k/(dim/2 - 1)))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"SinusoidalPositionalEncoding needs an even dim, got {dim}.")
        self.dim = dim

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half_dim = self.dim // 2
        exponent = torch.arange(half_dim, device=timesteps.device) * (-math.log(10000) / (half_dim - 1))
        angles = timesteps[:, None] * exponent.exp()[None, :]  # [B, dim/2]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class NoisePredictionModel(nn.Module):
    """MLPResNet predicting the noise of one chunk step from its grouped slot hidden states."""

    def __init__(self, transformer_hidden_dim: int, hidden_dim: int, action_dim: int = LIBERO.action_dim) -> None:
        super().__init__()
        self.mlp_resnet = MLPResNet(
            num_blocks=2, input_dim=transformer_hidden_dim, hidden_dim=hidden_dim, output_dim=action_dim
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, chunk, action_dim * D] -> [B, chunk, action_dim]."""
        return self.mlp_resnet(obs)


class DiffusionActionHead(nn.Module):
    """Denoises an action chunk with DDIM; the LLM sees the noisy actions and the timestep as extra tokens."""

    def __init__(
        self,
        input_dim: int = 4096,
        hidden_dim: int = 4096,
        action_dim: int = LIBERO.action_dim,
        num_actions_chunk: int = LIBERO.num_actions_chunk,
        num_diffusion_steps_train: int = 50,
        num_diffusion_steps_inference: int | None = None,
    ) -> None:
        super().__init__()
        self.action_dim, self.num_actions_chunk = action_dim, num_actions_chunk
        # Upstream sizes the noise predictor's input from hidden_dim (== input_dim == llm_dim in practice).
        self.noise_predictor = NoisePredictionModel(
            transformer_hidden_dim=hidden_dim * action_dim, hidden_dim=hidden_dim, action_dim=action_dim
        )
        self.num_diffusion_steps_train = num_diffusion_steps_train
        self.noise_scheduler = DDIMScheduler(num_train_timesteps=num_diffusion_steps_train)
        self.noise_scheduler.set_timesteps(num_diffusion_steps_inference or num_diffusion_steps_train)
        self.time_encoder = SinusoidalPositionalEncoding(dim=hidden_dim)

    def sample_noisy_actions(self, ground_truth_actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Noise a batch of chunks [B, chunk, action_dim] at random timesteps (one per sample).

        Returns ``noise`` and ``noisy_actions`` (both like the input) and ``diffusion_timestep_embeddings``
        [B, 1, D], the extra LLM token that carries the timestep.
        """
        batch_size, device = ground_truth_actions.shape[0], ground_truth_actions.device
        noise = torch.randn_like(ground_truth_actions)
        timesteps = torch.randint(0, self.noise_scheduler.num_train_timesteps, (batch_size,), device=device)
        noisy_actions = self.noise_scheduler.add_noise(ground_truth_actions, noise, timesteps)
        timestep_embeddings = self.time_encoder(timesteps).to(noisy_actions.dtype)  # [B, D]
        return {
            "noise": noise,
            "noisy_actions": noisy_actions,
            "diffusion_timestep_embeddings": timestep_embeddings.unsqueeze(1),
        }

    def predict_noise(self, actions_hidden_states: torch.Tensor) -> torch.Tensor:
        """[B, chunk * action_dim, D] -> predicted noise [B, chunk, action_dim]."""
        return self.noise_predictor(group_action_slots(actions_hidden_states, self.num_actions_chunk))

    def forward(self, actions_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.predict_noise(actions_hidden_states)

    def training_inputs(self, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """The VLA's extra inputs of a training step (``noisy_actions``, ``diffusion_timestep_embeddings``; see
        :meth:`sample_noisy_actions`) and the target of :meth:`loss`: the noise that was added."""
        inputs = self.sample_noisy_actions(actions)
        inputs["target"] = inputs.pop("noise")
        return inputs

    def loss(self, predicted: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``action_loss``: MSE between the predicted and the added noise."""
        return {"action_loss": nn.functional.mse_loss(predicted.float(), target.float())}
