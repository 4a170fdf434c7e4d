"""Kvant's engine: everything that is not Qt.

The GUI and the CLI use only the names re-exported by the engine's subpackages'
``__init__`` modules; nothing here imports Qt.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: importing the engine must stay fast (the CLI's --version, the GUI's start-up);
    # the inference runtime pulls in Numba and compiles kernels.
    if name in ("open_model", "Model", "prepare_runtime"):
        from engine.runtime import model

        return getattr(model, name)
    if name == "on_compile":
        from engine import _jit

        return _jit.on_compile
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
