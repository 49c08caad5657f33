"""The policy's parts beside the VLA: one table that training's save and resume, ``load_vla`` and the merge check read.

Each component is one file ``{name}--{step|latest}_checkpoint.pt`` in a checkpoint folder (released layout). Which
components a policy has follows from its :class:`PolicyConfig`::

    action_head             L1 regression or diffusion head (not for discrete action tokens)
    proprio_projector       use_proprio
    noisy_action_projector  diffusion
    vision_backbone         use_film: the whole FiLM-wrapped vision backbone (upstream saves it whole)
    align_projector         Spatial Forcing; training only (inference does not read it)
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prismatic.models.action_heads import DiffusionActionHead, L1RegressionActionHead
from prismatic.models.projectors import NoisyActionProjector, ProprioProjector
from prismatic.util.file_checks import refused_pickle_message
from prismatic.util.io import atomic_output
from prismatic.vla.policy_config import PolicyConfig

DDP_PREFIX = "module."


@dataclass(frozen=True)
class Component:
    name: str  # file prefix
    present: Callable[[PolicyConfig], bool]
    inference: bool = True  # read when loading a policy for inference
    ddp_prefix: bool = True  # keys saved with DDP's "module." prefix, as upstream's files


COMPONENTS = (
    Component("action_head", lambda config: config.action_head in ("l1_regression", "diffusion")),
    # pi0 projects the state inside its own model (``state_proj``).
    Component("proprio_projector", lambda config: config.use_proprio and config.model_family != "pi0"),
    Component("noisy_action_projector", lambda config: config.action_head == "diffusion"),
    Component("vision_backbone", lambda config: config.use_film, ddp_prefix=False),
    Component("align_projector", lambda config: config.spatial_forcing is not None, inference=False),
)
COMPONENTS_BY_NAME = {component.name: component for component in COMPONENTS}


def component_names(config: PolicyConfig, *, inference_only: bool = False) -> list[str]:
    """Names of the components a policy with ``config`` has, in table order."""
    return [c.name for c in COMPONENTS if c.present(config) and (c.inference or not inference_only)]


def checkpoint_suffix(step: int | str | None) -> str:
    """``"{step}_checkpoint.pt"``, or ``"latest_checkpoint.pt"`` for ``step=None``."""
    return f"{'latest' if step is None else step}_checkpoint.pt"


def component_path(folder: str | Path, name: str, step: int | str | None) -> Path:
    return Path(folder) / f"{name}--{checkpoint_suffix(step)}"


def build_heads(config: PolicyConfig, llm_dim: int) -> dict[str, nn.Module]:
    """Freshly initialised heads the config asks for (``action_head``, ``proprio_projector``,
    ``noisy_action_projector``), sized by its embodiment. The FiLM backbone and the align projector belong to the
    VLA and to training and are built there."""
    embodiment = config.embodiment
    heads: dict[str, nn.Module] = {}
    if config.action_head == "l1_regression":
        heads["action_head"] = L1RegressionActionHead(
            llm_dim, llm_dim, embodiment.action_dim, embodiment.num_actions_chunk
        )
    elif config.action_head == "diffusion":
        heads["action_head"] = DiffusionActionHead(
            llm_dim,
            llm_dim,
            embodiment.action_dim,
            embodiment.num_actions_chunk,
            num_diffusion_steps_train=config.num_diffusion_steps_train,
            num_diffusion_steps_inference=config.num_diffusion_steps_inference,
        )
    if config.use_proprio:
        heads["proprio_projector"] = ProprioProjector(llm_dim, embodiment.proprio_dim)
    if config.action_head == "diffusion":
        heads["noisy_action_projector"] = NoisyActionProjector(llm_dim)
    return heads


def load_component_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A component's state dict from a ``torch.save`` file, with DDP's ``module.`` prefix stripped where present."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(refused_pickle_message(path, error, "a state dict saved by this project")) from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return {key.removeprefix(DDP_PREFIX): value for key, value in state_dict.items()}


def save_component_state_dict(
    module: nn.Module, path: str | Path, ddp_prefix: bool = True, state_dict: Mapping[str, torch.Tensor] | None = None
) -> None:
    """Write ``module.state_dict()`` (or the given full ``state_dict`` of a sharded module) atomically, keys
    prefixed with ``module.`` as upstream's DDP-wrapped saves."""
    prefix = DDP_PREFIX if ddp_prefix else ""
    source = module.state_dict() if state_dict is None else state_dict
    state_dict = {f"{prefix}{key}": value for key, value in source.items()}
    # Through a handle, torch names the archive's folder "archive" (a path would name it after the temporary), so
    # the file's bytes depend on its tensors alone.
    with atomic_output(Path(path)) as temporary, open(temporary, "wb") as handle:
        torch.save(state_dict, handle)


def save_components(
    folder: str | Path,
    modules: Mapping[str, nn.Module],
    step: int | None,
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> list[Path]:
    """Write every module of ``modules`` (names from :data:`COMPONENTS`) as its component file; ``state_dicts``
    gives the full states of sharded modules (gathered under FSDP)."""
    paths = []
    for name, module in modules.items():
        path = component_path(folder, name, step)
        full_state = state_dicts.get(name) if state_dicts is not None else None
        save_component_state_dict(module, path, COMPONENTS_BY_NAME[name].ddp_prefix, full_state)
        paths.append(path)
    return paths


def load_components(modules: Mapping[str, nn.Module], paths: Mapping[str, Path]) -> None:
    """Load each module of ``modules`` strictly from ``paths[name]``; errors name the missing or unfit file."""
    for name, module in modules.items():
        path = Path(paths[name])
        if not path.is_file():
            raise FileNotFoundError(f"Missing component file {path} (the policy has a {name!r}).")
        try:
            module.load_state_dict(load_component_state_dict(path))
        except RuntimeError as error:
            raise ValueError(f"{path.name} does not fit a {type(module).__name__}: {error}") from None
