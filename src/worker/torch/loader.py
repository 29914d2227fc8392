"""Runs oomlab's PyTorch worker from sources given on the command line, so that the oomlab
binary alone is enough (src/worker/python.rs builds the command):

    python -c <this file> N NAME1 SOURCE1 ... NAMEn SOURCEn COMMAND [ARGS]

Each NAME is a dotted module name (``oomlab_torch.protocol``), given in dependency order (a module
imports only those before it); the last one is the entry point, with ``main(argv)``. Each module is
registered in sys.modules before its code runs (dataclasses and typing.get_type_hints look a class's
module up there), and its code is compiled under the name ``<oomlab>/oomlab_torch/protocol.py``,
with its source in linecache, so tracebacks show the file, the line and its text. ``main`` then
gets ``sys.argv`` as a script would: ``["-c", COMMAND, *ARGS]``.
"""

import sys


def load(name: str, source: str) -> object:
    import linecache
    import types

    package, _, leaf = name.rpartition(".")
    if package and package not in sys.modules:
        parent = types.ModuleType(package)
        parent.__path__ = []  # a package: its submodules import by their dotted names
        sys.modules[package] = parent
    filename = f"<oomlab>/{name.replace('.', '/')}.py"
    module = types.ModuleType(name)
    module.__file__ = filename
    module.__package__ = package
    sys.modules[name] = module
    if package:
        setattr(sys.modules[package], leaf, module)
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), module.__dict__)
    return module


def run(argv: list[str]) -> int:
    # `python -c` puts the current folder first on the path: a torch.py or types.py there must
    # not stand in for the real modules (taken off before the first import).
    import os

    sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
    count = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 0
    rest = 2 + 2 * count
    if count == 0 or len(argv) < rest:
        print("usage: python -c <loader> N NAME SOURCE ... COMMAND [ARGS]", file=sys.stderr)
        return 2
    entry = None
    for i in range(2, rest, 2):
        entry = load(argv[i], argv[i + 1])
    sys.argv = [argv[0], *argv[rest:]]
    return entry.main(sys.argv)  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(run(sys.argv))
