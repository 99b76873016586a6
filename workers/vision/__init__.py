"""The vision encoder stage (ModServe's image-encoding stage, a Ray Serve pool of its own):
image bytes in, one embedding tensor per image out, for LLaVA-architecture checkpoints.

- `preprocess`: untrusted bytes / data URLs to pixels, as `transformers`' CLIP processor does.
- `clip`, `projector`: the CLIP vision tower and LLaVA projector in plain torch.
- `loader`: `config.json` facts and the vision half of the safetensors weights.
- `cache`: the content-hash LRU of embeddings.
- `encoder`: `VisionEncoder`, which puts them together, batched.

Nothing is imported here: the router imports `workers.vision.preprocess` alone, without the model code.
"""
