"""The one base class of every error a user can fix: entry points catch `UserError` and print one line.

Each stage defines its own subclass where the knowledge lives (`data.DataError`, `ship.merge.MergeError`,
`planning.report.PlanError`, ...); `runtime.console.exit_cleanly` catches this base without importing them.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input a user can fix: the message names the key, file or value, and the fix."""


class ConfigError(UserError, ValueError):
    """Every problem found in a config, raised once, before any weight loads."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))
