"""Build step: ship the reference page's socket.io client inside the wheel.

The page needs ``socket.io.min.js`` from the npm package ``socket.io-client`` (pinned in
package.json / package-lock.json). It is not committed: building the package copies it from
``node_modules`` (running ``npm ci`` when it is missing or not the locked version) into the
built package as ``openalgo_events/demo/static/vendor/``, with its licence. Everything else is
in pyproject.toml.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CLIENT = ROOT / "node_modules" / "socket.io-client"
VENDOR = Path("openalgo_events", "demo", "static", "vendor")


def _locked_version() -> str | None:
    lock = ROOT / "package-lock.json"
    if not lock.is_file():
        return None
    packages = json.loads(lock.read_text()).get("packages", {})
    return packages.get("node_modules/socket.io-client", {}).get("version")


def _installed_version() -> str | None:
    manifest = CLIENT / "package.json"
    return json.loads(manifest.read_text()).get("version") if manifest.is_file() else None


def socketio_client() -> Path:
    """node_modules/socket.io-client/dist/socket.io.min.js at the locked version."""
    wanted = _locked_version()
    script = CLIENT / "dist" / "socket.io.min.js"
    if script.is_file() and (wanted is None or _installed_version() == wanted):
        return script
    npm = shutil.which("npm")
    if npm is None or wanted is None:
        raise SystemExit(
            "building openalgo-events needs socket.io-client for the reference page: install "
            "Node.js with npm (and build from a checkout or sdist with package-lock.json)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT,
                   check=True)
    return script


class BuildPyWithSocketIO(build_py):
    """``build_py`` plus the page's socket.io client (see the module docstring)."""

    def run(self) -> None:
        super().run()
        if self.dry_run:
            return
        try:
            script = socketio_client()
        except (SystemExit, subprocess.CalledProcessError):
            if getattr(self, "editable_mode", False):
                # An editable install finds node_modules at run time; `npm ci` can come later.
                self.warn("socket.io-client not vendored: run `npm ci` for the demo page")
                return
            raise
        target = Path(self.build_lib) / VENDOR
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(script, target / script.name)
        shutil.copy2(CLIENT / "LICENSE", target / "socket.io-client.LICENSE")


setup(cmdclass={"build_py": BuildPyWithSocketIO})
