"""The pi0 family (``model_family`` "pi0", :class:`prismatic.models.family.ModelFamily`): a checkpoint folder trained
by ``finetune_align.py --model_family pi0`` (``config.json``, ``model.safetensors``, ``tokenizer.model``,
``dataset_statistics.json``, ``policy_config.json``) answering the evaluation's and the server's queries, or a base
pi0 folder built for training.

Per query: the third-person frame, then the wrist frames (``num_images_in_input`` in all), resized with padding to
pi0's image size; the instruction tokenised with the checkpoint's tokenizer; the state normalised with the
checkpoint's statistics (upstream's evaluation rule) and padded; ten Euler steps of the flow (openpi's schedule) from
one fixed noise draw, so a query's answer does not depend on the batch it is in; the first ``action_dim`` dims
un-normalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from prismatic.models.family import CheckedCheckpoint, Observation, TrainingOutput, VisualTokenTap
from prismatic.models.pi0.loading_pi0 import load_pi0_folder
from prismatic.models.pi0.modeling_pi0 import Pi0Model
from prismatic.models.pi0.processing_pi0 import Pi0Processor, observation_from_batch
from prismatic.policy.load import load_dataset_statistics
from prismatic.policy.policy import resolve_unnorm_key
from prismatic.vla.normalization import normalize, unnormalize
from prismatic.vla.policy_config import PolicyConfig, read_policy_config

NOISE_SEED = 0  # the noise every query's sampling starts from


class Pi0Policy:
    """A pi0 policy: loaded from a checkpoint, it answers :meth:`predict_chunk` deterministically; built from a base
    folder, it computes :meth:`training_loss`."""

    family_name = "pi0"

    def __init__(
        self,
        model: Pi0Model,
        processor: Pi0Processor,
        config: PolicyConfig,
        device: torch.device,
        statistics: Mapping[str, Any] | None = None,
        unnorm_key: str = "",
    ):
        self.model, self.processor, self.config = model.to(device), processor, config
        self.unnorm_key, self.device = unnorm_key, device
        self.action_stats = self.proprio_stats = None
        if statistics is not None:
            self.action_stats = statistics[unnorm_key]["action"]
            self.proprio_stats = statistics[unnorm_key].get("proprio")
            if self.proprio_stats is None:
                raise ValueError(f"dataset_statistics.json: {unnorm_key!r} has no 'proprio' statistics: pi0 needs them")
        pi0 = model.config
        generator = torch.Generator().manual_seed(NOISE_SEED)
        self.noise = torch.randn(pi0.chunk_size, pi0.max_action_dim, generator=generator)

    @classmethod
    def build(
        cls, policy_config: PolicyConfig, base_model_path: str | Path, *, device: torch.device, dtype: torch.dtype
    ) -> Pi0Policy:
        """A trainable pi0 from a base folder (its own dtype policy: ``dtype`` is not applied)."""
        model, _ = load_pi0_folder(base_model_path)
        return cls(model.train(), Pi0Processor.from_folder(base_model_path, model.config), policy_config, device)

    @classmethod
    def load(
        cls,
        checkpoint: CheckedCheckpoint,
        *,
        device: torch.device,
        dtype: torch.dtype,
        task_suite_name: str = "",
        quantize: str = "none",
    ) -> Pi0Policy:
        """A pi0 checkpoint for inference, from what the pre-flight parsed (runs in the checkpoint's dtype policy);
        ``task_suite_name`` is the fallback of the statistics key."""
        if quantize != "none":
            raise ValueError(f"quantize={quantize!r}: pi0 loads unquantised only (expected --load_in_8bit/4bit False)")
        model, _ = load_pi0_folder(checkpoint.path)
        processor = Pi0Processor.from_folder(checkpoint.path, model.config)
        key = resolve_unnorm_key(checkpoint.norm_stats, checkpoint.policy_config.unnorm_key, task_suite_name)
        return cls(model.eval(), processor, checkpoint.policy_config, device, checkpoint.norm_stats, key)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint_dir: str | Path,
        *,
        task_suite_name: str = "",
        unnorm_key: str | None = None,
        device: torch.device | None = None,
    ) -> Pi0Policy:
        """Load a pi0 checkpoint folder; ``unnorm_key`` (else the policy config's, else ``task_suite_name``) selects
        the statistics. On the GPU when there is one."""
        config = read_policy_config(checkpoint_dir)
        if config is None or config.model_family != cls.family_name:
            found = "no policy_config.json" if config is None else f"model_family {config.model_family!r}"
            raise ValueError(f"{checkpoint_dir}: {found}: expected a pi0 checkpoint (policy_config.json, family pi0)")
        statistics = load_dataset_statistics(checkpoint_dir)
        if statistics is None:
            raise ValueError(f"{checkpoint_dir}: no dataset_statistics.json: expected the training run's statistics")
        config.unnorm_key = unnorm_key or config.unnorm_key
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        checked = CheckedCheckpoint(Path(checkpoint_dir), config, statistics)
        return cls.load(checked, device=device, dtype=torch.float32, task_suite_name=task_suite_name)

    @classmethod
    def from_config(cls, cfg: Any) -> Pi0Policy:
        """Load ``cfg.pretrained_checkpoint`` with ``run_libero_eval.py``'s flags (a ``GenerateConfig``)."""
        return cls.from_checkpoint(
            cfg.pretrained_checkpoint, task_suite_name=cfg.task_suite_name, unnorm_key=cfg.unnorm_key
        )

    @property
    def policy_config(self) -> PolicyConfig:
        return self.config

    @property
    def gripper(self) -> str:
        return self.config.embodiment.gripper

    def visual_token_tap(self, layer: int) -> VisualTokenTap:
        """pi0's prefix opens with the image tokens of every camera (pi0's camera order), no BOS before them."""
        pi0 = self.model.config
        return VisualTokenTap(layer, start=0, count=pi0.num_cameras * pi0.num_image_tokens)

    def training_loss(self, batch: Mapping[str, torch.Tensor], *, output_hidden_states: bool) -> TrainingOutput:
        """The flow-matching loss of a collated :class:`Pi0BatchTransform` batch (noise and time drawn here), with
        the prefix stream entering each LM layer as the hidden states."""
        output = self.model(
            observation_from_batch(batch, self.device),
            batch["actions"].to(self.device),
            output_hidden_states=output_hidden_states,
        )
        return TrainingOutput(output.loss, {"action_loss": output.loss.detach()}, output.prefix_hidden_states or ())

    def resolved_flags(self) -> dict[str, Any]:
        """The evaluation flags this policy runs with, for logs and resume checks."""
        return {"unnorm_key": self.unnorm_key, "num_images_in_input": self.config.num_images_in_input}

    def preprocess(self, observation: Observation, instruction: str) -> dict[str, torch.Tensor]:
        """One query's model inputs on the CPU (images, tokens, normalised and padded state)."""
        keys = ["full_image", *sorted(key for key in observation if "wrist" in key)]
        keys = keys[: self.config.num_images_in_input]
        if len(keys) != self.config.num_images_in_input:
            raise ValueError(
                f"the checkpoint reads {self.config.num_images_in_input} image(s), but the observation has "
                f"{len(keys)} (keys {sorted(observation)})"
            )
        state = normalize(
            np.asarray(observation["state"], dtype=np.float64),
            self.proprio_stats,
            self.config.embodiment.normalization_type,
            clip_unmasked=True,  # upstream's evaluation rule
        )
        return self.processor([observation[key] for key in keys], instruction, state)

    @torch.inference_mode()
    def predict_prepared(self, queries: Sequence[dict[str, torch.Tensor]]) -> list[np.ndarray]:
        """Un-normalised chunks ``[chunk, action_dim]`` (float64) of prepared queries, in one sampling pass."""
        batch = default_collate(list(queries))
        noise = self.noise.expand(len(queries), -1, -1).to(self.device)
        actions = self.model.sample_actions(observation_from_batch(batch, self.device), noise=noise)
        actions = actions[..., : self.config.embodiment.action_dim].double().cpu().numpy()
        normalization = self.config.embodiment.normalization_type
        return list(unnormalize(actions, self.action_stats, normalization))

    def predict_chunk(self, observation: Observation, instruction: str) -> np.ndarray:
        """Un-normalised actions ``[chunk, action_dim]`` for one observation."""
        return self.predict_prepared([self.preprocess(observation, instruction)])[0]
