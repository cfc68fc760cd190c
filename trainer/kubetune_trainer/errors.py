"""The one exception the trainer raises on purpose: a failure with a reason code the operator shows as-is."""

from __future__ import annotations

from kubetune_api.conditions import Reason


class TrainerFailure(Exception):
    """A failure that stops the run, with a reason from kubetune_api.conditions and a message naming the thing."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[Reason, str]]:  # crosses from a tokenizing process to its parent
        return (TrainerFailure, (self.reason, self.message))

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"
