"""The registry of methods: each method registers itself by name and declares what
the shared layers need from it (:mod:`adverse_vision.methods.base`).

The built-in methods are imported the first time their name is asked for; a method
defined anywhere else (a project of its own, a test) registers with ``@register`` and
is then trained, evaluated and predicted like the built-in ones::

    @methods.register("mine")
    class Mine(methods.Method):
        datasets = {"scenes": catalog.scenes}
        ...

    cfg = methods.config("mine")  # the keys every run has + the method's own
"""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

import ml_collections

from adverse_vision import config as config_lib
from adverse_vision.config import ConfigError
from adverse_vision.methods.base import Converter, Method

__all__ = ["Converter", "Method", "build", "config", "converter", "get", "names", "register",
           "validate"]

#: Built-in method name -> the module that registers it.
_BUILTIN = {
    "detection": "adverse_vision.methods.detection",
    "togethernet": "adverse_vision.methods.togethernet",
    "dnhl": "adverse_vision.methods.dnhl",
    "bdlf": "adverse_vision.methods.bdlf",
    "depth_dehaze": "adverse_vision.methods.depth_dehaze",
}
_REGISTRY: dict[str, type[Method]] = {}

M = TypeVar("M", bound=type[Method])


def register(name: str) -> Callable[[M], M]:
    """Class decorator: registers a :class:`Method` subclass as ``cfg.method == name``."""
    def wrap(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register({name!r}): {cls!r} is not a Method subclass")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered "
                             f"({_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return wrap


def names() -> tuple[str, ...]:
    """Every method that can be asked for: the built-in ones and those registered."""
    return tuple(dict.fromkeys((*_BUILTIN, *_REGISTRY)))


def get(name: str) -> type[Method]:
    """The method class registered as ``name``."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        raise ConfigError(f"config key 'method' is {name!r}; no such method"
                          f"{config_lib.suggest(str(name), names())}; known: {names()}")
    return _REGISTRY[name]


def config(name: str) -> ml_collections.ConfigDict:
    """The keys every run has plus method ``name``'s own, at their defaults."""
    cfg = config_lib.base_config()
    cfg.method = name
    config_lib.merge_defaults(cfg, get(name).defaults())
    return cfg


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks a config once, before anything is built: every key against the keys of
    its method (unknown keys named with the closest known one), then the values of the
    shared keys and of the method's. Raises ConfigError."""
    if "method" not in cfg:
        raise ConfigError("config key 'method' is missing")
    method = get(cfg.method)
    config_lib.validate(cfg, reference=config(cfg.method))
    method.check_config(cfg)
    return cfg


def build(cfg: ml_collections.ConfigDict) -> Method:
    """The method object of a (validated) config."""
    return get(cfg.method)(cfg)


def converter(network: str) -> tuple[type[Method], Converter]:
    """The method that reads the official ``network``'s weights, and its converter."""
    for name in names():
        method = get(name)
        if network in method.converters:
            return method, method.converters[network]
    known = sorted({n for name in names() for n in get(name).converters})
    raise ValueError(f"unknown network {network!r}; known: {', '.join(known)}")
