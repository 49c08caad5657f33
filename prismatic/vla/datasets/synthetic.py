"""A synthetic, learnable LIBERO-format task: "move the gripper to the <colour> block".

A square table (world coordinates x, y in [-1, 1], z up) holds two blocks of different colours; the gripper
starts at a random place above the table. The agentview camera looks straight down on the whole table (the
gripper is a grey disk that grows with height); the wrist camera looks down from the gripper, so the blocks
move in its view as the gripper moves. The expert action is a function of what the images show and of the
instruction: the planar action points from the gripper to the named block (saturating at 1), the gripper
descends once above it and closes on it. Distractor colour, positions and the start pose vary per episode.

With ``with_depth`` the episodes also carry each camera's metric depth and pinhole intrinsics
(``datasets.geometry``): the agentview camera hangs ``AGENTVIEW_CAMERA_HEIGHT`` above the table centre, the wrist
camera ``WRIST_CAMERA_OFFSET`` above the gripper; the table is at height 0, the floor around it at ``FLOOR_HEIGHT``,
block tops at ``2 * BLOCK_HALF_SIZE`` and the gripper (disk or fingers) at its own height. (The colour images are
drawn orthographically; the pinhole intrinsics agree with them on the table plane.)

Actions follow LIBERO's raw convention (EEF deltas in [-1, 1]; gripper -1 open, +1 close) and the state is
LIBERO's 8-D layout (EEF position 3, axis-angle 3, gripper joint positions 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prismatic.vla.datasets.writer import LiberoEpisode, write_libero_rlds

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 40),
}
TABLE_COLOUR = (196, 170, 130)
GRID_COLOUR = (170, 145, 110)
FLOOR_COLOUR = (60, 60, 70)
GRIPPER_COLOUR = (90, 90, 90)
INSTRUCTION_TEMPLATE = "move the gripper to the {colour} block"

TABLE_HALF_EXTENT = 1.0
AGENTVIEW_HALF_EXTENT = 1.2  # the agentview camera sees [-1.2, 1.2]^2
WRIST_HALF_EXTENT = 0.5  # the wrist camera sees 0.5 around the gripper
BLOCK_HALF_SIZE = 0.12
GRID_SPACING = 0.25
HOVER_HEIGHT, GRASP_HEIGHT = 0.4, 0.05
ACTION_GAIN_DISTANCE = 0.15  # distance at which the planar action saturates at 1
DESCEND_RADIUS, GRASP_RADIUS = 0.1, 0.05
GRIPPER_OPEN_QPOS = 0.04
GRIPPER_AXIS_ANGLE = (np.pi, 0.0, 0.0)  # pointing down, fixed
AGENTVIEW_CAMERA_HEIGHT = 2.0
WRIST_CAMERA_OFFSET = 0.5  # above the gripper; with the wrist view's half extent 0.5 * (0.5 + z): a pinhole
FLOOR_HEIGHT = -0.5
FINGER_DEPTH = 0.45  # the fingers' distance from the wrist camera


@dataclass
class SyntheticLiberoConfig:
    """Where and how big the synthetic dataset is (the flags of ``vla-scripts/make_synthetic_libero.py``)."""

    data_root_dir: Path = Path("data/synthetic_libero")
    dataset_name: str = "libero_spatial_no_noops"  # any registry name, so training flags stay the same
    num_episodes: int = 20
    episode_length: int = 40
    image_size: int = 256
    step_size: float = 0.075  # world units moved per unit action and step
    seed: int = 0
    overwrite: bool = False
    with_depth: bool = False  # also store each camera's depth and intrinsics (for --teacher geometry)


class ReachScene:
    """State, rendering, expert and dynamics of one episode of the synthetic task."""

    def __init__(self, rng: np.random.Generator, image_size: int = 256, step_size: float = 0.075) -> None:
        self.image_size, self.step_size = image_size, step_size
        target_colour, distractor_colour = rng.choice(sorted(COLOURS), size=2, replace=False)
        self.target_colour = str(target_colour)
        self.blocks = {self.target_colour: rng.uniform(-0.8, 0.8, size=2)}
        while True:  # keep the blocks apart so the instruction is unambiguous
            distractor_xy = rng.uniform(-0.8, 0.8, size=2)
            if np.linalg.norm(distractor_xy - self.blocks[self.target_colour]) > 0.5:
                break
        self.blocks[str(distractor_colour)] = distractor_xy
        self.eef = np.array([*rng.uniform(-0.8, 0.8, size=2), HOVER_HEIGHT])
        self.gripper_qpos = GRIPPER_OPEN_QPOS
        self.gripper_closing = False

    @property
    def instruction(self) -> str:
        return INSTRUCTION_TEMPLATE.format(colour=self.target_colour)

    @property
    def state(self) -> np.ndarray:
        """[8] float32: EEF position, axis-angle, gripper finger positions (+q, -q)."""
        return np.array([*self.eef, *GRIPPER_AXIS_ANGLE, self.gripper_qpos, -self.gripper_qpos], np.float32)

    @property
    def joint_state(self) -> np.ndarray:
        """[7] float32: a smooth stand-in for arm joint angles."""
        x, y, z = self.eef
        return np.array([np.arctan2(y, x + 2.0), 0.5 * z, x, y, z, 0.0, self.gripper_qpos], np.float32)

    @property
    def success(self) -> bool:
        planar_distance = np.linalg.norm(self.eef[:2] - self.blocks[self.target_colour])
        return bool(planar_distance < GRASP_RADIUS and self.eef[2] < 2 * GRASP_HEIGHT and self.gripper_closing)

    def expert_action(self) -> np.ndarray:
        """[7] float32 raw LIBERO action towards the named block."""
        offset = self.blocks[self.target_colour] - self.eef[:2]
        distance = float(np.linalg.norm(offset))
        planar = np.clip(offset / ACTION_GAIN_DISTANCE, -1.0, 1.0)
        goal_height = GRASP_HEIGHT if distance < DESCEND_RADIUS else HOVER_HEIGHT
        vertical = np.clip((goal_height - self.eef[2]) / ACTION_GAIN_DISTANCE, -1.0, 1.0)
        close = self.gripper_closing or (distance < GRASP_RADIUS and self.eef[2] < 2 * GRASP_HEIGHT)
        return np.array([*planar, vertical, 0.0, 0.0, 0.0, 1.0 if close else -1.0], np.float32)

    def step(self, action: np.ndarray) -> None:
        """Moves the gripper by ``step_size * action[:3]``; a positive gripper action closes it."""
        self.eef = self.eef + self.step_size * np.clip(np.asarray(action[:3], np.float64), -1.0, 1.0)
        self.eef[:2] = np.clip(self.eef[:2], -TABLE_HALF_EXTENT, TABLE_HALF_EXTENT)
        self.eef[2] = np.clip(self.eef[2], 0.0, 1.0)
        self.gripper_closing = self.gripper_closing or float(action[6]) > 0.0
        if self.gripper_closing:
            self.gripper_qpos = max(self.gripper_qpos - 0.01, 0.0)

    def render_agentview(self) -> np.ndarray:
        """[S, S, 3] uint8 top-down view of the whole table, gripper drawn as a disk."""
        x, y = self._world_grid(np.zeros(2), AGENTVIEW_HALF_EXTENT)
        image = self._render_table_and_blocks(x, y)
        image[self._gripper_disk(x, y)] = GRIPPER_COLOUR
        return image

    def render_agentview_depth(self) -> np.ndarray:
        """[S, S] float32 metric depth of the agentview camera."""
        x, y = self._world_grid(np.zeros(2), AGENTVIEW_HALF_EXTENT)
        heights = self._surface_heights(x, y)
        heights[self._gripper_disk(x, y)] = self.eef[2]
        return (AGENTVIEW_CAMERA_HEIGHT - heights).astype(np.float32)

    def render_wrist(self) -> np.ndarray:
        """[S, S, 3] uint8 view looking down from the gripper, with its two fingers at the bottom."""
        x, y = self._world_grid(self.eef[:2], self._wrist_half_extent)
        image = self._render_table_and_blocks(x, y)
        image[self._fingers()] = GRIPPER_COLOUR
        return image

    def render_wrist_depth(self) -> np.ndarray:
        """[S, S] float32 metric depth of the wrist camera."""
        x, y = self._world_grid(self.eef[:2], self._wrist_half_extent)
        depth = self.eef[2] + WRIST_CAMERA_OFFSET - self._surface_heights(x, y)
        depth[self._fingers()] = FINGER_DEPTH
        return depth.astype(np.float32)

    def intrinsics(self, half_extent_at_unit_depth: float) -> np.ndarray:
        """[3, 3] float32 pinhole intrinsics of a camera centred on the image seeing ``+-half_extent`` at depth 1."""
        focal = self.image_size / 2 / half_extent_at_unit_depth
        centre = (self.image_size - 1) / 2
        return np.array([[focal, 0, centre], [0, focal, centre], [0, 0, 1]], np.float32)

    @property
    def agentview_intrinsics(self) -> np.ndarray:
        return self.intrinsics(AGENTVIEW_HALF_EXTENT / AGENTVIEW_CAMERA_HEIGHT)

    @property
    def wrist_intrinsics(self) -> np.ndarray:
        return self.intrinsics(WRIST_HALF_EXTENT)

    @property
    def _wrist_half_extent(self) -> float:
        return WRIST_HALF_EXTENT * (WRIST_CAMERA_OFFSET + self.eef[2])  # the view widens as the gripper rises

    def _gripper_disk(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        radius = 0.05 + 0.1 * self.eef[2]
        return (x - self.eef[0]) ** 2 + (y - self.eef[1]) ** 2 < radius**2

    def _fingers(self) -> np.ndarray:
        columns = np.arange(self.image_size)[None, :] / self.image_size - 0.5  # [1, S] in [-0.5, 0.5)
        rows = np.arange(self.image_size)[:, None] / self.image_size  # [S, 1] in [0, 1)
        finger_offset = 0.08 + 2.0 * self.gripper_qpos
        return (rows > 0.75) & (np.abs(np.abs(columns) - finger_offset) < 0.04)

    def _world_grid(self, center: np.ndarray, half_extent: float) -> tuple[np.ndarray, np.ndarray]:
        """World (x, y) of every pixel centre, x to the right, y up: two [S, S] arrays."""
        coords = ((np.arange(self.image_size) + 0.5) / self.image_size * 2.0 - 1.0) * half_extent
        return np.meshgrid(center[0] + coords, center[1] - coords)

    def _render_table_and_blocks(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        image = np.empty((*x.shape, 3), np.uint8)
        image[:] = FLOOR_COLOUR
        on_table = _on_table(x, y)
        image[on_table] = TABLE_COLOUR
        near_line = lambda v: np.abs((v + GRID_SPACING / 2) % GRID_SPACING - GRID_SPACING / 2) < 0.01
        image[on_table & (near_line(x) | near_line(y))] = GRID_COLOUR
        for colour, inside in self._block_masks(x, y).items():
            image[inside] = COLOURS[colour]
        return image

    def _surface_heights(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """World height of the surface under every pixel: floor, table or block top."""
        heights = np.where(_on_table(x, y), 0.0, FLOOR_HEIGHT)
        for inside in self._block_masks(x, y).values():
            heights[inside] = 2 * BLOCK_HALF_SIZE
        return heights

    def _block_masks(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        return {
            colour: (np.abs(x - block_x) < BLOCK_HALF_SIZE) & (np.abs(y - block_y) < BLOCK_HALF_SIZE)
            for colour, (block_x, block_y) in self.blocks.items()
        }


def _on_table(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (np.abs(x) <= TABLE_HALF_EXTENT) & (np.abs(y) <= TABLE_HALF_EXTENT)


def generate_synthetic_episodes(config: SyntheticLiberoConfig) -> Iterator[LiberoEpisode]:
    """Expert demonstrations of the synthetic task, one at a time (deterministic in ``config.seed``)."""
    rng = np.random.default_rng(config.seed)
    for index in range(config.num_episodes):
        scene = ReachScene(rng, config.image_size, config.step_size)
        images, wrist_images, states, joint_states, actions = [], [], [], [], []
        depths, wrist_depths = [], []
        for _ in range(config.episode_length):
            images.append(scene.render_agentview())
            wrist_images.append(scene.render_wrist())
            if config.with_depth:
                depths.append(scene.render_agentview_depth())
                wrist_depths.append(scene.render_wrist_depth())
            states.append(scene.state)
            joint_states.append(scene.joint_state)
            actions.append(scene.expert_action())
            scene.step(actions[-1])
        yield LiberoEpisode(
            images=np.stack(images),
            wrist_images=np.stack(wrist_images),
            states=np.stack(states),
            joint_states=np.stack(joint_states),
            actions=np.stack(actions),
            language_instruction=scene.instruction,
            file_path=f"synthetic/seed{config.seed}/episode_{index:05d}",
            **(
                dict(
                    depths=np.stack(depths),
                    wrist_depths=np.stack(wrist_depths),
                    intrinsics=np.stack([scene.agentview_intrinsics] * config.episode_length),
                    wrist_intrinsics=np.stack([scene.wrist_intrinsics] * config.episode_length),
                )
                if config.with_depth
                else {}
            ),
        )


def write_synthetic_libero(config: SyntheticLiberoConfig) -> Path:
    """Writes the synthetic task as a LIBERO RLDS dataset; returns its version folder."""
    return write_libero_rlds(
        generate_synthetic_episodes(config),
        config.data_root_dir,
        config.dataset_name,
        image_size=config.image_size,
        overwrite=config.overwrite,
        with_depth=config.with_depth,
    )
