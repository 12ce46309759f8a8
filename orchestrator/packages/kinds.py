"""The enumerations of the package format, shared by the model, its validation and the engine."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class VariableType(StrEnum):
    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    LIST = "list"
    DICT = "dict"

    def accepts(self, value: Any) -> bool:
        """True if ``value`` is of this type (bool is not an int; an int is a float)."""
        if self is VariableType.INT:
            return isinstance(value, int) and not isinstance(value, bool)
        if self is VariableType.FLOAT:
            return isinstance(value, int | float) and not isinstance(value, bool)
        expected = {"str": str, "bool": bool, "list": list, "dict": dict}[self.value]
        return isinstance(value, expected)


class CheckpointUsage(StrEnum):
    """SSIS ``CheckpointUsage``: whether a run starts from an existing checkpoint."""

    NEVER = "never"
    IF_EXISTS = "if_exists"
    ALWAYS = "always"
