#!/bin/sh
# Kvant's Linux tarball: add Kvant to this user's application menu (and make .gguf files open with it),
# running from the folder this script is in. No root needed; nothing is copied outside ~/.local.
#
#   ./install.sh              menu entry, icon, .gguf file type, ~/.local/bin/kvant
#   ./install.sh --uninstall  remove them again (Kvant's models and settings stay in ~/.local/share/kvant)
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
DATA="${XDG_DATA_HOME:-$HOME/.local/share}"
BIN="$HOME/.local/bin"

refresh() {
    command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$DATA/applications" || true
    command -v update-mime-database >/dev/null 2>&1 && update-mime-database "$DATA/mime" || true
    command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t "$DATA/icons/hicolor" || true
}

if [ "${1:-}" = "--uninstall" ]; then
    rm -f "$DATA/applications/kvant.desktop" "$DATA/mime/packages/kvant.xml" \
          "$DATA/icons/hicolor/256x256/apps/kvant.png" "$DATA/icons/hicolor/scalable/apps/kvant.svg"
    if [ -L "$BIN/kvant" ]; then rm -f "$BIN/kvant"; fi
    refresh
    echo "Kvant removed from the menu. Delete $HERE to remove the program."
    exit 0
fi

mkdir -p "$DATA/applications" "$DATA/mime/packages" "$DATA/icons/hicolor/256x256/apps" \
         "$DATA/icons/hicolor/scalable/apps" "$BIN"
sed -e "s|^Exec=kvant |Exec=\"$HERE/kvant\" |" -e "s|^TryExec=kvant$|TryExec=$HERE/kvant|" \
    "$HERE/kvant.desktop" > "$DATA/applications/kvant.desktop"
cp "$HERE/kvant-mime.xml" "$DATA/mime/packages/kvant.xml"
cp "$HERE/kvant.png" "$DATA/icons/hicolor/256x256/apps/kvant.png"
cp "$HERE/kvant.svg" "$DATA/icons/hicolor/scalable/apps/kvant.svg"
ln -sf "$HERE/kvant" "$BIN/kvant"
refresh
echo "Kvant is in your application menu; 'kvant' is in $BIN."
