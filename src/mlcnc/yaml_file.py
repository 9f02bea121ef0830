"""Reading a YAML config strictly: a duplicate key and an alias are refused.

PyYAML's ``safe_load`` keeps the last of two equal keys (a second ``optim:`` block silently
drops the first) and expands aliases without bound (a few hundred bytes of "billion laughs"
cost gigabytes). ``load_yaml`` refuses both while composing, before anything is built, with
one line naming the line and the key (or alias). Configs need neither: write each key once.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent


class YAMLRefused(ValueError):
    """A YAML document mlcnc does not read (a duplicate key, an alias); names the line."""


class StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses aliases (``*name``) and duplicate mapping keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise YAMLRefused(
                f"line {event.start_mark.line + 1}: YAML alias *{event.anchor} is not allowed "
                "in a config (anchors and aliases are refused); write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports an unhashable key
            line = key_node.start_mark.line + 1
            if key in seen:
                raise YAMLRefused(
                    f"line {line}: duplicate key {str(key)[:80]!r} (first at line {seen[key]}); "
                    "a key may appear once in a mapping: merge the two"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """The YAML document in ``text``; ``YAMLRefused`` for a duplicate key or an alias,
    ``yaml.YAMLError`` for text that is not YAML."""
    return yaml.load(text, Loader=StrictLoader)
