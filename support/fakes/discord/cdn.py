"""Attachments: files the bot uploads (and test files for slash options) kept on a fake CDN, served at
/cdn/attachments/{cid}/{aid}/{name}."""

from __future__ import annotations

from aiohttp import web

from support.fakes.discord._part import Part
from support.fakes.discord.state import FakeAttachment


class Cdn(Part):
    """FakeDiscord's file store and CDN route."""

    def _store_file(self, channel_id: int, filename: str, data: bytes, ctype: str | None) -> FakeAttachment:
        att_id = self._ids.next()
        url = f"{self.http_base}/cdn/attachments/{channel_id}/{att_id}/{filename}"
        att = FakeAttachment(att_id, filename, data, ctype, url)
        self._cdn[att_id] = att
        return att

    async def _cdn_get(self, request: web.Request) -> web.Response:
        att = self._cdn.get(int(request.match_info["aid"]))
        if att is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=att.data, content_type=att.content_type or "application/octet-stream")
