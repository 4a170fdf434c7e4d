"""Build Kvant's installer for this platform in one command (from the repository root):

    python3 packaging/build.py            # Linux: tarball + .deb (+ AppImage with appimagetool)
    python  packaging/build.py            # Windows: Kvant-VERSION-windows-x64-setup.exe (Inno Setup)
    python3 packaging/build.py            # macOS: Kvant-VERSION-macos-ARCH.dmg
    python3 packaging/build.py --smoke    # ... then run the built app: --version and --self-test

Steps: a build virtual environment (``build/venv``: the project's dependencies from pyproject.toml
and PyInstaller), PyInstaller with ``packaging/kvant.spec`` (one folder, ``dist/Kvant``), the engine's
sources byte-compiled in the bundle, then the platform's package in ``dist/``. ``--python PY`` uses
an existing interpreter instead of the venv (it must already have the dependencies and PyInstaller,
or pass ``--install``).

Optional signing, skipped unless configured (see packaging/README.md):
macOS ``KVANT_CODESIGN_IDENTITY`` (a "Developer ID Application: ..." identity in the keychain) and
``KVANT_NOTARY_PROFILE`` (a ``xcrun notarytool store-credentials`` profile); Windows
``KVANT_SIGNTOOL`` (a signtool command line, e.g. ``signtool sign /fd SHA256 /a /tr URL /td SHA256``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "packaging"
DIST = ROOT / "dist"
WORK = ROOT / "build" / "pyinstaller"
ICONS = ROOT / "resources" / "icons"
PYINSTALLER = "pyinstaller>=6.10,<7"
WINDOWS = sys.platform == "win32"
MACOS = sys.platform == "darwin"
LINUX = sys.platform.startswith("linux")
# Debian packages Qt's xcb platform plugin needs beyond a desktop's usual set (README: Run the app).
DEB_DEPENDS = (
    "libc6 (>= 2.31), libegl1, libfontconfig1, libxkbcommon0, libxkbcommon-x11-0, libxcb-cursor0, "
    "libxcb-icccm4, libxcb-keysyms1, libxcb-image0, libxcb-render-util0, libxcb-shape0, libxcb-xkb1, "
    "libdbus-1-3, libgomp1"
)


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def version() -> str:
    return project()["version"]


def arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "aarch64": "arm64"}.get(machine, machine)


def run(cmd: list[str | Path], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def log(msg: str) -> None:
    print(f"== {msg}", flush=True)


# --- the build environment -------------------------------------------------------------------


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if WINDOWS else "bin/python")


def prepare_python(args: argparse.Namespace) -> Path:
    """The interpreter that runs PyInstaller, with the app's dependencies installed."""
    if args.python:
        py = Path(args.python)
    else:
        venv = ROOT / "build" / "venv"
        py = venv_python(venv)
        if not py.exists():
            log(f"creating {venv}")
            run([sys.executable, "-m", "venv", venv])
            args.install = True
    if args.install:
        log("installing the dependencies and PyInstaller")
        run([py, "-m", "pip", "install", "--upgrade", "pip"])
        run([py, "-m", "pip", "install", *project()["dependencies"], PYINSTALLER])
    return py


# --- PyInstaller ------------------------------------------------------------------------------


def pyinstaller(py: Path, ver: str, clean: bool) -> None:
    log("PyInstaller")
    for old in (DIST / "Kvant", DIST / "Kvant.app"):
        if old.exists():
            shutil.rmtree(old)
    cmd = [py, "-m", "PyInstaller", "--noconfirm", "--distpath", DIST, "--workpath", WORK]
    run([*cmd, *(["--clean"] if clean else []), PKG / "kvant.spec"], env={**os.environ, "KVANT_VERSION": ver})


def app_dir() -> Path:
    """The folder holding the bundle's files (``_internal`` next to the executable; in the .app the
    Python files are under Contents/Resources)."""
    if MACOS:
        return DIST / "Kvant.app" / "Contents" / "Resources"
    return DIST / "Kvant" / "_internal"


def executable() -> Path:
    if WINDOWS:
        return DIST / "Kvant" / "kvant-cli.exe"
    if MACOS:
        return DIST / "Kvant.app" / "Contents" / "MacOS" / "Kvant"
    return DIST / "Kvant" / "kvant"


