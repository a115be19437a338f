#!/usr/bin/env python3
"""Build a Python eventhost handler into a WebAssembly component.

    python eventhost_build.py HANDLER_DIR -o OUT.wasm [--wit WIT_DIR]

HANDLER_DIR holds ``app.py`` (the handler, using the ``eventhost`` package
beside this script) and ``handler.toml`` (its manifest). The component is
built with componentize-py (pinned in ``build-requirements.txt``), found
next to this Python interpreter or on PATH.

componentize-py gives a component every import of the world it is built
against, and the host refuses a component importing a capability its
manifest does not grant. So this script does not build against the
contract's ``handler`` world but against a world it writes into a copy of
the WIT folder: ``core`` (emit, log, config, the ``handle`` export) plus
exactly the capabilities ``handler.toml`` grants:

- ``[keyvalue]``  -> ``wasi:keyvalue/{store,atomics,batch}``
- ``[eventstore]`` -> ``eventhost:handler/event-store``
- ``[http]``      -> ``wasi:http/outgoing-handler@0.2.12`` (its WIT and that
  of its dependencies are vendored beside this script, in ``wasi-http-wit/``)

Only the standard library is used (tomllib: Python 3.11 or later).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SDK_DIR = Path(__file__).resolve().parent  # holds the `eventhost` package
WORLD = "eventhost-build-app"  # the generated world
WASI_HTTP_WIT = SDK_DIR / "wasi-http-wit"  # wasi:http and its deps, vendored
WASI_HTTP = "0.2.12"


class BuildError(Exception):
    pass


def read_manifest(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:
        raise BuildError("Python 3.11 or later is needed (for tomllib)") from None
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise BuildError(f"no manifest: {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise BuildError(f"{path} is not valid TOML: {e}") from None


def capability_imports(manifest: dict) -> list[tuple[str, list[str]]]:
    """(section, WIT import lines) for each capability the manifest grants."""
    granted = []
    if "keyvalue" in manifest:
        granted.append(("keyvalue", [
            "import wasi:keyvalue/store@0.2.0-draft;",
            "import wasi:keyvalue/atomics@0.2.0-draft;",
            "import wasi:keyvalue/batch@0.2.0-draft;",
        ]))
    if "eventstore" in manifest:
        granted.append(("eventstore", ["import event-store;"]))
    if "http" in manifest:
        granted.append(("http", [f"import wasi:http/outgoing-handler@{WASI_HTTP};"]))
    return granted


def contract_package(wit_dir: Path) -> str:
    """The `eventhost:handler@x.y.z` package the WIT folder defines."""
    for path in sorted(wit_dir.glob("*.wit")):
        found = re.search(r"^\s*package\s+(eventhost:handler@[^\s;]+)\s*;",
                          path.read_text(), re.MULTILINE)
        if found:
            return found.group(1)
    raise BuildError(f"{wit_dir} does not define the eventhost:handler package "
                     "(expected the repository's wit/ folder)")


def write_world(wit_dir: Path, into: Path, granted: list[tuple[str, list[str]]]) -> None:
    """Copies `wit_dir` to `into` and adds the world to build against."""
    package = contract_package(wit_dir)
    if any(section == "keyvalue" for section, _ in granted) and not (
        wit_dir / "deps" / "keyvalue"
    ).is_dir():
        raise BuildError(f"[keyvalue] needs {wit_dir}/deps/keyvalue (wasi:keyvalue)")
    shutil.copytree(wit_dir, into)
    if any(section == "http" for section, _ in granted):
        # The standard packages, unless the WIT folder brings its own.
        deps = into / "deps"
        deps.mkdir(exist_ok=True)
        for wit in sorted(WASI_HTTP_WIT.glob("*.wit")):
            if not (deps / wit.stem).exists() and not (deps / wit.name).exists():
                shutil.copy(wit, deps / wit.name)
    lines = [f"package {package};", "", f"world {WORLD} {{", "    include core;"]
    for _, imports in granted:
        lines += [f"    {line}" for line in imports]
    lines.append("}")
    (into / "zz-eventhost-build-world.wit").write_text("\n".join(lines) + "\n")


def find_componentize_py() -> str:
    beside = Path(sys.executable).parent / "componentize-py"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("componentize-py")
    if found:
        return found
    raise BuildError(
        "componentize-py not found next to this Python nor on PATH. Install it in a "
        "virtual environment and run this script with that environment's Python:\n"
        "  python3 -m venv .tools/python\n"
        f"  .tools/python/bin/pip install -r {SDK_DIR / 'build-requirements.txt'}\n"
        f"  .tools/python/bin/python {Path(__file__).resolve()} ..."
    )


def build(handler_dir: Path, out: Path, wit_dir: Path | None) -> None:
    if not handler_dir.is_dir():
        raise BuildError(f"{handler_dir} is not a directory")
    app = handler_dir / "app.py"
    if not app.is_file():
        raise BuildError(f"{handler_dir} has no app.py (the handler module)")
    if not re.search(r"@\s*(\w+\.)?handler\b|\bWitWorld\b", app.read_text()):
        raise BuildError(f"{app} defines no handler: decorate its handle function "
                         "with @handler (from eventhost import handler)")
    if not (SDK_DIR / "eventhost" / "__init__.py").is_file():
        raise BuildError(f"the eventhost package is not beside this script in {SDK_DIR}")
    if wit_dir is None:
        wit_dir = handler_dir / "wit"
        if not wit_dir.is_dir():
            raise BuildError(f"{wit_dir} does not exist: pass --wit with the "
                             "eventhost WIT folder (the repository's wit/)")
    if not wit_dir.is_dir():
        raise BuildError(f"--wit {wit_dir} is not a directory")

    contract_package(wit_dir)  # fails early on a folder that is not the contract
    granted = capability_imports(read_manifest(handler_dir / "handler.toml"))
    tool = find_componentize_py()
    names = ", ".join(f"[{section}]" for section, _ in granted) or "none"
    print(f"eventhost-build: {app} (capabilities: {names})")

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="eventhost-build-") as tmp:
        world_dir = Path(tmp) / "wit"
        write_world(wit_dir, world_dir, granted)
        command = [
            tool, "-d", str(world_dir), "-w", WORLD, "componentize", "app",
            "-p", str(handler_dir), "-p", str(SDK_DIR), "-o", str(out),
        ]
        print("eventhost-build: " + " ".join(command), flush=True)
        status = subprocess.run(command).returncode
    if status != 0:
        raise BuildError(f"componentize-py failed (exit status {status})")
    size = out.stat().st_size
    print(f"eventhost-build: wrote {out} ({size / (1 << 20):.1f} MiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build a Python eventhost handler (app.py + handler.toml) "
        "into a WebAssembly component.")
    parser.add_argument("handler_dir", type=Path, metavar="HANDLER_DIR",
                        help="folder holding app.py and handler.toml")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.wasm",
                        help="where to write the component")
    parser.add_argument("--wit", type=Path, metavar="WIT_DIR",
                        help="the eventhost WIT folder (default: HANDLER_DIR/wit)")
    args = parser.parse_args(argv)
    try:
        build(args.handler_dir, args.output, args.wit)
    except BuildError as e:
        print(f"eventhost-build: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
