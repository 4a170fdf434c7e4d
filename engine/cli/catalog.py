"""``kvant catalog``: the models Kvant recommends offline; ``--refresh`` updates their quants from the Hub."""

from __future__ import annotations

import argparse
import json

from engine.cli import add_json_flag, drive, emit
from engine.paths import KvantPaths


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("catalog", help="list the model catalog (--refresh: exact sizes from the Hub)")
    p.add_argument("--refresh", action="store_true", help="first list each catalog repo's quants on the Hub")
    add_json_flag(p)
    p.set_defaults(func=run)


def _size(q) -> str:
    gb = q.size_bytes / 1e9
    return f"{q.name} {'~' if q.approx else ''}{gb:.1f} GB{' est.' if q.estimated else ''}"


def run(args: argparse.Namespace) -> int:
    from engine.fit import REFRESHED_CATALOG, load_catalog

    paths = KvantPaths.default()
    out: dict = {}
    lines = []
    if args.refresh:
        from engine.hub import refresh_catalog

        res = drive(refresh_catalog(paths), args)
        out["refresh"] = res.to_dict()
        lines.append(
            f"Refreshed {res.repos - len(res.failed)} of {res.repos} repositories from the Hub: "
            f"{res.resized} sizes made exact, {res.added} quants added -> {res.path}"
        )
        lines += [f"  not refreshed: {repo}: {why}" for repo, why in res.failed.items()]
    refreshed = paths.cache / REFRESHED_CATALOG
    catalog = load_catalog(paths=paths)
    source = "shipped catalog"
    if refreshed.is_file():
        try:
            at = json.loads(refreshed.read_text(encoding="utf-8")).get("refreshed", {}).get("at", "?")
            source = f"refreshed from the Hub at {at}"
        except (OSError, ValueError):
            pass
    lines.append(f"{len(catalog)} models ({source}; ~ rounded, est. = estimated from typical bpw)")
    for m in catalog:
        lines.append(f"{m.id:48s} " + ", ".join(_size(q) for q in m.quants))
    out["source"] = source
    out["models"] = [m.to_dict() for m in catalog]
    emit(args, out, "\n".join(lines))
    return 0
