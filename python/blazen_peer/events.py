"""Events: typed messages that steps receive and emit.

Subclasses of :class:`Event` declare fields with annotations and become
dataclasses. Each class carries its routing chain (its wire name and those of
its Event ancestors), so a step that accepts a base class receives subclasses.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, dataclass_transform

from . import _native, _wire_json
from ._grammar import with_article
from .errors import EncodeError

__all__ = ["Event", "GenericEvent", "StartEvent", "StopEvent", "event_type_name"]

# Event classes by wire name, so streamed events arrive as their own class.
# The last class defined under a name wins (re-imports, reloads).
_CLASSES_BY_NAME: dict[str, type[Event]] = {}


def stable_module_name(module: str) -> str:
    """The module name that names events and bare ``@step`` ids defined in ``module``.

    A script's own module is ``__main__`` when it runs as ``python FILE.py`` or
    ``python -m NAME``, but ``FILE`` (its file's stem, as ``blazen-peer serve
    FILE.py`` and ``import FILE`` name it) when it is imported. Names made from
    ``__main__`` would change with how the process started, so a client that
    imports the class would not recognize the peer's events: ``__main__`` is
    replaced by the module name the file has when imported (``NAME`` of
    ``python -m NAME``, else the file's stem). Code with no file (``python -c``,
    a REPL) keeps ``__main__``.
    """
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if isinstance(name, str) and name and name != "__main__":
        return name
    file = getattr(main, "__file__", None)
    if isinstance(file, str) and file.endswith(".py"):
        path = Path(file)
        return path.parent.name if path.name == "__init__.py" else path.stem
    return module


@dataclass_transform()
class Event:
    """Base of all events. Subclass it and annotate fields::

        class Analyzed(Event):
            words: int
            document: str

    A subclass without an ``__init__`` of its own becomes a dataclass
    (``Analyzed(words=4, document="...")``); ``event_type=`` in its class line sets
    its wire name (default: ``module.QualName``, see :func:`event_type_name`).
    """

    __event_type__: ClassVar[str] = "blazen::Event"
    _blazen_types: ClassVar[_native.EventTypes]

    def __init_subclass__(cls, *, event_type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if event_type is None:
            declared = cls.__dict__.get("__event_type__")
            module = stable_module_name(cls.__module__)
            event_type = declared or f"{module}.{cls.__qualname__}"
        cls.__event_type__ = event_type
        if "__init__" not in cls.__dict__:
            dataclasses.dataclass(cls)
        cls._blazen_types = _native.EventTypes(
            [base.__event_type__ for base in cls.__mro__ if issubclass(base, Event)]
        )
        _CLASSES_BY_NAME[event_type] = cls

    def to_dict(self) -> dict[str, Any]:
        """The event's fields as a dict (JSON-ready when the fields are)."""
        if dataclasses.is_dataclass(self):
            return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return dict(vars(self))


Event._blazen_types = _native.EventTypes([Event.__event_type__])


class StartEvent(Event, event_type="blazen::StartEvent"):
    """The first event of every run; carries the run's input.

    ``ev.data`` is the input; when it is a JSON object its keys are also
    attributes (``ev.document``).
    """

    data: Any

    def __init__(self, data: Any = None, /, **fields: Any) -> None:
        if fields:
            if data is not None and not isinstance(data, Mapping):
                raise TypeError("StartEvent takes one input value or keyword fields, not both")
            data = {**(data or {}), **fields}
        self.data = data

    def __getattr__(self, name: str) -> Any:
        data = self.__dict__.get("data")
        if isinstance(data, Mapping) and name in data:
            return data[name]
        raise AttributeError(f"StartEvent has no field {name!r}; {_describe_input(data, name)}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StartEvent) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StartEvent({self.data!r})"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data) if isinstance(self.data, Mapping) else {"data": self.data}


def _describe_input(data: Any, name: str) -> str:
    """What a StartEvent's input is, for a step that asked it for field ``name``."""
    if isinstance(data, Mapping):
        return f"the run's input has keys {sorted(data)}"
    if data is None:
        return f"the run's input is null; send a JSON object with key {name!r}"
    kind = with_article(_json_type(data))
    return f"the run's input is {kind}, not an object with keys (ev.data holds it)"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


class StopEvent(Event, event_type="blazen::StopEvent"):
    """Ends the run; ``result`` is what the caller receives."""

    result: Any = None


def event_type_name(cls: type[Event]) -> str:
    """The wire name of an event class: ``module.QualName`` (a script's file name
    stands for ``__main__``, see ``stable_module_name()``) unless set with
    ``event_type=``."""
    return cls.__event_type__


class GenericEvent(Event, event_type="blazen::GenericEvent"):
    """A streamed event whose type this process does not define.

    ``event_type`` is its wire name on the peer, ``data`` its fields; each field
    is also an attribute (``ev.epoch``), except fields named ``event_type`` or
    ``data``, which only ``ev.data[...]`` reaches. Writing it to another stream
    forwards it under its original name.
    """

    event_type: str
    data: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        # Called only for names that are not attributes: the event's own fields.
        data = self.__dict__.get("data")
        if isinstance(data, Mapping) and name in data:
            return data[name]
        keys = sorted(data) if isinstance(data, Mapping) else []
        raise AttributeError(
            f"event {self.__dict__.get('event_type')!r} has no field {name!r}; "
            f"its fields are {keys}"
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


def stream_payload(event: Event) -> tuple[str, bytes]:
    """(wire name, JSON of the fields) of an event written to a stream."""
    if not isinstance(event, Event):
        raise TypeError(
            f"write_event_to_stream takes an Event, got {type(event).__name__}; "
            "define a subclass of blazen_peer.Event for it"
        )
    name = event.event_type if isinstance(event, GenericEvent) else type(event).__event_type__
    try:
        encoded = _wire_json.dumps(event.to_dict())
    except (TypeError, ValueError) as exc:
        raise EncodeError(
            f"event {name!r} cannot be streamed: its fields are not JSON-serializable ({exc}); "
            "streamed events travel as JSON, so keep large or opaque values in session refs"
        ) from exc
    return name, encoded.encode()


def from_stream(name: str, data_json: bytes) -> Event:
    """A streamed event as its own class when this process defines one, else a GenericEvent."""
    data = json.loads(data_json)
    cls = _CLASSES_BY_NAME.get(name)
    if cls is not None and cls is not GenericEvent and isinstance(data, dict):
        try:
            return cls(**data)
        except TypeError:
            pass  # the peer's class has other fields than ours: keep the data as sent
    return GenericEvent(event_type=name, data=data if isinstance(data, dict) else {"data": data})