def compile_sources(py: Path) -> None:
    """Byte-compile the engine's sources in the bundle: an installed app (read-only /opt, Program
    Files, AppImage) cannot write its own __pycache__. checked-hash: valid whatever the file times
    become when the installer copies the files."""
    for folder in (
        DIST / "Kvant" / "_internal" / "engine",
        DIST / "Kvant.app" / "Contents" / "Resources" / "engine",
    ):
        if folder.is_dir() and not folder.is_symlink():
            run([py, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash", folder])


def bundle_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# --- Linux --------------------------------------------------------------------------------------


def linux_packages(ver: str, appimage: str) -> list[Path]:
    a = arch()
    out = [linux_tarball(ver, a), linux_deb(ver, a)]
    appdir = linux_appdir(ver)
    tool = shutil.which("appimagetool")
    if appimage == "yes" and tool is None:
        raise SystemExit("--appimage yes: appimagetool is not on PATH")
    if tool and appimage != "no":
        image = DIST / f"Kvant-{ver}-{a}.AppImage"
        image.unlink(missing_ok=True)
        env = {**os.environ, "ARCH": a, "APPIMAGE_EXTRACT_AND_RUN": "1"}
        run([tool, "--no-appstream", appdir, image], env=env)
        out.append(image)
    else:
        log(f"appimagetool not found: AppDir left in {appdir} (no .AppImage)")
    return out


def linux_tarball(ver: str, a: str) -> Path:
    """kvant-VERSION-linux-ARCH.tar.gz: the bundle plus install.sh (per-user menu entry, icon, MIME)."""
    name = f"kvant-{ver}-linux-{a}"
    target = DIST / f"{name}.tar.gz"
    log(f"tarball {target.name}")
    extras = {
        "install.sh": PKG / "linux" / "install.sh",
        "kvant.desktop": PKG / "linux" / "kvant.desktop",
        "kvant-mime.xml": PKG / "linux" / "kvant-mime.xml",
        "kvant.png": ICONS / "kvant.png",
        "kvant.svg": ICONS / "kvant.svg",
    }

    def exec_bits(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(target, "w:gz", compresslevel=6) as tar:
        tar.add(DIST / "Kvant", arcname=name, filter=exec_bits)
        for arc, src in extras.items():
            tar.add(src, arcname=f"{name}/{arc}", filter=exec_bits)
    return target


def linux_deb(ver: str, a: str) -> Path:
    """kvant_VERSION_ARCH.deb: /opt/kvant, /usr/bin/kvant, the menu entry, icons and the GGUF MIME type
    (desktop-file-utils', shared-mime-info's and hicolor's dpkg triggers refresh their caches)."""
    deb_arch = {"x86_64": "amd64", "arm64": "arm64"}.get(a, a)
    root = ROOT / "build" / "deb" / "kvant"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(DIST / "Kvant", root / "opt" / "kvant", symlinks=True)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "kvant").symlink_to("/opt/kvant/kvant")
    share = root / "usr" / "share"
    (share / "applications").mkdir(parents=True)
    shutil.copy2(PKG / "linux" / "kvant.desktop", share / "applications" / "kvant.desktop")
    for sub, icon in (("256x256", ICONS / "kvant.png"), ("scalable", ICONS / "kvant.svg")):
        folder = share / "icons" / "hicolor" / sub / "apps"
        folder.mkdir(parents=True)
        shutil.copy2(icon, folder / icon.name)
    (share / "mime" / "packages").mkdir(parents=True)
    shutil.copy2(PKG / "linux" / "kvant-mime.xml", share / "mime" / "packages" / "kvant.xml")
    size_kb = bundle_size(root) // 1024
    control = (
        f"Package: kvant\nVersion: {ver}\nSection: science\nPriority: optional\nArchitecture: {deb_arch}\n"
        f"Installed-Size: {size_kb}\nDepends: {DEB_DEPENDS}\n"
        "Maintainer: Kvant <kvant@users.noreply.github.com>\n"
        f"Description: {project()['description']}\n"
        " Kvant tells you which quantized LLMs your machine can run and how fast, downloads GGUF\n"
        " quants, converts models with its own quantizer, chats with them on the CPU and measures\n"
        " what quantization cost. It ships Gemma 3 270M (Q4_K_M), so it works offline.\n"
    )
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(control, encoding="utf-8")
    target = DIST / f"kvant_{ver}_{deb_arch}.deb"
    log(f"deb {target.name}")
    if shutil.which("dpkg-deb") is None:
        raise SystemExit("dpkg-deb is needed for the .deb (apt-get install dpkg)")
    run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z6", "--build", root, target])
    return target


def linux_appdir(ver: str) -> Path:
    """Kvant.AppDir for appimagetool: AppRun, the desktop file and icon at the top, the bundle in usr/lib."""
    appdir = ROOT / "build" / "Kvant.AppDir"
    if appdir.exists():
        shutil.rmtree(appdir)
    shutil.copytree(DIST / "Kvant", appdir / "usr" / "lib" / "kvant", symlinks=True)
    shutil.copy2(PKG / "linux" / "AppRun", appdir / "AppRun")
    (appdir / "AppRun").chmod(0o755)
    shutil.copy2(PKG / "linux" / "kvant.desktop", appdir / "kvant.desktop")
    shutil.copy2(ICONS / "kvant.png", appdir / "kvant.png")
    (appdir / ".DirIcon").symlink_to("kvant.png")
    mime = appdir / "usr" / "share" / "mime" / "packages"
    mime.mkdir(parents=True)
    shutil.copy2(PKG / "linux" / "kvant-mime.xml", mime / "kvant.xml")
    return appdir


# --- Windows ------------------------------------------------------------------------------------


def find_iscc() -> str | None:
    found = shutil.which("iscc") or shutil.which("ISCC")
    if found:
        return found
    for base in (
        os.environ.get("PROGRAMFILES(X86)"),
        os.environ.get("PROGRAMFILES"),
        os.environ.get("LOCALAPPDATA"),
    ):
        for sub in ("Inno Setup 6", "Programs/Inno Setup 6"):
            candidate = Path(base or "") / sub / "ISCC.exe"
            if base and candidate.exists():
                return str(candidate)
    return None


def windows_sign(files: list[Path]) -> None:
    cmd = os.environ.get("KVANT_SIGNTOOL")
    if not cmd:
        log("KVANT_SIGNTOOL not set: executables are not signed")
        return
    for f in files:
        run([*cmd.split(), f])


def windows_installer(ver: str) -> list[Path]:
    windows_sign([DIST / "Kvant" / "Kvant.exe", DIST / "Kvant" / "kvant-cli.exe"])
    iscc = find_iscc()
    if iscc is None:
        raise SystemExit("Inno Setup 6 is needed for the installer (choco install innosetup)")
    numeric = ".".join((ver.split("+")[0].split(".") + ["0"] * 4)[:4])
    run(
        [
            iscc,
            f"/DAppVersion={ver}",
            f"/DAppVersionNumeric={numeric}",
            f"/DBundleDir={DIST / 'Kvant'}",
            f"/DOutputDir={DIST}",
            PKG / "windows" / "kvant.iss",
        ]
    )
    setup = DIST / f"Kvant-{ver}-windows-x64-setup.exe"
    windows_sign([setup])
    return [setup]


# --- macOS --------------------------------------------------------------------------------------


def _is_macho(path: Path) -> bool:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    return magic in (b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe", b"\xbe\xba\xfe\xca")


def macos_sign(app: Path) -> bool:
    identity = os.environ.get("KVANT_CODESIGN_IDENTITY")
    if not identity:
        # PyInstaller signed the bundle ad hoc; the byte-compiled sources added since must be sealed too.
        log("KVANT_CODESIGN_IDENTITY not set: ad-hoc signature only (Gatekeeper will warn on other Macs)")
        run(["codesign", "--force", "--sign", "-", app])
        return False
    entitlements = PKG / "macos" / "entitlements.plist"
    sign = ["codesign", "--force", "--timestamp", "--options", "runtime", "--entitlements", entitlements]
    inner = [p for p in app.rglob("*") if p.is_file() and not p.is_symlink() and _is_macho(p)]
    for p in sorted(inner, key=lambda p: -len(p.parts)):  # inside out
        run([*sign, "--sign", identity, p])
    run([*sign, "--sign", identity, app])
    run(["codesign", "--verify", "--deep", "--strict", "--verbose=2", app])
    return True


def macos_dmg(ver: str) -> list[Path]:
    app = DIST / "Kvant.app"
    signed = macos_sign(app)
    target = DIST / f"Kvant-{ver}-macos-{arch()}.dmg"
    target.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "Kvant"
        stage.mkdir()
        run(["ditto", app, stage / "Kvant.app"])
        (stage / "Applications").symlink_to("/Applications")
        run(
            [
                "hdiutil",
                "create",
                "-volname",
                f"Kvant {ver}",
                "-srcfolder",
                stage,
                "-ov",
                "-format",
                "UDZO",
                target,
            ]
        )
    if signed:
        run(["codesign", "--force", "--timestamp", "--sign", os.environ["KVANT_CODESIGN_IDENTITY"], target])
        profile = os.environ.get("KVANT_NOTARY_PROFILE")
        if profile:
            run(["xcrun", "notarytool", "submit", target, "--keychain-profile", profile, "--wait"])
            run(["xcrun", "stapler", "staple", target])
        else:
            log("KVANT_NOTARY_PROFILE not set: the DMG is signed but not notarized")
    return [target]


# --- smoke test ---------------------------------------------------------------------------------


def smoke(ver: str, size: int) -> dict:
    """Run the built app like a user's first launch: --version, then --self-test (offscreen window,
    default model assembled and opened in the chat, a tensor quantized, tokens generated) in a fresh
    KVANT_HOME. Writes dist/smoke-PLATFORM.json."""
    exe = executable()
    log(f"smoke test: {exe}")
    t0 = time.monotonic()
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    version_s = time.monotonic() - t0
    if out.returncode != 0 or ver not in out.stdout:
        raise SystemExit(f"--version failed: {out.returncode} {out.stdout!r} {out.stderr!r}")
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "KVANT_HOME": home,
            "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen"),
        }
        env.pop("NUMBA_CACHE_DIR", None)
        shots = DIST / "screenshots"
        cmd = [str(exe), "--self-test", "--screenshots", str(shots)]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        self_test_s = time.monotonic() - t0
    sys.stderr.write(proc.stderr[-4000:])
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise SystemExit(
            f"--self-test printed no report (exit {proc.returncode}):\n{proc.stdout[-4000:]}"
        ) from None
    summary = {
        "platform": f"{sys.platform}-{arch()}",
        "version": ver,
        "bundle_bytes": size,
        "version_s": round(version_s, 2),
        "self_test_s": round(self_test_s, 1),
        "self_test": report,
    }
    (DIST / f"smoke-{sys.platform}-{arch()}.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if proc.returncode != 0 or not report.get("ok"):
        raise SystemExit(f"--self-test failed (exit {proc.returncode}):\n{proc.stdout}")
    gui = report.get("gui", {})
    log(
        f"smoke test passed: bundle {size / 2**20:.0f} MiB, --version {version_s:.1f} s, "
        f"launch to window {gui.get('launch_to_window_s')} s, self-test {self_test_s:.0f} s"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build Kvant's installer for this platform.")
    parser.add_argument("--python", help="use this interpreter instead of build/venv")
    parser.add_argument(
        "--install", action="store_true", help="(re)install dependencies and PyInstaller first"
    )
    parser.add_argument("--clean", action="store_true", help="PyInstaller --clean (no cached analysis)")
    parser.add_argument("--bundle-only", action="store_true", help="stop after dist/Kvant (no installer)")
    parser.add_argument("--appimage", choices=("auto", "yes", "no"), default="auto", help="Linux AppImage")
    parser.add_argument("--smoke", action="store_true", help="run the built app's --version and --self-test")
    args = parser.parse_args(argv)

    ver = version()
    log(f"Kvant {ver} for {sys.platform}-{arch()}")
    t0 = time.monotonic()
    py = prepare_python(args)
    pyinstaller(py, ver, args.clean)
    compile_sources(py)
    bundle = DIST / ("Kvant.app" if MACOS else "Kvant")
    size = bundle_size(bundle)
    log(f"bundle {bundle}: {size / 2**20:.0f} MiB, built in {time.monotonic() - t0:.0f} s")
    made: list[Path] = []
    if not args.bundle_only:
        if LINUX:
            made = linux_packages(ver, args.appimage)
        elif WINDOWS:
            made = windows_installer(ver)
        elif MACOS:
            made = macos_dmg(ver)
    for path in made:
        log(f"{path.relative_to(ROOT)}: {path.stat().st_size / 2**20:.0f} MiB")
    if args.smoke:
        smoke(ver, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
