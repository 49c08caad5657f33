"""A scripted pick-and-place oracle for LIBERO: reads ground-truth poses from the simulator and emits LIBERO's own
7-D OSC_POSE delta actions (3 translation, 3 axis-angle rotation in the world frame, gripper -1 open / +1 close).

The task's goal comes from its BDDL problem (one ``On``/``In`` predicate: object -> target). The controller runs
phases: above the grasp point -> descend -> close -> lift clear of every obstacle -> carry the object's centre over
the target -> lower until the object's bottom is ``PLACE_GAP_M`` above the target surface -> open -> retreat. A phase
ends on its tolerance, on a stall (the end effector moved less than ``STALL_M`` over ``STALL_STEPS`` steps) or on a
timeout; a missed grasp (the object rose less than ``MISSED_GRASP_M``) is retried once. The orientation is held at
the episode's start orientation. Everything is deterministic given the simulator state.

Only numpy is used; the env handle is a LIBERO ``OffScreenRenderEnv`` (``env.sim``, ``env.env``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

# OSC_POSE maps a unit action to 0.05 m of translation and 0.5 rad of rotation.
POSITION_SCALE_M = 0.05
ROTATION_SCALE_RAD = 0.5
POSITION_GAIN = 1.5
OPEN, CLOSE = -1.0, 1.0

APPROACH_HEIGHT_M = 0.10  # above the object's top before descending
RIM_INSET_M = 0.008  # bowls: grasp point inside the rim's outer edge
RIM_DEPTH_M = 0.018  # bowls: grasp point below the rim top
TOP_GRASP_DEPTH_M = 0.02  # other objects: grasp point below the object's top
LIFT_CLEARANCE_M = 0.04  # the held object's bottom above the highest obstacle while carried
PLACE_GAP_M = 0.015  # the object's bottom above the target surface when released
RETREAT_M = 0.10
CLOSE_STEPS = 12
OPEN_STEPS = 10
STALL_M = 0.0015
STALL_STEPS = 4
MISSED_GRASP_M = 0.02
MAX_GRASP_TRIES = 2
HALF_TURN_MARGIN_RAD = 1e-2  # within this of pi, the rotation axis is read from the symmetric part
COLLISION_GROUP = 0  # robosuite's collision geoms (visual geoms are group 1)

# mujoco.mjtGeom values
GEOM_SPHERE, GEOM_CAPSULE, GEOM_CYLINDER, GEOM_BOX, GEOM_MESH = 2, 3, 5, 6, 7


class Phase(enum.IntEnum):
    """The oracle's phase at a step (stored with every frame of a demonstration)."""

    APPROACH = 0
    DESCEND = 1
    CLOSE = 2
    LIFT = 3
    CARRY = 4
    LOWER = 5
    RELEASE = 6
    RETREAT = 7
    DONE = 8


@dataclass(frozen=True)
class PhaseLimits:
    tolerance_m: float
    max_steps: int


PHASE_LIMITS = {
    Phase.APPROACH: PhaseLimits(0.010, 60),
    Phase.DESCEND: PhaseLimits(0.006, 40),
    Phase.LIFT: PhaseLimits(0.015, 50),
    Phase.CARRY: PhaseLimits(0.010, 60),
    Phase.LOWER: PhaseLimits(0.006, 40),
    Phase.RETREAT: PhaseLimits(0.015, 25),
}

# (suite, task id) -> what its BDDL goal asks; the tasks this oracle was measured to solve (docs). Not listed:
# libero_spatial 9 (bowl on the wooden cabinet: 1/4 seeded resets), tasks needing a front approach (drawers).
SUPPORTED_TASKS: dict[tuple[str, int], str] = {
    ("libero_spatial", 0): "black bowl between the plate and the ramekin -> plate",
    ("libero_spatial", 3): "black bowl on the cookie box -> plate",
    ("libero_spatial", 5): "black bowl on the ramekin -> plate",
}


