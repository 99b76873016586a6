"""Stage orchestration of one request: vision (when images) ▸ prefill ▸ decode, or colocated.

The orchestrator holds deployment handles and passes references between pools: image
embeddings and KV caches stay in Ray's object store, so they never pass through the router.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from workers.requests import GenerateRequest, ImageInput, TokenChunk


@dataclass(frozen=True, slots=True)
class SitePools:
    """Deployment handles of one site's pools; a topology uses a subset of them."""

    vision: Any = None
    prefill: Any = None
    decode: Any = None
    colocated: Any = None

    @property
    def disaggregated(self) -> bool:
        return self.colocated is None


class Orchestrator:
    def __init__(self, sites: dict[str, SitePools]) -> None:
        if not sites:
            raise ValueError("sites: the orchestrator needs at least one site's pools")
        self.sites = sites

    async def generate(
        self, request: GenerateRequest, images: list[bytes], site: str
    ) -> AsyncIterator[TokenChunk]:
        """Stream a request through its stages. `request.images` carries the placement of each
        image's tokens; the vision pool fills in where its embeddings are."""
        pools = self.sites[site]
        if images:
            request = await self._encode_images(pools, request, images)
        if not pools.disaggregated:
            async for chunk in pools.colocated.options(stream=True).generate.remote(request):
                yield chunk
            return
        prefilled = await pools.prefill.prefill.remote(request)
        yield prefilled.first
        if prefilled.first.finished:
            return
        async for chunk in pools.decode.options(stream=True).decode.remote(request, prefilled):
            yield chunk

    @staticmethod
    async def _encode_images(pools: SitePools, request: GenerateRequest, images: list[bytes]) -> GenerateRequest:
        if pools.vision is None:
            raise ValueError("messages: this deployment has no vision pool, so images cannot be served")
        if len(images) != len(request.images):
            raise ValueError(f"images: {len(images)} images for {len(request.images)} placeholders")
        refs = await pools.vision.encode.remote(images)
        placed: list[ImageInput] = [dataclasses.replace(img, embeds_ref=ref) for img, ref in zip(request.images, refs)]
        return dataclasses.replace(request, images=tuple(placed))
