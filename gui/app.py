"""Start the desktop app."""

from __future__ import annotations

import sys

from engine.paths import KvantPaths


def run_gui(open_path: str | None = None, argv: list[str] | None = None) -> int:
    from PySide6.QtWidgets import QApplication

    from gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(argv or sys.argv[:1])
    app.setApplicationName("Kvant")
    app.setOrganizationName("Kvant")
    window = MainWindow(KvantPaths.default(), open_path=open_path)
    window.show()
    window.start()
    return app.exec()
