"""Reading manifest bytes into documents, safely: bounded size, depth and alias expansion, strict UTF-8, no duplicate keys."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

MAX_BYTES = 1024 * 1024  # a FineTuneJob is a few KiB; the API server itself takes at most ~1.5 MiB per object
MAX_DEPTH = 64  # a FineTuneJob nests about 6 levels
MAX_NODES = 100_000  # after expanding aliases, per document
MAX_DOCUMENTS = 1000

_BaseLoader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ManifestError(ValueError):
    """The bytes are not a readable YAML manifest; the message says where and why."""


class _Loader(_BaseLoader):  # type: ignore[misc]
    """SafeLoader that reads floats like 1e-4 (YAML 1.2, as kubectl does) and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes strings _Loader would read as floats, so dump then load round-trips."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and all(c == "\n" or c.isprintable() for c in value) else None  # config files stay readable
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)

_FLOAT_12 = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789"))
_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)


def dump(value: Any) -> str:
    """YAML that `load` reads back to the same value."""
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False)


@dataclass(frozen=True)
class Document:
    """One YAML document of a manifest file."""

    index: int  # 0-based position in the file
    line: int  # 1-based line where it starts
    body: Any


def decode(data: bytes) -> str:
    """Strict UTF-8 (a leading BOM is allowed), with the size limit."""
    if len(data) > MAX_BYTES:
        raise ManifestError(f"file is {len(data)} bytes; at most {MAX_BYTES} bytes are read")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}") from None


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"


def _check_shape(text: str) -> None:
    """Walk the event stream (iterative, so deep nesting cannot overflow a stack) to bound depth and documents."""
    depth = 0
    documents = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ManifestError(f"nesting deeper than {MAX_DEPTH} levels at {_where(event.start_mark)}")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > MAX_DOCUMENTS:
                raise ManifestError(f"more than {MAX_DOCUMENTS} documents in one file")


def _expanded_size(node: yaml.Node, memo: dict[int, int], stack: set[int]) -> int:
    """Nodes the document would have with every alias expanded; refuses recursive aliases."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in stack:
        raise ManifestError(f"recursive alias at {_where(node.start_mark)}")
    stack.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo, stack) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo, stack) + _expanded_size(v, memo, stack) for k, v in node.value)
    stack.discard(key)
    if size > MAX_NODES:
        raise ManifestError(f"document expands to more than {MAX_NODES} nodes (alias bomb?) at {_where(node.start_mark)}")
    memo[key] = size
    return size


def load(data: bytes) -> list[Document]:
    """Every non-empty document in the bytes. Raises ManifestError with a position for anything unreadable."""
    text = decode(data)
    try:
        _check_shape(text)
        loader = _Loader(text)
        documents: list[Document] = []
        try:
            index = 0
            while loader.check_node():
                node = loader.get_node()
                if node is not None:
                    _expanded_size(node, {}, set())
                    body = loader.construct_document(node)
                    if body is not None:
                        documents.append(Document(index=index, line=node.start_mark.line + 1, body=body))
                index += 1
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise ManifestError(f"YAML error at {_where(mark)}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"YAML error: {exc}") from None
    except RecursionError:
        raise ManifestError(f"nesting deeper than {MAX_DEPTH} levels") from None
    return documents
