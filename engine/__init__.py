"""Kvant's engine: everything that is not Qt.

The GUI and the CLI use only the names re-exported by the engine's subpackages'
``__init__`` modules; nothing here imports Qt.
"""

__version__ = "0.1.0"
