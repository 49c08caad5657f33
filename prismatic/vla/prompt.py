"""The OpenVLA prompt template (``PurePromptBuilder`` in upstream OpenVLA)."""

from __future__ import annotations

PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"


def build_prompt(instruction: str, action_string: str | None = None) -> str:
    """Prompt for an instruction; with ``action_string`` the training target ``" {actions}</s>"`` is appended.

    The instruction is lower-cased and stripped as upstream does. Without an action string this is the
    inference prompt (``predict_action`` appends the empty token 29871 itself).
    """
    prompt = PROMPT_TEMPLATE.format(instruction=instruction.lower().strip())
    if action_string is None:
        return prompt
    return f"{prompt} {action_string}</s>"
