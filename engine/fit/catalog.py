"""The model catalog (``resources/catalog.json``): popular models as users know them.

Each entry is addressed by its Hub repo id (or an alias) and lists the architecture facts the
planner needs and the file sizes of its common quants. A quant without a published size is
estimated as params × :data:`TYPICAL_BPW` / 8 and flagged ``estimated``; published sizes known
only to the Hub's rounding are flagged ``approx``. :func:`validate_catalog` checks the file
against :data:`CATALOG_SCHEMA` (a small JSON-Schema-like description).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from engine.errors import ModelError
from engine.fit.shape import ModelShape, QuantWeights, split_params, swa_layers_for, synthesize_weights

CATALOG_PATH = Path(__file__).resolve().parents[2] / "resources" / "catalog.json"

#: Effective bits per weight of whole files (embedding and output included). Q2_K..Q8_0 from
#: llama.cpp's Llama-3-8B table in quant-formats.md (GiB × 2^33 / 8.03e9 params); the rest are
#: the type's bpw plus the same ~0.2-0.4 bpw for higher-precision output/attention tensors.
TYPICAL_BPW: Mapping[str, float] = MappingProxyType(
    {
        "IQ1_S": 1.78,
        "IQ1_M": 1.95,
        "IQ2_XXS": 2.27,
        "IQ2_XS": 2.5,
        "IQ2_S": 2.72,
        "IQ2_M": 2.93,
        "Q2_K": 3.17,
        "IQ3_XXS": 3.27,
        "Q3_K_S": 3.64,
        "IQ3_M": 3.76,
        "Q3_K_M": 4.00,
        "Q3_K_L": 4.30,
        "IQ4_XS": 4.46,
        "IQ4_NL": 4.68,
        "Q4_0": 4.64,
        "Q4_K_S": 4.68,
        "Q4_K_M": 4.90,
        "Q5_K_S": 5.54,
        "Q5_K_M": 5.70,
        "Q6_K": 6.57,
        "Q8_0": 8.52,
        "F16": 16.0,
        "BF16": 16.0,
    }
)

#: Mean KL divergence vs. the f16 model (Llama-3-8B, wikitext-2; quant-formats.md).
KLD: Mapping[str, float] = MappingProxyType(
    {
        "Q8_0": 0.00136,
        "Q6_K": 0.00545,
        "Q5_K_M": 0.0108,
        "Q4_K_M": 0.0313,
        "Q4_0": 0.0719,
        "Q3_K_M": 0.102,
        "Q2_K": 0.445,
        "IQ1_S": 2.21,
    }
)

_INT = {"type": "integer", "minimum": 0}
_POS = {"type": "integer", "minimum": 1}
CATALOG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "models"],
    "properties": {
        "version": {"type": "integer", "minimum": 1},
        "about": {"type": "string"},
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "id",
                    "name",
                    "architecture",
                    "params_total",
                    "n_layer",
                    "n_ctx_train",
                    "n_embd",
                    "n_vocab",
                    "n_head",
                    "n_head_kv",
                    "head_dim_k",
                    "head_dim_v",
                    "n_ff",
                    "quants",
                ],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string"},
                    "name": {"type": "string"},
                    "aliases": {"type": "array", "items": {"type": "string"}},
                    "architecture": {"type": "string"},
                    "params_total": _POS,
                    "params_active": _POS,
                    "n_layer": _POS,
                    "n_ctx_train": _POS,
                    "n_embd": _POS,
                    "n_vocab": _POS,
                    "n_head": _POS,
                    "n_head_kv": _POS,
                    "head_dim_k": _POS,
                    "head_dim_v": _POS,
                    "n_ff": _POS,
                    "sliding_window": {"type": ["integer", "null"], "minimum": 1},
                    "swa_pattern": {"type": ["integer", "null"], "minimum": 1},
                    "experts": _INT,
                    "experts_used": _INT,
                    "n_ff_expert": _INT,
                    "experts_shared": _INT,
                    "leading_dense_layers": _INT,
                    "tied_embeddings": {"type": "boolean"},
                    "default_quant": {"type": "string"},
                    "notes": {"type": "string"},
                    "quants": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "size_bytes": _POS,
                                "size_gb": {"type": "number", "exclusiveMinimum": 0},
                                "approx": {"type": "boolean"},
                                "bpw_experts": {"type": "number", "exclusiveMinimum": 0},
                                "bpw_other": {"type": "number", "exclusiveMinimum": 0},
                                "note": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}

_TYPES: Mapping[str, type] = MappingProxyType(
    {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
)


def _type_ok(value: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[t])


def validate_schema(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Errors of ``value`` against the JSON-Schema subset used by :data:`CATALOG_SCHEMA`."""
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_type_ok(value, t) for t in types):
            return [f"{where}: expected {' or '.join(types)}, got {type(value).__name__}"]
    if _type_ok(value, "number") and value is not None:
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below {schema['minimum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} must be above {schema['exclusiveMinimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing {key!r}")
        props = schema.get("properties", {})
        for key, sub in value.items():
            if key in props:
                errors += validate_schema(sub, props[key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unknown key {key!r}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate_schema(item, schema["items"], f"{where}[{i}]")
    return errors


def validate_catalog(data: Any) -> list[str]:
    """Schema errors plus the rules a schema cannot say (unique ids, consistent facts)."""
    errors = validate_schema(data, CATALOG_SCHEMA)
    if errors:
        return errors
    seen: set[str] = set()
    for i, m in enumerate(data["models"]):
        where = f"$.models[{i}] ({m['id']})"
        for name in [m["id"], *m.get("aliases", [])]:
            if name.lower() in seen:
                errors.append(f"{where}: name {name!r} is used twice")
            seen.add(name.lower())
        qnames = [q["name"].upper() for q in m["quants"]]
        if len(set(qnames)) != len(qnames):
            errors.append(f"{where}: duplicate quant names")
        if m.get("default_quant") and m["default_quant"].upper() not in qnames:
            errors.append(f"{where}: default_quant {m['default_quant']!r} is not among its quants")
        if m["n_head_kv"] > m["n_head"]:
            errors.append(f"{where}: more KV heads than heads")
        if m.get("params_active", m["params_total"]) > m["params_total"]:
            errors.append(f"{where}: more active than total parameters")
        moe = m.get("experts", 0) > 1
        if moe and not 0 < m.get("experts_used", 0) <= m["experts"]:
            errors.append(f"{where}: experts_used must be 1..experts")
        if moe and "params_active" not in m:
            errors.append(f"{where}: a MoE model needs params_active")
        if bool(m.get("sliding_window")) != bool(m.get("swa_pattern")):
            errors.append(f"{where}: sliding_window and swa_pattern go together")
        for q in m["quants"]:
            if "size_bytes" in q and "size_gb" in q:
                errors.append(f"{where}: quant {q['name']}: give size_bytes or size_gb, not both")
            if "size_gb" in q and not q.get("approx", False):
                errors.append(f"{where}: quant {q['name']}: a size in GB is rounded, mark it approx")
            if "size_bytes" not in q and "size_gb" not in q and _typical_bpw(q["name"]) is None:
                errors.append(f"{where}: quant {q['name']} has no size and no typical bpw to estimate one")
            if ("bpw_experts" in q) != ("bpw_other" in q):
                errors.append(f"{where}: quant {q['name']}: bpw_experts and bpw_other go together")
    return errors


def _typical_bpw(quant: str) -> float | None:
    q = quant.upper()
    return TYPICAL_BPW.get(q.removeprefix("UD-"))


@dataclass(frozen=True, slots=True)
class CatalogQuant:
    name: str
    size_bytes: int
    approx: bool
    estimated: bool
    bpw_experts: float | None = None
    bpw_other: float | None = None
    note: str | None = None

    @property
    def kld(self) -> float | None:
        return KLD.get(self.name.upper().removeprefix("UD-"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size_bytes": self.size_bytes,
            "approx": self.approx,
            "estimated": self.estimated,
            "kld": self.kld,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class CatalogModel:
    id: str
    name: str
    aliases: tuple[str, ...]
    facts: dict[str, Any] = field(hash=False, compare=False)
    quants: tuple[CatalogQuant, ...] = ()
    default_quant: str | None = None
    notes: str = ""

    def quant(self, name: str) -> CatalogQuant:
        want = name.upper()
        for q in self.quants:
            if q.name.upper() == want or q.name.upper().removeprefix("UD-") == want.removeprefix("UD-"):
                return q
        known = ", ".join(q.name for q in self.quants)
        raise ModelError(f"{self.id} has no quant {name!r} in the catalog (known: {known})")

    def shape(self) -> ModelShape:
        f = self.facts
        n_layer = f["n_layer"]
        window = f.get("sliding_window")
        return ModelShape(
            name=self.name,
            architecture=f["architecture"],
            n_layer=n_layer,
            n_ctx_train=f["n_ctx_train"],
            n_embd=f["n_embd"],
            n_vocab=f["n_vocab"],
            n_head=f["n_head"],
            n_head_kv=(f["n_head_kv"],) * n_layer,
            head_dim_k=f["head_dim_k"],
            head_dim_v=f["head_dim_v"],
            n_ff=f["n_ff"],
            total_params=f["params_total"],
            active_params=f.get("params_active", f["params_total"]),
            sliding_window=window,
            swa_layers=swa_layers_for(n_layer, f.get("swa_pattern")) if window else (),
            n_expert=f.get("experts", 0),
            n_expert_used=f.get("experts_used", 0),
            n_ff_expert=f.get("n_ff_expert", 0),
            n_expert_shared=f.get("experts_shared", 0),
            tied_embeddings=f.get("tied_embeddings", False),
            source="catalog",
            notes=(self.notes,) if self.notes else (),
        )

    def weights(self, quant: str | CatalogQuant) -> QuantWeights:
        q = self.quant(quant) if isinstance(quant, str) else quant
        shape = self.shape()
        split = split_params(shape, self.facts.get("leading_dense_layers", 0))
        note = q.note
        if q.estimated:
            note = f"size estimated from {shape.total_params:,} params × {_typical_bpw(q.name)} bpw"
        return synthesize_weights(
            shape,
            split,
            name=q.name,
            file_bytes=q.size_bytes,
            bpw_experts=q.bpw_experts,
            bpw_other=q.bpw_other,
            approx=q.approx,
            estimated=q.estimated,
            note=note,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "aliases": list(self.aliases),
            "default_quant": self.default_quant,
            "facts": dict(self.facts),
            "quants": [q.to_dict() for q in self.quants],
            "notes": self.notes,
        }


@dataclass(frozen=True, slots=True)
class Catalog:
    models: tuple[CatalogModel, ...]

    def find(self, spec: str) -> tuple[CatalogModel, str | None]:
        """``repo`` or ``repo:QUANT`` (an id or alias, case-insensitive) → (model, quant or None)."""
        name, _, quant = spec.partition(":")
        want = name.strip().lower()
        for m in self.models:
            if want == m.id.lower() or want in (a.lower() for a in m.aliases):
                if quant:
                    m.quant(quant)  # validates
                return m, (quant or None)
        raise ModelError(f"{name!r} is not a file, a library model or a catalog model")

    def get(self, spec: str) -> CatalogModel | None:
        try:
            return self.find(spec)[0]
        except ModelError:
            return None

    def __iter__(self):
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)


def _quant_from(entry: dict[str, Any], params: int) -> CatalogQuant:
    name = entry["name"]
    if "size_bytes" in entry:
        size, approx, estimated = int(entry["size_bytes"]), bool(entry.get("approx", False)), False
    elif "size_gb" in entry:
        size, approx, estimated = round(entry["size_gb"] * 1e9), True, False
    else:
        bpw = _typical_bpw(name)
        if bpw is None:
            raise ModelError(f"quant {name} has no size and no typical bits per weight")
        size, approx, estimated = round(params * bpw / 8), True, True
    return CatalogQuant(
        name=name,
        size_bytes=size,
        approx=approx,
        estimated=estimated,
        bpw_experts=entry.get("bpw_experts"),
        bpw_other=entry.get("bpw_other"),
        note=entry.get("note"),
    )


def parse_catalog(data: Any) -> Catalog:
    errors = validate_catalog(data)
    if errors:
        raise ModelError("the model catalog is invalid: " + "; ".join(errors[:5]))
    models = []
    for m in data["models"]:
        facts = {k: v for k, v in m.items() if k not in ("id", "name", "aliases", "quants", "notes")}
        models.append(
            CatalogModel(
                id=m["id"],
                name=m["name"],
                aliases=tuple(m.get("aliases", [])),
                facts=facts,
                quants=tuple(_quant_from(q, m["params_total"]) for q in m["quants"]),
                default_quant=m.get("default_quant"),
                notes=m.get("notes", ""),
            )
        )
    return Catalog(tuple(models))


#: The catalog refreshed from the Hub, in ``KvantPaths.cache``.
REFRESHED_CATALOG = "catalog.json"


def load_catalog(path: str | Path | None = None, *, paths: Any = None) -> Catalog:
    """Read and validate the catalog: ``path`` if given; else, with ``paths`` (a
    :class:`engine.paths.KvantPaths`), the copy refreshed from the Hub in its cache when there is a
    valid one (``engine.hub.refresh_catalog``); else the shipped ``resources/catalog.json``."""
    if path is None and paths is not None:
        refreshed = Path(paths.cache) / REFRESHED_CATALOG
        if refreshed.is_file():
            try:
                return load_catalog(refreshed)
            except ModelError:
                pass  # a damaged refresh must not hide the shipped catalog
    path = Path(path) if path is not None else CATALOG_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"the model catalog is missing: {path}") from None
    except json.JSONDecodeError as err:
        raise ModelError(f"the model catalog {path} is not valid JSON: {err}") from None
    return parse_catalog(data)
