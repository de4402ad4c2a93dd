"""Small pieces of HTTP handling the gateway and the admin endpoints share."""

from __future__ import annotations

from aiohttp import web

READ_CHUNK = 16 * 1024


async def read_capped(request: web.Request, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it is longer than `limit` bytes (the rest unread)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
