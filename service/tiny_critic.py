"""Old name of `service.tiny_critics`, kept only while `lift serve --demo` (service/cli.py's serve part) still
imports it from here; new code imports `service.tiny_critics`."""

from service.tiny_critics import FAMILIES, build_tiny_critic

__all__ = ["FAMILIES", "build_tiny_critic"]