def supported_task_names() -> str:
    return ", ".join(f"{suite} {task_id}" for suite, task_id in SUPPORTED_TASKS)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in the world frame."""

    low: np.ndarray  # [3]
    high: np.ndarray  # [3]

    @property
    def center(self) -> np.ndarray:
        return (self.low + self.high) / 2

    @property
    def half_size(self) -> np.ndarray:
        return (self.high - self.low) / 2


def _body_subtree(model: Any, root: int) -> set[int]:
    bodies = {root}
    for body in range(model.nbody):
        parent = body
        while parent not in (0, root) and parent != model.body_parentid[parent]:
            parent = model.body_parentid[parent]
        if parent == root:
            bodies.add(body)
    return bodies


def _geom_local_points(model: Any, geom: int) -> np.ndarray:
    """Points [N, 3] in the geom's frame whose convex hull bounds the geom."""
    kind, size = int(model.geom_type[geom]), np.asarray(model.geom_size[geom])
    if kind == GEOM_MESH:
        mesh = int(model.geom_dataid[geom])
        start, count = int(model.mesh_vertadr[mesh]), int(model.mesh_vertnum[mesh])
        return np.asarray(model.mesh_vert[start : start + count], dtype=np.float64)
    if kind == GEOM_BOX:
        half = size
    elif kind == GEOM_CYLINDER:
        half = np.array([size[0], size[0], size[1]])
    elif kind == GEOM_CAPSULE:
        half = np.array([size[0], size[0], size[1] + size[0]])
    elif kind == GEOM_SPHERE:
        half = np.full(3, size[0])
    else:  # planes and height fields do not bound an object
        return np.zeros((0, 3))
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    return signs * half


class SceneGeometry:
    """World AABBs of bodies' collision geoms, from the live simulator state."""

    def __init__(self, sim: Any):
        self.sim = sim
        model = sim.model
        self._geoms: dict[int, list[int]] = {}
        self._local_points = {
            geom: _geom_local_points(model, geom)
            for geom in range(model.ngeom)
            if int(model.geom_group[geom]) == COLLISION_GROUP
        }
        self._subtrees: dict[int, set[int]] = {}

    def _body_geoms(self, body: int) -> list[int]:
        if body not in self._geoms:
            model = self.sim.model
            subtree = _body_subtree(model, body)
            self._geoms[body] = [
                geom
                for geom, points in self._local_points.items()
                if int(model.geom_bodyid[geom]) in subtree and len(points)
            ]
        return self._geoms[body]

    def body_box(self, body_name: str) -> Box:
        data = self.sim.data
        body = self.sim.model.body_name2id(body_name)
        corners = [
            self._local_points[geom] @ np.asarray(data.geom_xmat[geom]).reshape(3, 3).T + data.geom_xpos[geom]
            for geom in self._body_geoms(body)
        ]
        if not corners:
            raise ValueError(f"body {body_name!r} has no collision geoms")
        points = np.concatenate(corners)
        return Box(points.min(axis=0), points.max(axis=0))


