"""GGUF models other tools already downloaded: the Hugging Face cache, LM Studio, Ollama.

They are found where they lie and registered in the library by reference (no copy).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import KvantError
from engine.hub.quants import SPLIT_NAME, is_model_gguf, parse_quant_name
from engine.library import Library, LibraryEntry, register_file

SOURCES = ("hf-cache", "lmstudio", "ollama")
OLLAMA_MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
MAX_DEPTH = 8  # folders below a root that are searched
MAX_MANIFEST_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A GGUF model found on disk. ``path`` is its first (or only) file."""

    path: str
    name: str
    source: str  # "hf-cache", "lmstudio" or "ollama"
    size: int  # all shards together
    shards: tuple[str, ...] = ()
    repo: str | None = None
    quant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shards"] = list(self.shards)
        return d


@dataclass(slots=True)
class ImportResult:
    added: list[LibraryEntry] = field(default_factory=list)
    known: list[LibraryEntry] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": [e.to_dict() for e in self.added],
            "known": [e.to_dict() for e in self.known],
            "failed": [{"path": p, "error": why} for p, why in self.failed],
        }


def _home(env: Mapping[str, str]) -> Path:
    h = env.get("HOME") or env.get("USERPROFILE")
    return Path(h) if h else Path.home()


def default_roots(env: Mapping[str, str] | None = None) -> dict[str, list[Path]]:
    """Where each tool keeps its models on this machine (existing or not)."""
    env = os.environ if env is None else env
    home = _home(env)
    hf = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not hf:
        hf_home = env.get("HF_HOME") or str(
            Path(env.get("XDG_CACHE_HOME") or home / ".cache") / "huggingface"
        )
        hf = str(Path(hf_home) / "hub")
    ollama = [Path(env["OLLAMA_MODELS"])] if env.get("OLLAMA_MODELS") else []
    ollama += [home / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]
    lmstudio = [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]
    return {
        "hf-cache": [Path(hf).expanduser()],
        "lmstudio": lmstudio,
        "ollama": ollama,
    }


def discover_local_models(
    roots: Mapping[str, Sequence[str | Path]] | None = None, *, env: Mapping[str, str] | None = None
) -> list[LocalModel]:
    """GGUF models in the Hugging Face cache, LM Studio's and Ollama's folders.

    ``roots`` maps a source (``"hf-cache"``, ``"lmstudio"``, ``"ollama"``) to folders; sources
    left out use :func:`default_roots`. Split models appear once (their first shard) and only
    when every shard is there. The same file reached twice (links) is listed once.
    """
    chosen = default_roots(env)
    if roots is not None:
        chosen = {k: [Path(p) for p in v] for k, v in roots.items()}
    found: list[LocalModel] = []
    seen: set[Path] = set()
    scanners = {"hf-cache": _scan_hf_cache, "lmstudio": _scan_lmstudio, "ollama": _scan_ollama}
    for source, folders in chosen.items():
        scan = scanners.get(source)
        if scan is None:
            continue
        for root in folders:
            root = Path(root).expanduser()
            if not root.is_dir():
                continue
            for model in scan(root):
                real = _real(Path(model.path))
                if real in seen:
                    continue
                seen.add(real)
                found.append(model)
    return found


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path


def _walk_files(root: Path, max_depth: int = MAX_DEPTH) -> Iterator[Path]:
    """Files below ``root`` (no symlinked folders followed, hidden folders skipped)."""
    base_depth = len(root.parts)
    for folder, dirs, files in os.walk(root, followlinks=False):
        depth = len(Path(folder).parts) - base_depth
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < max_depth else []
        for name in sorted(files):
            yield Path(folder) / name


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size  # follows the HF cache's symlinks into blobs/
    except OSError:
        return None


def _gguf_models(files: list[Path]) -> Iterator[tuple[Path, tuple[Path, ...], int]]:
    """(first file, all shards, total size) for every complete model among ``files``."""
    by_name = {f.name: f for f in files}
    for f in files:
        if not is_model_gguf(f.name):
            continue
        m = SPLIT_NAME.match(f.name)
        if m is None:
            size = _size(f)
            if size:
                yield f, (f,), size
            continue
        if int(m["no"]) != 1:
            continue
        count = int(m["count"])
        shards = []
        for i in range(1, count + 1):
            name = f"{m['prefix']}-{i:05d}-of-{m['count']}.gguf"
            shard = by_name.get(name) or next(
                (p for n, p in by_name.items() if n.lower() == name.lower()), None
            )
            if shard is None or not _size(shard):
                break
            shards.append(shard)
        if len(shards) == count:
            yield f, tuple(shards), sum(_size(s) or 0 for s in shards)


