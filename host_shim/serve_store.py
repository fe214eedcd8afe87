"""`kindling serve`'s /volumes and /images: hypeman's shapes over the Python API's
volume_* and image_* methods (host_shim/api.py), each call in a worker thread.

A volume's id is its name (`kindling volume` names them); sizes are whole GiB, as
hypeman's `size_gb` (the image is sparse).  An image is `ready` as soon as it is listed:
a pull converts it before it answers.  Image names carry '/', so the routes take
`{name:path}` (hypeman's SDK sends them percent-encoded).
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import images, serve_wire as wire
from .errors import NotFound
from .serve_wire import bad_request, read_json


class Store:
    """The handlers of /volumes and /images, on a serve_app.Server (its Kindling, its threads)."""

    def __init__(self, server):
        self.server = server
        self.k = server.k

    # --- volumes ------------------------------------------------------------------------------

    def _volume_json(self, volume) -> dict:
        """(In a worker thread.)"""
        return wire.volume_json(volume, os.stat(volume.path).st_mtime,
                                wire.attachments(volume, self.k.list()))

    def _volumes(self) -> list[dict]:
        return [self._volume_json(v) for v in self.k.volume_list()]

    async def list_volumes(self, request: Request):
        return JSONResponse(await self.server.call(self._volumes))

    async def create_volume(self, request: Request):
        body = await read_json(request)
        wire.refuse_unsupported(body, {"tags": "Kindling keeps no tags",
                                       "id": "a Kindling volume's id is its name"})
        name, size_gb = wire.required_string(body, "name"), body.get("size_gb")
        if isinstance(size_gb, bool) or not isinstance(size_gb, int) or size_gb < 1:
            raise bad_request(f"size_gb: expected a whole number of GiB (at least 1), got {size_gb!r}")
        volume = await self.server.call(self.k.volume_create, name, size_gb * wire.GIB)
        return JSONResponse(await self.server.call(self._volume_json, volume), status_code=201)

    async def get_volume(self, request: Request):
        name = request.path_params["id"]
        found = [v for v in await self.server.call(self._volumes) if v["id"] == name]
        if not found:
            raise NotFound(f"no such volume: {name}")
        return JSONResponse(found[0])

    async def delete_volume(self, request: Request):
        await self.server.call(self.k.volume_rm, request.path_params["id"])
        return Response(status_code=204)

    # --- images -------------------------------------------------------------------------------

    @staticmethod
    def _image_json(described: dict) -> dict:
        return wire.image_json(described, Path(described["rootfs"]).stat().st_mtime)

    async def list_images(self, request: Request):
        described = await self.server.call(self.k.image_list)
        return JSONResponse([self._image_json(d) for d in described])

    async def create_image(self, request: Request):
        body = await read_json(request)
        wire.refuse_unsupported(body, {"credentials": "Kindling pulls with the host's registry settings",
                                       "tags": "Kindling keeps no tags"})
        name = wire.required_string(body, "name", "an image reference such as "
                                                  "docker.io/library/alpine:3")
        platform = wire.typed(body, "platform", str, "a string such as linux/amd64")
        insecure = images.insecure_hosts(home=self.k.home)
        described = await self.server.call(self.k.image_pull, name, insecure_registries=insecure,
                                           platform=platform)
        return JSONResponse(self._image_json(described), status_code=201)

    async def get_image(self, request: Request):
        described = await self.server.call(self.k.image_inspect, request.path_params["name"])
        return JSONResponse(self._image_json(described))

    async def delete_image(self, request: Request):
        await self.server.call(self.k.image_rm, request.path_params["name"])
        return Response(status_code=204)

    def routes(self, guarded) -> list[Route]:
        table = [("/volumes", "GET", self.list_volumes), ("/volumes", "POST", self.create_volume),
                 ("/volumes/{id}", "GET", self.get_volume),
                 ("/volumes/{id}", "DELETE", self.delete_volume),
                 ("/images", "GET", self.list_images), ("/images", "POST", self.create_image),
                 ("/images/{name:path}", "GET", self.get_image),
                 ("/images/{name:path}", "DELETE", self.delete_image)]
        return [Route(path, guarded(handler), methods=[method]) for path, method, handler in table]
