"""How an option is declared: one dataclass field whose metadata carries its flags, help
text and parser. The command line, the config-file reader and the rootless helper's
wire format are all generated from those declarations, so a flag and its file key can
never drift apart (the classic hand-written ``if args.x is not None: cfg.x = args.x``
chain is where such bugs live).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

from wsnic_trio.errors import ConfigError

__all__ = [
    "OptionSpec",
    "convert",
    "default_words",
    "help_text",
    "long_flag",
    "option",
    "options_of",
]


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """How one Config field appears on the command line and in the config file."""

    flags: tuple[str, ...]
    help: str
    parse: Callable[[str], Any] = str
    kind: Literal["value", "count", "flag", "list"] = "value"
    metavar: str | None = None
    # The default in words, for --help and the user guide, where the value alone says
    # nothing or misleads (None for "a file found at start-up", () for "the bridge").
    default_text: str | None = None
    #: A repeatable option whose values may themselves contain commas (--lan): each
    #: value is parsed whole instead of split at commas.
    split: bool = True


def default_words(spec: OptionSpec, value: Any) -> str | None:
    """The default as --help states it (once), or None when there is nothing to state.

    A flag is off and a counter is 0 unless given: saying so on every one of them is
    noise. An absent value (None, an empty list) means something only in words.
    """
    if spec.default_text is not None:
        return spec.default_text
    if spec.kind in ("flag", "count") or value is None or value == ():
        return None
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def help_text(spec: OptionSpec, value: Any) -> str:
    """The --help line of one option: its help, whether it repeats, and its default."""
    text = spec.help
    if spec.kind == "list":
        text += " (repeatable)"
    words = default_words(spec, value)
    if words is not None:
        text += f" (default: {words})"
    return text


def option(default: Any, *flags: str, help: str, **kw: Any) -> Any:
    spec = OptionSpec(flags=flags, help=help, **kw)
    return dataclasses.field(default=default, metadata={"option": spec})


def options_of(cls: type) -> dict[str, OptionSpec]:
    """The options a settings dataclass declares, in declaration order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(cls)}


def convert(spec: OptionSpec, raw: Any, where: str) -> Any:
    if spec.kind == "list" and not spec.split:
        whole = raw if isinstance(raw, list | tuple) else [raw]
        parsed = []
        for item in whole:
            if isinstance(item, str) and not item.strip():
                continue
            try:
                parsed.append(spec.parse(item.strip() if isinstance(item, str) else item))
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{where}: {exc}") from None
        return tuple(parsed)
    if spec.kind == "list":
        # Repeatable options: a TOML list, a comma-separated string in a wsnic file, or the
        # list argparse collects from repeated flags (each of which may itself be a comma
        # list: -d 1.1.1.1,9.9.9.9). An empty string means "none".
        items = raw if isinstance(raw, list | tuple) else [raw]
        out = []
        for text in (part.strip() for item in items for part in str(item).split(",")):
            if text:
                try:
                    out.append(spec.parse(text))
                except (ValueError, TypeError) as exc:
                    raise ConfigError(f"{where}: {exc}") from None
        return tuple(out)
    if spec.kind == "flag":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: {raw!r} is not a boolean (true/false)")
    if isinstance(raw, bool):
        raise ConfigError(f"{where}: {raw!r} is not a valid value")
    try:
        return spec.parse(str(raw).strip())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def long_flag(spec: OptionSpec) -> str:
    """The name errors use for an option: its first long flag (--dgram, not --vfkit)."""
    return next(f for f in spec.flags if f.startswith("--"))
