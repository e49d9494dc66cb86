"""``import_from_string("package.module:Attribute")``: how config names code (policies, providers)."""

import importlib
from typing import Any


class ImportFromStringError(Exception):
    """The name cannot be imported; the message says which part is wrong."""


def import_from_string(name: str) -> Any:
    module_name, _, attrs = name.partition(":")
    if not module_name or not attrs:
        raise ImportFromStringError(f'Import string "{name}" must be in the form "<module>:<attribute>".')
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise
        raise ImportFromStringError(f'Could not import module "{module_name}".') from None
    obj: Any = module
    try:
        for attr in attrs.split("."):
            obj = getattr(obj, attr)
    except AttributeError:
        raise ImportFromStringError(f'Attribute "{attrs}" not found in module "{module_name}".') from None
    return obj
