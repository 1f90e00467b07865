"""How a read-model item is stored: MessagePack, read back with a JSON fallback.

Items are msgspec structs; MessagePack keeps their field names (a stored item
still says what it holds) and stores times as 12-byte timestamps instead of
ISO strings, about a quarter smaller than JSON and quicker both ways.
Versions written before items were MessagePack hold JSON objects; a JSON
object starts with ``{``, which as a MessagePack value would be a bare
integer no item can be, so :meth:`ItemCodec.decode` tells the two apart by
the first byte and reads both until a replay rewrites the version.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

T = TypeVar("T")

_JSON_OBJECT = ord("{")


class ItemCodec(Generic[T]):
    """Encoder and decoders for one item type, built once."""

    def __init__(self, kind: type[T]) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(kind)
        self._json = msgspec.json.Decoder(kind)

    def encode(self, item: T) -> bytes:
        return self._encoder.encode(item)

    def decode(self, raw: bytes) -> T:
        if raw[:1] and raw[0] == _JSON_OBJECT:
            return self._json.decode(raw)
        return self._decoder.decode(raw)
