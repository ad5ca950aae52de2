"""Inert stand-ins for everything a pickle names, and the lazy tensor references it rebuilds.

A pickle names classes and functions by dotted path and asks the loader to call them. Here every
such name becomes a :class:`StandIn` subclass that records what it was asked to do (constructor
arguments, state, items) and does nothing else: no import, no call into the named code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any


class StandIn:
    """An object a pickle asked to build: its dotted name, arguments and state, nothing more."""

    __slots__ = ("args", "state", "items", "listitems", "kwargs")
    dotted: str = "?"
    on_call: Any = None  # set per stand-in class: counts how often the pickle instantiated it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None
        self.items: dict[Any, Any] = {}
        self.listitems: list[Any] = []

    # pickle's NEWOBJ calls cls.__new__(cls, *args) and then BUILD: both only record.
    def __new__(cls, *args: Any, **kwargs: Any) -> "StandIn":
        if cls.on_call is not None:
            cls.on_call()
        obj = object.__new__(cls)
        StandIn.__init__(obj, *args, **kwargs)
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S) on a dict subclass
        self.items[key] = value

    def append(self, value: Any) -> None:  # APPEND(S) on a list subclass
        self.listitems.append(value)

    def extend(self, values: Any) -> None:
        self.listitems.extend(values)

    def __call__(self, *args: Any, **kwargs: Any) -> "StandIn":
        # A pickle may call the result of a call (getattr(__import__("os"), "system")(...)):
        # record that too, still without running anything.
        return StandIn.__new__(standin_class(f"{self.dotted}()"), *args, **kwargs)

    def __reduce__(self) -> Any:  # never re-pickled as the real class
        raise TypeError(f"stand-in for {self.dotted} cannot be pickled")

    def __repr__(self) -> str:
        return f"<stand-in {self.dotted}>"


def standin_class(dotted: str, on_call: Any = None) -> type[StandIn]:
    """A new StandIn subclass for one dotted name (kept per unpickler so names never leak)."""
    return type(f"StandIn[{dotted}]", (StandIn,),
                {"__slots__": (), "dotted": dotted, "on_call": staticmethod(on_call) if on_call else None})


@dataclass
class StorageRef:
    """A storage in the checkpoint's zip (``data/<key>``), not read until needed."""

    key: str
    dtype_name: str  # torch dtype attribute name, e.g. "float32"
    numel: int
    location: str


@dataclass
class TensorRef:
    """What ``torch._utils._rebuild_tensor_v2`` would have built, as data."""

    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool = False
    is_parameter: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def walk(root: Any) -> Iterator[Any]:
    """Every object reachable from ``root`` (each once), without recursion: a hostile pickle can
    nest deeper than Python's stack."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, StandIn):
            stack.extend((obj.args, obj.kwargs, obj.state, obj.items, obj.listitems))
