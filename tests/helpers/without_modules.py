"""`python without_modules.py MOD[,MOD...] SCRIPT ARGS...`: run SCRIPT as `python SCRIPT ARGS...` would, with those
modules unimportable, as on a machine where the package that provides them is not installed."""

import runpy
import sys

if __name__ == "__main__":
    for name in sys.argv[1].split(","):
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` then raises ModuleNotFoundError
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
