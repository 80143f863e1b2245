"""``with`` support for the clients: leaving the block calls ``close()``."""

from __future__ import annotations

from typing import TypeVar

_Client = TypeVar("_Client", bound="Closing")  # typing.Self needs 3.11; the client supports 3.9


class Closing:
    """Mixin for a client that defines ``close()``: ``with Client(...) as c:`` closes it on the way out."""

    def __enter__(self: _Client) -> _Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
