"""The order in which waiting jobs start: classes take turns, then the people in a class."""

from __future__ import annotations

import json
import sqlite3


def fairness_keys(job: sqlite3.Row) -> tuple[str, str]:
    """Group a job by class (metadata guild_id) and then by person (metadata user_id), for the fair queue."""
    metadata = json.loads(job["metadata"]) if job["metadata"] else {}
    return str(metadata.get("guild_id", "")), str(metadata.get("user_id", ""))


class FairQueue:
    """Round-robin across classes, then across people in a class: no one server or student starves the rest."""

    def __init__(self) -> None:
        self._served: dict[tuple[str, ...], int] = {}
        self._clock = 0

    def pick(self, queued: list[sqlite3.Row]) -> sqlite3.Row | None:
        """Choose the queued job whose class, then person, was served longest ago; oldest job first within."""
        if not queued:
            return None

        def rank(job: sqlite3.Row) -> tuple[int, int, int]:
            guild, user = fairness_keys(job)
            return self._served.get((guild,), -1), self._served.get((guild, user), -1), job["seq"]

        chosen = min(queued, key=rank)
        guild, user = fairness_keys(chosen)
        self._clock += 1
        self._served[(guild,)] = self._served[(guild, user)] = self._clock
        return chosen
