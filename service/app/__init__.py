"""The scoring service's HTTP app: `create_app(settings, critic)` wires everything explicitly."""

from service.app.factory import create_app

__all__ = ["create_app"]
