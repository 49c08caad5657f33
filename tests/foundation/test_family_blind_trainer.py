"""The fine-tuning loop reaches a model family only through its training interface: ``trainer.py`` has no branch on
the family or the head and imports no family's code, and every trainable family is one registry entry that has the
interface's parts (a static scan, as the layer rules)."""

from __future__ import annotations

import ast
from pathlib import Path

from prismatic.training.families import TRAINING_FAMILIES
from prismatic.training.training_family import TrainingFamily
from prismatic.vla.policy_config import MODEL_FAMILIES

from .test_layers import REPO_ROOT, imports_of

TRAINER = Path("prismatic/training/trainer.py")
# Names a branch on the family or on the head would read.
FAMILY_WORDS = ("model_family", "family_name", "pi0", "oft", "action_head", "l1_regression", "diffusion", "film")
FAMILY_MODULES = ("prismatic.models", "prismatic.training.oft_training", "prismatic.training.pi0_training")


def branch_words(source: str) -> list[tuple[int, str]]:
    """(line, name) of every name, attribute and string in the conditions of ``source``'s branches."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert)):
            condition = node.test
        elif isinstance(node, ast.comprehension):
            condition = ast.BoolOp(ast.And(), node.ifs)
        elif isinstance(node, ast.Match):
            condition = node.subject
        else:
            continue
        for part in ast.walk(condition):
            if isinstance(part, ast.Name):
                found.append((part.lineno, part.id))
            elif isinstance(part, ast.Attribute):
                found.append((part.lineno, part.attr))
            elif isinstance(part, ast.Constant) and isinstance(part.value, str):
                found.append((part.lineno, part.value))
    return found


def family_branches(source: str) -> list[tuple[int, str]]:
    return [(line, word) for line, word in branch_words(source) if any(w in word.lower() for w in FAMILY_WORDS)]


def test_the_trainer_never_branches_on_the_family_or_the_head():
    assert family_branches((REPO_ROOT / TRAINER).read_text()) == []


def test_the_trainer_imports_no_family_code():
    offending = [str(found) for found in imports_of(TRAINER) if found.target.startswith(FAMILY_MODULES)]
    assert offending == []


def test_the_scan_finds_a_family_branch_and_a_head_branch():
    planted = "if cfg.model_family == 'pi0':\n    pass\nx = [h for h in heads if model.action_head is None]\n"
    assert family_branches(planted) == [(1, "model_family"), (1, "pi0"), (3, "action_head")]


def test_every_trainable_family_is_one_registry_entry_with_the_training_parts():
    assert set(TRAINING_FAMILIES) == {"openvla-oft", "pi0"}
    for name, family in TRAINING_FAMILIES.items():
        assert family.family_name == name and name in MODEL_FAMILIES
        assert isinstance(family, TrainingFamily)