def quat_xyzw_to_matrix(quat: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(quat, dtype=np.float64) / np.linalg.norm(quat)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_axis_angle(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrix -> axis scaled by angle (radians)."""
    angle = np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))
    if angle < 1e-8:
        return np.zeros(3)
    antisymmetric = np.array(
        [rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]]
    )  # 2 sin(angle) k
    if np.pi - angle > HALF_TURN_MARGIN_RAD:
        return antisymmetric / np.linalg.norm(antisymmetric) * angle
    # Near a half turn sin(angle) vanishes; R + I tends to 2 k k^T, whose largest column lies along the axis k.
    symmetric = rotation + np.eye(3)
    axis = symmetric[:, np.argmax(np.linalg.norm(symmetric, axis=0))]
    axis = axis / np.linalg.norm(axis)
    return (-axis if axis @ antisymmetric < 0 else axis) * angle


@dataclass(frozen=True)
class PickPlaceGoal:
    """What to move where, read from the task's BDDL goal."""

    object_name: str
    object_body: str
    target_name: str
    target_body: str | None  # the target object's root body; None when the target is a site (region)
    target_site: str | None


def read_goal(env: Any) -> PickPlaceGoal:
    """The single ``On``/``In`` goal of a LIBERO env's task, with the simulator names of its object and target."""
    goal_state = env.env.parsed_problem["goal_state"]
    if len(goal_state) != 1 or goal_state[0][0].lower() not in ("on", "in"):
        raise ValueError(f"the oracle needs one On/In goal predicate; the task's goal is {goal_state}")
    _, object_name, target_name = goal_state[0]
    objects = env.env.objects_dict
    object_body = objects[object_name].root_body
    if target_name in objects:
        return PickPlaceGoal(object_name, object_body, target_name, objects[target_name].root_body, None)
    site = env.env.object_sites_dict[target_name]
    return PickPlaceGoal(object_name, object_body, target_name, None, site.name)


class PickPlaceOracle:
    """Call :meth:`act` with each new observation; it returns the next action and the phase that chose it."""

    def __init__(self, env: Any, obs: dict[str, np.ndarray]):
        self.env = env
        self.goal = read_goal(env)
        self.geometry = SceneGeometry(env.sim)
        self.hold_rotation = quat_xyzw_to_matrix(obs["robot0_eef_quat"])
        self.obstacle_bodies = [
            obj.root_body for name, obj in env.env.objects_dict.items() if name != self.goal.object_name
        ]
        self.phase = Phase.APPROACH
        self.phase_steps = 0
        self.recent_positions: list[np.ndarray] = []
        self.grasp_tries = 0
        self.gripper = OPEN
        self.grasp_point = self._grasp_point()
        self.object_z_at_grasp = 0.0
        self.lift_z = 0.0
        self.in_hand_offset = np.zeros(3)
        self.release_point = np.zeros(3)
        self.retreat_z = 0.0

    # --- geometry -------------------------------------------------------------------------------------------------
    def _object_box(self) -> Box:
        return self.geometry.body_box(self.goal.object_body)

    def _target_surface(self) -> tuple[np.ndarray, float]:
        """(x, y) of the target's centre and the height of its surface."""
        if self.goal.target_body is not None:
            box = self.geometry.body_box(self.goal.target_body)
            return box.center[:2], float(box.high[2])
        site = self.env.sim.data.site_xpos[self.env.sim.model.site_name2id(self.goal.target_site)]
        return np.asarray(site[:2]), float(site[2])

    def _grasp_point(self) -> np.ndarray:
        box = self._object_box()
        if "bowl" not in self.goal.object_name:
            return np.array([*box.center[:2], box.high[2] - TOP_GRASP_DEPTH_M])
        # Bowls are wider than the open gripper: grasp the rim where the fingers (closing along world y) have room.
        obstacles = [self.geometry.body_box(body) for body in self.obstacle_bodies]
        candidates = []
        for side in (-1.0, 1.0):
            point = np.array(
                [box.center[0], box.center[1] + side * (box.half_size[1] - RIM_INSET_M), box.high[2] - RIM_DEPTH_M]
            )
            clearance = min(
                (
                    np.linalg.norm(np.maximum(0, np.maximum(o.low[:2] - point[:2], point[:2] - o.high[:2])))
                    for o in obstacles
                ),
                default=np.inf,
            )
            candidates.append((clearance, side, point))
        return max(candidates, key=lambda candidate: (candidate[0], candidate[1]))[2]

    # --- control --------------------------------------------------------------------------------------------------
    def _action(self, eef: np.ndarray, eef_quat: np.ndarray, target: np.ndarray) -> np.ndarray:
        translation = np.clip(POSITION_GAIN * (target - eef) / POSITION_SCALE_M, -1.0, 1.0)
        rotation_error = matrix_to_axis_angle(self.hold_rotation @ quat_xyzw_to_matrix(eef_quat).T)
        rotation = np.clip(rotation_error / ROTATION_SCALE_RAD, -1.0, 1.0)
        return np.concatenate([translation, rotation, [self.gripper]])

    def _enter(self, phase: Phase) -> None:
        self.phase, self.phase_steps = phase, 0
        self.recent_positions = []

    def _reached(self, eef: np.ndarray, target: np.ndarray) -> bool:
        """Tolerance met, stalled, or timed out in the current phase."""
        limits = PHASE_LIMITS[self.phase]
        if np.linalg.norm(target - eef) < limits.tolerance_m or self.phase_steps >= limits.max_steps:
            return True
        history = self.recent_positions[-(STALL_STEPS + 1) :]
        return len(history) > STALL_STEPS and np.linalg.norm(history[-1] - history[0]) < STALL_M

    def _target(self, eef: np.ndarray) -> np.ndarray:
        """The end-effector target of the current phase (may advance the phase)."""
        if self.phase == Phase.APPROACH:
            top = self._object_box().high[2]
            return np.array([*self.grasp_point[:2], top + APPROACH_HEIGHT_M])
        if self.phase in (Phase.DESCEND, Phase.CLOSE):
            return self.grasp_point
        if self.phase == Phase.LIFT:
            return np.array([*self.grasp_point[:2], self.lift_z])
        target_xy, surface = self._target_surface()
        if self.phase == Phase.CARRY:
            return np.array([*(target_xy - self.in_hand_offset[:2]), self.lift_z])
        if self.phase == Phase.LOWER:
            bottom = self._object_box().low[2]
            return np.array([*(target_xy - self.in_hand_offset[:2]), eef[2] - (bottom - surface - PLACE_GAP_M)])
        if self.phase == Phase.RELEASE:
            return self.release_point
        return np.array([*self.release_point[:2], self.retreat_z])

    def _advance(self, eef: np.ndarray, target: np.ndarray) -> None:
        phase = self.phase
        if phase == Phase.APPROACH and self._reached(eef, target):
            self._enter(Phase.DESCEND)
        elif phase == Phase.DESCEND and self._reached(eef, target):
            self.gripper = CLOSE
            self.object_z_at_grasp = float(self._object_box().low[2])
            self._enter(Phase.CLOSE)
        elif phase == Phase.CLOSE and self.phase_steps >= CLOSE_STEPS:
            box = self._object_box()
            highest = max((self.geometry.body_box(body).high[2] for body in self.obstacle_bodies), default=0.0)
            _, surface = self._target_surface()
            clearance_bottom = max(highest, surface) + LIFT_CLEARANCE_M
            self.lift_z = max(eef[2] + (clearance_bottom - box.low[2]), eef[2] + MISSED_GRASP_M * 2)
            self._enter(Phase.LIFT)
        elif phase == Phase.LIFT and self._reached(eef, target):
            box = self._object_box()
            if box.low[2] - self.object_z_at_grasp < MISSED_GRASP_M:
                self.grasp_tries += 1
                if self.grasp_tries >= MAX_GRASP_TRIES:
                    self._enter(Phase.DONE)
                    return
                self.gripper = OPEN
                self.grasp_point = self._grasp_point()
                self._enter(Phase.APPROACH)
                return
            self.in_hand_offset = box.center - eef
            self._enter(Phase.CARRY)
        elif phase == Phase.CARRY and self._reached(eef, target):
            self._enter(Phase.LOWER)
        elif phase == Phase.LOWER and self._reached(eef, target):
            self.gripper = OPEN
            self.release_point = eef.copy()
            self._enter(Phase.RELEASE)
        elif phase == Phase.RELEASE and self.phase_steps >= OPEN_STEPS:
            self.retreat_z = float(eef[2]) + RETREAT_M
            self._enter(Phase.RETREAT)
        elif phase == Phase.RETREAT and self._reached(eef, target):
            self._enter(Phase.DONE)

    def act(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, Phase]:
        """The next action and the phase that chose it; phase ``DONE`` means the script has ended."""
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        self.recent_positions.append(eef)
        while True:
            phase = self.phase
            target = self._target(eef)
            self._advance(eef, target)
            if self.phase == phase or self.phase == Phase.DONE:
                break
        if self.phase == Phase.DONE:
            return np.array([0.0] * 6 + [OPEN]), Phase.DONE
        target = self._target(eef)
        self.phase_steps += 1
        return self._action(eef, obs["robot0_eef_quat"], target), self.phase
