"""Refresh the model catalog's quant files and sizes from the Hub.

The catalog shipped in ``resources/catalog.json`` works offline; its sizes are partly rounded
(``size_gb``, ``approx``) or estimated from typical bits per weight. :func:`refresh_catalog`
lists each catalog repository's GGUF quants on the Hub and writes a refreshed copy to
``KvantPaths.cache / REFRESHED_CATALOG`` (atomically): exact byte sizes for the quants it knows,
and the repository's other complete quants added. Architecture facts are left as shipped. A
repository that cannot be listed keeps its shipped entry and is reported, so one missing or
gated repository does not stop the refresh; being offline does (a clear error).
:func:`engine.fit.load_catalog` with ``paths=`` then prefers the refreshed copy.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.fit.catalog import CATALOG_PATH, REFRESHED_CATALOG, parse_catalog
from engine.hub._http import HubError, HubOfflineError, hub_endpoint
from engine.hub.remote import list_quants
from engine.library import atomic_write_text
from engine.paths import KvantPaths
from engine.progress import CancelToken, Progress


@dataclass(frozen=True, slots=True)
class CatalogRefresh:
    """What a refresh did: where it wrote, and per repository what changed or failed."""

    path: Path
    repos: int
    resized: int  # quants whose size became exact (or changed)
    added: int  # quants found on the Hub that the catalog did not list
    failed: dict[str, str] = field(default_factory=dict)  # repo -> why

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "repos": self.repos,
            "resized": self.resized,
            "added": self.added,
            "failed": dict(self.failed),
        }


def _is_repo(model_id: str) -> bool:
    return model_id.count("/") == 1 and "gguf" in model_id.lower()


def _refresh_entry(entry: dict[str, Any], repo: str) -> tuple[int, int]:
    """Update ``entry['quants']`` in place from the Hub; (resized, added)."""
    remote = {q.name.upper(): q for q in list_quants(repo) if q.complete}
    resized = added = 0
    known = set()
    for q in entry["quants"]:
        known.add(q["name"].upper())
        hub_q = remote.get(q["name"].upper())
        if hub_q is None:
            continue
        if q.get("size_bytes") != hub_q.size or q.get("approx") or "size_gb" in q:
            resized += 1
        q.pop("size_gb", None)
        q["size_bytes"] = hub_q.size
        q["approx"] = False
    for name, hub_q in remote.items():
        if name in known or not hub_q.size:
            continue
        entry["quants"].append({"name": hub_q.name, "size_bytes": hub_q.size, "approx": False})
        added += 1
    return resized, added


def refresh_catalog(
    paths: KvantPaths,
    *,
    source: str | Path | None = None,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, CatalogRefresh]:
    """Refresh every catalog repository from the Hub (``HF_ENDPOINT`` applies); yields one
    :class:`Progress` per repository and returns a :class:`CatalogRefresh`."""
    src = Path(source) if source is not None else CATALOG_PATH
    data = json.loads(src.read_text(encoding="utf-8"))
    out = copy.deepcopy(data)
    entries = [m for m in out["models"] if _is_repo(m["id"])]
    resized = added = 0
    failed: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if cancel is not None:
            cancel.raise_if_cancelled()
        yield Progress("refresh", i, len(entries), f"{entry['id']}")
        try:
            r, a = _refresh_entry(entry, entry["id"])
        except HubOfflineError:
            raise
        except HubError as err:
            failed[entry["id"]] = str(err)
            continue
        resized += r
        added += a
    out["refreshed"] = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "endpoint": hub_endpoint()}
    parse_catalog(out)  # never write a catalog that would not load
    target = paths.cache / REFRESHED_CATALOG
    atomic_write_text(target, json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    yield Progress("refresh", len(entries), len(entries), "done")
    return CatalogRefresh(target, len(entries), resized, added, failed)


__all__ = ["CatalogRefresh", "refresh_catalog"]
