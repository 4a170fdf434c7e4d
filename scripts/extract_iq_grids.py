"""Generate ``engine/quant/iq_grids.py`` from llama.cpp's C sources (text only, nothing compiled).

The grid IQ quantizers build their lookup tables at ``ggml_quantize_init`` from compact 16-bit grid
tables that live inside ``iq2xs_init_impl`` / ``iq3xs_init_impl`` in ``ggml/src/ggml-quants.c``
(``kgrid_2bit_256``, ``kgrid_2bit_512``, ``kgrid_1bit_2048``, ``kgrid_2bit_1024``, ``kgrid_256``,
``kgrid_512``): one 2-bit (IQ2/IQ1) or 3-bit (IQ3) level per element.  The dequantization grids of
``ggml/src/ggml-common.h`` (``iq2xxs_grid``, ``iq2xs_grid``, ``iq2s_grid``, ``iq3xxs_grid``,
``iq3s_grid``, ``iq1s_grid``) are the same points with each level mapped to a byte value; this
script checks that, entry by entry, and also checks ``ksigns_iq2xs`` against its closed form, so
only the six compact tables need to be stored.

Run:  python scripts/extract_iq_grids.py DIR   (DIR holds ggml-quants.c and ggml-common.h of the
llama.cpp version to match; the oracle llama-cpp-python 0.3.36 ships ggml 0.25.3)
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "engine" / "quant" / "iq_grids.py"

# compact table (in ggml-quants.c) -> (bits per level, levels per point, ggml-common.h grid, byte map)
TABLES = {
    "kgrid_2bit_256": (2, 8, "iq2xxs_grid", (0x08, 0x19, 0x2B)),
    "kgrid_2bit_512": (2, 8, "iq2xs_grid", (0x08, 0x19, 0x2B)),
    "kgrid_2bit_1024": (2, 8, "iq2s_grid", (0x08, 0x19, 0x2B)),
    "kgrid_1bit_2048": (2, 8, "iq1s_grid", (0xFF, 0x00, 0x01)),  # int8 -1, 0, 1
    "kgrid_256": (3, 4, "iq3xxs_grid", (0x04, 0x0C, 0x14, 0x1C, 0x24, 0x2C, 0x34, 0x3E)),
    "kgrid_512": (3, 4, "iq3s_grid", tuple(range(1, 16, 2))),
}


def _c_array(text: str, pattern: str) -> list[int]:
    m = re.search(pattern + r"\s*=\s*\{(.*?)\}", text, re.S)
    if m is None:
        raise SystemExit(f"table not found: {pattern}")
    body = re.sub(r"//[^\n]*", "", m.group(1))
    return [int(v, 0) for v in re.findall(r"0x[0-9a-fA-F]+|\d+", body)]


def _common_table(text: str, name: str) -> list[int]:
    pattern = r"GGML_TABLE_BEGIN\(\s*\w+\s*,\s*" + name + r"\s*,[^)]*\)(.*?)GGML_TABLE_END\(\)"
    m = re.search(pattern, text, re.S)
    if m is None:
        raise SystemExit(f"table not found in ggml-common.h: {name}")
    return [int(v, 0) for v in re.findall(r"0x[0-9a-fA-F]+|\d+", m.group(1))]


def main(src: Path) -> None:
    quants = (src / "ggml-quants.c").read_text()
    common = (src / "ggml-common.h").read_text()
    out = {}
    for name, (bits, per, grid_name, byte_map) in TABLES.items():
        size = int(re.search(r"_(\d+)$", name).group(1))
        compact = _c_array(quants, rf"static const uint16_t {name}\[\w+\]")
        if len(compact) != size:
            raise SystemExit(f"{name}: {len(compact)} entries, expected {size}")
        grid = _common_table(common, grid_name)
        if len(grid) != size:
            raise SystemExit(f"{grid_name}: {len(grid)} entries, expected {size}")
        for k, (c, g) in enumerate(zip(compact, grid, strict=True)):
            want = 0
            for i in range(per):
                want |= byte_map[(c >> (bits * i)) & ((1 << bits) - 1)] << (8 * i)
            if want != g:
                raise SystemExit(f"{name}[{k}] does not match {grid_name}[{k}]")
        out[name] = np.array(compact, dtype="<u2")
    ksigns = _common_table(common, "ksigns_iq2xs")
    if ksigns != [i | ((bin(i).count("1") & 1) << 7) for i in range(128)]:
        raise SystemExit("ksigns_iq2xs is not i | parity(i) << 7")

    lines = [
        '"""Compact grid tables of llama.cpp\'s grid IQ types (generated; do not edit).',
        "",
        "Written by scripts/extract_iq_grids.py from ggml/src/ggml-quants.c (iq2xs_init_impl,",
        "iq3xs_init_impl): each entry packs one grid point, 2 bits (IQ2_*, IQ1_*) or 3 bits (IQ3_*) per",
        "element.  Stored as little-endian uint16 hex; the dequantization grids of ggml-common.h are the",
        "same points with every level mapped to a byte value (checked by the generator).",
        '"""',
        "",
    ]
    for name, arr in out.items():
        hexstr = arr.tobytes().hex()
        chunks = textwrap.wrap(hexstr, 96)
        lines.append(f"{name.upper()} = (")
        lines += [f'    "{c}"' for c in chunks]
        lines.append(")")
        lines.append("")
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
