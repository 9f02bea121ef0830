"""Names of the class groups (spec A2): head / medium / tail by training frequency.

``CLASS_GROUPS`` are the groups a class can belong to; ``MAP_GROUPS`` adds ``total`` (all
classes), the columns of every mAP table and the suffixes of the ``map_<group>`` metrics.
"""

from __future__ import annotations

CLASS_GROUPS: tuple[str, ...] = ("head", "medium", "tail")
MAP_GROUPS: tuple[str, ...] = ("total", *CLASS_GROUPS)
