"""Hydra's and OmegaConf's own errors (a misspelled key or recipe, a wrong type, an unparsable override) as one
line in our words, naming the key, the nearest valid spelling and the fix.

Hydra's text advises `+key=value` for a misspelled key, which adds a key nothing reads; ours never does.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing

from omegaconf import DictConfig
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def explain(exc: BaseException) -> str:
    """One line for a Hydra/OmegaConf error raised while composing a config (or reading one)."""
    from hydra.errors import MissingConfigException, OverrideParseException

    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, name = exc.missing_cfg_file.rsplit("/", 1)
        return missing_option(group, name, list(exc.options or []))
    if isinstance(exc, OverrideParseException) and (home := home_path(exc.override)):
        return home
    if isinstance(exc, OverrideParseException):
        return (
            f"cannot read the override '{exc.override}' ({first_line(exc)}); write key=value, quoting a value "
            "with spaces or brackets: 'key=\"a b\"'"
        )
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None):
        return unknown_key(cause.full_key, cause)
    if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
        return wrong_value(cause, str(exc))
    if isinstance(cause, MissingMandatoryValue) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: required, no value given (set {cause.full_key}=...)"
    if m := re.search(r"An item is already at '([^']+)'.*?prefix: '([^']+)'", str(exc), re.S):
        return f"+{m.group(2)}: {m.group(1)} already exists; write {m.group(2)}"
    return "; ".join(line for line in str(exc).splitlines()[:2] if line.strip() and "+" not in line) or first_line(exc)


def home_path(override: str) -> str | None:
    """`data.path=~/x`: the shell leaves a `~` after `key=` alone and Hydra's override grammar cannot read it."""
    key, eq, value = override.partition("=")
    if not eq or not value.startswith("~"):
        return None
    return (
        f"cannot read the override '{override}': Hydra does not expand ~ in a value; write "
        f"{key}=$HOME{value[1:]} (the shell expands it) or quote it: '{key}=\"{value}\"'"
    )


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def missing_option(group: str, name: str, options: list[str]) -> str:
    """`recipe=nosuch`: the nearest option, then every one."""
    near = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return (
        f"{group}={name}: no such {group}"
        + (f"; did you mean {group}={near[0]}?" if near else "")
        + (f"{' ' if near else '; '}available: {', '.join(options)}" if options else "")
    )


def schema_names(cause: OmegaConfBaseException) -> list[str]:
    """The keys valid where the bad one was: the schema dataclass's fields, or the node's own keys."""
    parent = getattr(cause, "parent_node", None)
    schema = getattr(cause, "object_type", None)
    names = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []
    if not names and isinstance(parent, DictConfig):
        names = [str(k) for k in parent.keys()]
    return names + (["recipe"] if "." not in str(cause.full_key) and "trainer" in names else [])


def unknown_key(full_key: str, cause: OmegaConfBaseException) -> str:
    prefix, _, key = full_key.rpartition(".")
    names = schema_names(cause)
    near = (
        difflib.get_close_matches(key, names, n=1)
        or sorted(  # `lora.rank` -> lora.r: one spelled out
            (n for n in names if key.startswith(n) or n.startswith(key)), key=len, reverse=True
        )[:1]
    )
    dotted = f"{prefix}.{near[0]}" if prefix and near else (near[0] if near else "")
    return f"{full_key}: no such key; " + (
        f"did you mean {dotted}?" if near else "`--cfg job` without this override prints every key"
    )


def expected(tp) -> str:
    """Words for a schema type: int -> 'an integer', float | None -> 'a number or null'."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return f"{expected(args[0])} or null"
    if typing.get_origin(tp) is list:
        return "a list like [a,b]"
    return TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def wrong_value(cause: ValidationError, context: str) -> str:
    """`lora.r=abc`: the key, the value and the type the schema expects."""
    key = str(cause.full_key)
    schema, name = getattr(cause, "object_type", None), key.rpartition(".")[2]
    m = re.search(rf"override {re.escape(key)}=(.*)", context) or re.match(r"Value '(.*?)'", str(cause))
    value = m.group(1) if m else "this value"
    want = ""
    if dataclasses.is_dataclass(schema):
        hints = typing.get_type_hints(schema)
        want = expected(hints[name]) if name in hints else ""
    if not want:
        return f"{key}={value}: {first_line(cause)}"
    one = want.startswith("a list") and not value.startswith("[")  # one item given bare: `benchmarks=mmlu`
    return f"{key}={value}: {key} takes {want}, not '{value}'" + (f"; write {key}=[{value}]" if one else "")
