"""One protocol, one registry: ``get_method(name)(retention=..., **opts)`` is a callable VideoTokens -> Pruned."""
from .registry import Pruner, get_method, list_methods, register, resolve_methods

from . import basic, divprune, dycoke, evs, fastvid, flashvid, holitom, tango, vidcom2, visionzip  # noqa: E402,F401,I001  (registration)

__all__ = ["Pruner", "get_method", "list_methods", "register", "resolve_methods"]
