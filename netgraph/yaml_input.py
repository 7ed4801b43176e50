"""Bounded YAML input: the one reader of every YAML file the program reads (run configs,
hardware configs).

`yaml.safe_load` alone lets a corrupted or hostile file exhaust the machine or hide a
mistake: aliases that expand exponentially (a 1 KiB "billion laughs" file becomes
gigabytes of lists), nesting that overflows PyYAML's recursive composer (RecursionError),
files of any size, and duplicate keys of which the last silently wins. `read_yaml`
refuses each of them with one line naming the file (and the line, where there is one),
raised as the caller's error class (ConfigError, HardwareConfigError). Everything else is
`safe_load`: plain data only, no Python object tags.

Anchors and aliases are refused, not bounded: no config needs them (a run config or a
hardware config is a few dozen values, and every shipped one writes them out), whereas a
bound on their expansion would still let a small file stand for a large one and would
make the error depend on a count the user never sees. Merge keys (`<<`) go with them:
they exist to merge an alias.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from netgraph.errors import ConfigError, StbpError, one_line
from netgraph.limits import MAX_YAML_BYTES, MAX_YAML_DEPTH, format_bytes

MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """What the loader refuses, at a position in the text (`mark`, 0-based line)."""

    def __init__(self, mark: yaml.Mark | None, message: str):
        super().__init__(message)
        self.mark, self.message = mark, message


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader (pure Python: the C loader's composer cannot be overridden) that refuses
    anchors, aliases, merge keys, duplicate keys and nesting deeper than MAX_YAML_DEPTH.

    The depth is checked before each collection is composed, so the composer's recursion
    never goes deeper than MAX_YAML_DEPTH collections (a few frames each), whatever the file
    holds; the scanner and the parser below it are iterative."""

    def __init__(self, text: str):
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(event.start_mark, "YAML aliases and anchors are not supported: write the values out")
        opens = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if opens and self._depth >= MAX_YAML_DEPTH:
            raise _Refused(event.start_mark, f"nesting deeper than {MAX_YAML_DEPTH} levels (the limit for a "
                                             "YAML file)")
        self._depth += opens
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= opens

    def construct_mapping(self, node, deep=False):
        self._refuse_repeated_keys(node)
        return super().construct_mapping(node, deep)

    def _refuse_repeated_keys(self, node: yaml.MappingNode) -> None:
        """Compares keys as constructed ('1' and '01' are the same integer key); a key that is
        a collection is left to SafeConstructor, which refuses it as unhashable."""
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                raise _Refused(key_node.start_mark, "YAML merge keys (<<) are not supported: write the values out")
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise _Refused(key_node.start_mark, f"duplicate key {str(key)[:80]!r} (each key may appear once "
                                                    "in a mapping)")
            seen.add(key)


def _read_text(path: Path, what: str, error: type[StbpError]) -> str:
    """The file as UTF-8 text, refused above MAX_YAML_BYTES before it is read whole."""
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise error(f"{path}: the {what} is {size:,} bytes, more than the limit of {MAX_YAML_BYTES:,} "
                        f"({format_bytes(MAX_YAML_BYTES)}) for a YAML file")
        with open(path, "rb") as handle:
            data = handle.read(MAX_YAML_BYTES + 1)  # a device or a growing file may report no size
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror or exc}") from exc
    if len(data) > MAX_YAML_BYTES:
        raise error(f"{path}: the {what} is more than the limit of {MAX_YAML_BYTES:,} bytes "
                    f"({format_bytes(MAX_YAML_BYTES)}) for a YAML file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(f"{path}: line {line}: the {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                    f"{exc.start}); save it as UTF-8") from None



def _yaml_error_line(exc: yaml.YAMLError, text: str) -> str:
    """`not valid YAML at line N, column M: <what PyYAML says>` on one line."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        return f"not valid YAML at line {line}: character #x{exc.character:04x} is not allowed ({exc.reason})"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        parts = [part for part in (exc.context, exc.problem) if part]
        return f"not valid YAML{where}: {one_line('; '.join(parts))}"
    return f"not valid YAML: {one_line(exc)}"


def read_yaml(path: str | Path, what: str, error: type[StbpError] = ConfigError) -> Any:
    """The one YAML document in `path` as plain data (dicts, lists, str, int, float, bool,
    None, dates), as yaml.safe_load gives it, within the bounds of the module docstring.

    what: what the file is, for messages ('run config', 'hardware config').
    error: the StbpError subclass raised for every refusal; its message is one line naming
    the file (and the line where there is one)."""
    path = Path(path)
    text = _read_text(path, what, error)
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader refuses control characters at once
        return loader.get_single_data()
    except _Refused as exc:
        line = f"line {exc.mark.line + 1}: " if exc.mark is not None else ""
        raise error(f"{path}: {line}{exc.message}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: {_yaml_error_line(exc, text)}") from exc
    except (ValueError, OverflowError) as exc:  # a scalar its constructor refuses: a 5,000-digit int, a 13th month
        raise error(f"{path}: a value cannot be read: {one_line(exc)}") from exc
    finally:
        if loader is not None:
            loader.dispose()
