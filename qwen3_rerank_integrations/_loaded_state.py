"""Settings and loaded state: the one rule every scorer and score cache follows.

A scorer's public fields are its *settings*; what it builds from them (a model, a tokenizer, an engine, HTTP
clients, what it learned from a server, a database handle) is *loaded state*, kept in pydantic private
attributes. :class:`LoadedStateModel` keeps the two consistent:

- **A changed setting takes effect on the next call.** Assigning a field (validated), ``model_copy(update=...)``
  (validated too, unlike pydantic's default) or changing a list/dict setting in place (noticed at the next
  call, see :meth:`LoadedStateModel._notice_changed_containers`) drops the loaded state that depends on it; the
  next call rebuilds it from the new settings. Fields named in ``_per_call_settings`` are read afresh by every
  call, so changing them drops nothing.
- **A copy never shares loaded state.** ``copy.copy``, ``model_copy()`` and ``copy.deepcopy`` give an object that
  loads its own (a shallow copy shares the *settings'* objects: the same score cache).
- **A pickle holds settings only.** No model, client, lock or handle: the unpickled object reloads lazily on
  first use. Secrets stay ``SecretStr`` (kept, never shown).

Private attributes named in ``_carried_private`` are data, not loaded state (an in-memory cache's entries, its
hit counts): copies and pickles carry them and a setting change keeps them. Locks (``_kept_on_change``) survive a
setting change (a call in flight holds them) but a copy gets its own.

Imports pydantic only.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, PrivateAttr
from pydantic_core import PydanticUndefined
from typing_extensions import Self

__all__ = ["LoadedStateModel"]

_MISSING = object()


class LoadedStateModel(BaseModel):
    """A pydantic model whose private attributes are loaded state, rebuilt after any change of its settings."""

    # Settings every call reads afresh: changing them drops nothing.
    _per_call_settings: ClassVar[frozenset[str]] = frozenset()
    # Private attributes that are data: copied by copies and pickles, kept on a setting change.
    _carried_private: ClassVar[frozenset[str]] = frozenset()
    # Private attributes kept on a setting change (locks a call in flight holds), fresh in a copy.
    _kept_on_change: ClassVar[frozenset[str]] = frozenset({"_lock", "_counts_lock", "_containers_seen"})

    # The list/dict settings as last validated, to notice a change made in place.
    _containers_seen: dict[str, Any] | None = PrivateAttr(None)

    def model_post_init(self, context: Any, /) -> None:
        self._containers_seen = _containers(self)

    # ----------------------------------------------------------------------------------------- changes
    def __setattr__(self, name: str, value: Any) -> None:
        cls = type(self)
        if name not in cls.__pydantic_fields__:
            super().__setattr__(name, value)
        elif name in cls._per_call_settings:
            self._assign(name, value)
        else:
            with self._state_guard():
                # A list/dict changed in place and not yet noticed counts as its value as last validated.
                seen = (self.__pydantic_private__ or {}).get("_containers_seen") or {}
                before = seen[name] if name in seen else self.__dict__.get(name, _MISSING)
                self._assign(name, value)
                if not _same(before, self.__dict__.get(name, _MISSING)):
                    self._settings_changed(frozenset({name}))
                self._containers_seen = _containers(self)

    def _assign(self, name: str, value: Any) -> None:
        """Validated assignment that changes nothing when refused: pydantic leaves the new value in place when a
        model validator (one that checks several fields together) rejects it."""
        values = self.__dict__
        before, fields_set = values.get(name, _MISSING), set(self.__pydantic_fields_set__)
        try:
            super().__setattr__(name, value)
        except BaseException:
            if before is not _MISSING:
                self.__dict__[name] = before
            object.__setattr__(self, "__pydantic_fields_set__", fields_set)
            raise

    def _notice_changed_containers(self) -> None:
        """Treat a list or dict setting changed in place (``scorer.headers["X"] = ...``,
        ``scorer.engine_kwargs["max_model_len"] = ...``), which neither validation nor ``__setattr__`` sees, as an
        assignment: validated again, its loaded state dropped. A scorer calls this at the start of each call."""
        # On every call: read the private dict directly (pydantic's private-attribute lookup costs microseconds).
        private = self.__pydantic_private__
        seen = private.get("_containers_seen") if private is not None else None
        if seen is None:  # a subclass's model_post_init did not call ours
            self._containers_seen = _containers(self)
            return
        values = self.__dict__
        try:
            for name, value in seen.items():
                if values.get(name, _MISSING) != value:
                    break
            else:
                return  # the common case, on every call: nothing changed in place
        except Exception:  # an element whose == fails: _same() below calls it changed
            pass
        changed = frozenset(name for name, value in seen.items() if not _same(values.get(name, _MISSING), value))
        if not changed:
            return
        with self._state_guard():
            for name in sorted(changed):
                BaseModel.__setattr__(self, name, values[name])  # validated again; a bad value raises here
            self._settings_changed(changed)
            self._containers_seen = _containers(self)

    def _settings_changed(self, names: frozenset[str]) -> None:
        """Drop the loaded state that depends on the settings ``names``: by default all of it (every private
        attribute back to its default, but for the carried data and the locks). Called with the state guard
        held. A backend overrides it to keep what provably does not depend on ``names``."""
        kept = type(self)._carried_private | type(self)._kept_on_change
        self._release_state(self._reset_private(keep=kept))

    def _release_state(self, old: Mapping[str, Any]) -> None:
        """Free dropped loaded state (``old``: the private attributes as they were), e.g. stop an engine or
        close a handle. By default nothing: dropping the references is enough."""

    @contextlib.contextmanager
    def _state_guard(self) -> Iterator[None]:
        """Held while settings change: the object's ``_lock`` if it has one, so a call in flight ends first."""
        lock = (self.__pydantic_private__ or {}).get("_lock")
        with lock if lock is not None else contextlib.nullcontext():
            yield

    def _reset_private(self, keep: frozenset[str]) -> dict[str, Any]:
        """Put every private attribute but ``keep`` back to its default; returns the old values."""
        private = self.__pydantic_private__
        if private is None:
            return {}
        old = dict(private)
        private.update((name, value) for name, value in _private_defaults(type(self)).items() if name not in keep)
        return old

    # ----------------------------------------------------------------------------------------- copies
    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with its own loaded state (loaded again on first use). ``update`` is validated like the
        constructor's arguments (pydantic's default copies it unchecked), so a bad value raises here and a
        secret in it is hidden as at construction."""
        copied = self.__deepcopy__() if deep else self.__copy__()
        if not update:
            return copied
        fields = type(self).__pydantic_fields__
        data = {name: value for name, value in copied.__dict__.items() if name in fields}
        data.update(update)
        rebuilt = type(self)._rebuild(data)
        object.__setattr__(rebuilt, "__pydantic_fields_set__", self.model_fields_set | (set(update) & set(fields)))
        if rebuilt.__pydantic_private__ is not None:
            rebuilt.__pydantic_private__.update(copied._carried_state())
        rebuilt._restored()
        return rebuilt

    @classmethod
    def _rebuild(cls, data: dict[str, Any]) -> Self:
        """A new object from every field's value (``model_copy(update=...)``), validated."""
        return cls.model_validate(data)

    def __copy__(self) -> Self:
        state = self.__getstate__()
        state["__dict__"] = dict(state["__dict__"])
        state["__pydantic_fields_set__"] = set(state["__pydantic_fields_set__"])
        return self._from_state(state)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        return self._from_state(copy.deepcopy(self.__getstate__(), memo))

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> Self:
        made = cls.__new__(cls)
        made.__setstate__(state)
        return made

    # ----------------------------------------------------------------------------------------- pickle
    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["__pydantic_private__"] = self._carried_state()  # settings and data only: no loaded state
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        carried = state.get("__pydantic_private__") or {}
        private = _private_defaults(type(self))
        private.update((name, value) for name, value in carried.items() if name in private)
        object.__setattr__(self, "__pydantic_private__", private)
        self._restored()

    def _carried_state(self) -> dict[str, Any]:
        """The carried private data, as copies and pickles take it (a subclass copies mutable data safely)."""
        private = self.__pydantic_private__ or {}
        return {name: private[name] for name in type(self)._carried_private if name in private}

    def _restored(self) -> None:
        """Called on a copy or an unpickled object once its fields are set (a subclass registers its secrets
        for masking in a new process, say); call this one too."""
        self._containers_seen = _containers(self)


def _private_defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """Every private attribute's default (factories called), as pydantic sets them on a new object."""
    defaults = {}
    for name, attribute in cls.__private_attributes__.items():
        value = attribute.get_default(call_default_factory=True)
        if value is not PydanticUndefined:
            defaults[name] = value
    return defaults


def _containers(model: BaseModel) -> dict[str, Any]:
    fields = type(model).__pydantic_fields__
    return {
        name: _snapshot(value) for name, value in model.__dict__.items()
        if name in fields and isinstance(value, (list, dict, set))
    }


def _snapshot(value: Any) -> Any:
    try:
        return copy.deepcopy(value)
    except Exception:  # an element that cannot be deep-copied: its container's shape is still compared
        return copy.copy(value)


def _same(before: Any, after: Any) -> bool:
    if before is after:
        return True
    try:
        return bool(before == after) and type(before) is type(after)
    except Exception:  # an object whose == fails or is ambiguous (an array): call it changed
        return False
