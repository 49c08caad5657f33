"""The observation every policy takes, kept apart from the model code so simulator workers need none of it."""

from __future__ import annotations

import numpy as np

# "full_image" and wrist images (keys containing "wrist"): uint8 (H, W, 3) frames; "state": the raw proprio vector.
Observation = dict[str, np.ndarray]
