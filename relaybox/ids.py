"""Prefixed, sortable identifiers (``req_<ULID>``, ``batch_<ULID>``, ...)."""
from ulid import ULID


def new_id(prefix: str) -> str:
    return f"{prefix}_{ULID()}"
