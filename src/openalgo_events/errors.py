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


class MissingDependencyError(OpenAlgoEventsError, ImportError):
    """An optional dependency is not installed; the message gives the exact install command."""

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"{module} is not installed; install it with: pip install 'openalgo-events[{extra}]'"
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
    """Import an optional dependency, or fail with the install command that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, extra) from exc
