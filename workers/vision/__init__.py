"""The vision encoder stage: image decoding and preprocessing, a CLIP vision tower and the
LLaVA projector, batched over many images, with a content-hash cache of embeddings."""