def _group_by_folder(files: Iterator[Path]) -> dict[Path, list[Path]]:
    folders: dict[Path, list[Path]] = {}
    for f in files:
        folders.setdefault(f.parent, []).append(f)
    return folders


def _model_name(first: Path) -> str:
    m = SPLIT_NAME.match(first.name)
    return m["prefix"] if m else re.sub(r"\.gguf$", "", first.name, flags=re.IGNORECASE)


def _scan_hf_cache(root: Path) -> Iterator[LocalModel]:
    for repo_dir in sorted(root.glob("models--*")):
        repo = repo_dir.name.removeprefix("models--").replace("--", "/", 1)
        snapshots = repo_dir / "snapshots"
        if not snapshots.is_dir():
            continue
        for files in _group_by_folder(_walk_files(snapshots)).values():
            for first, shards, size in _gguf_models(files):
                yield LocalModel(
                    path=str(first),
                    name=f"{repo} {_model_name(first)}" if repo else _model_name(first),
                    source="hf-cache",
                    size=size,
                    shards=tuple(str(s) for s in shards),
                    repo=repo,
                    quant=parse_quant_name(first.name),
                )


def _scan_lmstudio(root: Path) -> Iterator[LocalModel]:
    for folder, files in _group_by_folder(_walk_files(root)).items():
        rel = folder.relative_to(root).parts
        repo = "/".join(rel[:2]) if len(rel) >= 2 else None
        for first, shards, size in _gguf_models(files):
            yield LocalModel(
                path=str(first),
                name=_model_name(first),
                source="lmstudio",
                size=size,
                shards=tuple(str(s) for s in shards),
                repo=repo,
                quant=parse_quant_name(first.name),
            )


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def _scan_ollama(root: Path) -> Iterator[LocalModel]:
    """``manifests/REGISTRY/NAMESPACE/MODEL/TAG`` JSON → the model layer's ``blobs/sha256-…``."""
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    for manifest in _walk_files(manifests, max_depth=4):
        rel = manifest.relative_to(manifests).parts
        if len(rel) < 3 or (_size(manifest) or MAX_MANIFEST_BYTES + 1) > MAX_MANIFEST_BYTES:
            continue
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        layers = data.get("layers") if isinstance(data, dict) else None
        if not isinstance(layers, list):
            continue
        layer = next(
            (x for x in layers if isinstance(x, dict) and x.get("mediaType") == OLLAMA_MODEL_MEDIA_TYPE), None
        )
        digest = layer.get("digest") if layer else None
        if not isinstance(digest, str) or not re.fullmatch(r"sha256[:-][0-9a-fA-F]{64}", digest):
            continue
        blob = root / "blobs" / digest.replace(":", "-")
        size = _size(blob)
        if not size or not _is_gguf(blob):
            continue
        *where, model, tag = rel
        if len(where) == 2 and where[0] == "registry.ollama.ai" and where[1] == "library":
            name = f"{model}:{tag}"
        else:
            name = "/".join([*where, model]) + f":{tag}"
        yield LocalModel(
            path=str(blob),
            name=name,
            source="ollama",
            size=size,
            shards=(str(blob),),
            repo=None,
            quant=parse_quant_name(tag) or parse_quant_name(model),
        )


def import_local_models(models: Sequence[LocalModel], library: Library) -> ImportResult:
    """Register each model in the library by reference (its header is validated first)."""
    result = ImportResult()
    for model in models:
        known = {e.id for e in library.entries()}
        try:
            entry = register_file(library, Path(model.path), source=model.source)
        except (KvantError, OSError) as err:
            result.failed.append((model.path, str(err)))
            continue
        if entry.id in known:
            result.known.append(entry)
            continue
        if model.source == "ollama":  # blobs are named sha256-…: use the model's tag instead
            new_id = "ollama-" + re.sub(r"[^A-Za-z0-9._-]+", "-", model.name).strip("-")
            if library.get(new_id) is None:
                library.remove(entry.id)
                entry = library.add(dataclasses.replace(entry, id=new_id, name=model.name))
        result.added.append(entry)
    return result


def scan_and_import(
    library: Library, roots: Mapping[str, Sequence[str | Path]] | None = None
) -> ImportResult:
    """Discover local models and import them (what ``python main.py models --scan`` does)."""
    return import_local_models(discover_local_models(roots), library)
