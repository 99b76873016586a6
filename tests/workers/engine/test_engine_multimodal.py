"""Greedy generation with images, token for token against `transformers`' LLaVA: image
embeddings replace the placeholder tokens during prefill, also when a chunk boundary falls
inside an image's tokens, colocated and through the prefill→decode hand-off."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from tiny_checkpoints import image_bytes

from workers.engine.config import EngineConfig
from workers.engine.llm_engine import LLMEngine
from workers.engine.sampling import SamplingParams
from workers.engine.sequence import MultimodalSpan
from workers.vision.cache import content_hash
from workers.vision.encoder import VisionEncoder

IMAGE_TOKEN = 3
MAX_NEW = 16
GREEDY = SamplingParams(max_tokens=MAX_NEW, ignore_eos=True)


def prompt_with_images(num_images: int, tokens_per_image: int, seed: int) -> list[int]:
    """Text, an image's placeholders, text, ... — placeholders already expanded, as LLaVA's processor does."""
    g = torch.Generator().manual_seed(seed)
    ids: list[int] = [1]
    for _ in range(num_images):
        ids += torch.randint(4, 384, (5,), generator=g).tolist() + [IMAGE_TOKEN] * tokens_per_image
    return ids + torch.randint(4, 384, (7,), generator=g).tolist()


def spans(prompt: list[int], embeds: list[torch.Tensor], images: list[bytes]) -> list[MultimodalSpan]:
    out, i = [], 0
    while i < len(prompt):
        if prompt[i] == IMAGE_TOKEN:
            k = len(out)
            out.append(MultimodalSpan(i, embeds[k].shape[0], content_hash(images[k]), embeds[k]))
            i += embeds[k].shape[0]
        else:
            i += 1
    return out


def expected_tokens(path, prompt: list[int], images: list[bytes]) -> list[int]:
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    pixels = AutoImageProcessor.from_pretrained(path)(
        images=[Image.open(io.BytesIO(b)).convert("RGB") for b in images], return_tensors="pt"
    )["pixel_values"]
    out = model.generate(
        input_ids=torch.tensor([prompt]), pixel_values=pixels, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module")
def cases(tiny_llava_dir):
    encoder = VisionEncoder.from_pretrained(tiny_llava_dir)
    result = []
    for n in (1, 2):
        images = [image_bytes(40 + 9 * k, 50, "PNG", seed=10 * n + k) for k in range(n)]
        prompt = prompt_with_images(n, encoder.num_image_tokens, seed=n)
        embeds = encoder.encode(images)
        result.append((prompt, spans(prompt, embeds, images), expected_tokens(tiny_llava_dir, prompt, images)))
    return result


@pytest.mark.parametrize("chunk_size", [7, 16, 512])  # 7 and 16 split the 16-token images
def test_colocated_generation_with_images_matches(tiny_llava_dir, cases, chunk_size):
    engine = LLMEngine(tiny_llava_dir, EngineConfig(chunk_size=chunk_size))
    for i, (prompt, mm, expected) in enumerate(cases):
        engine.add_request(str(i), prompt, GREEDY, mm)
    tokens: dict[str, list[int]] = {str(i): [] for i in range(len(cases))}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
    assert [tokens[str(i)] for i in range(len(cases))] == [e for _, _, e in cases]


@pytest.mark.parametrize("chunk_size", [7, 512])
def test_prefill_to_decode_with_images_matches(tiny_llava_dir, cases, chunk_size):
    prefill = LLMEngine(tiny_llava_dir, EngineConfig(mode="prefill", chunk_size=chunk_size))
    decode = LLMEngine(tiny_llava_dir, EngineConfig(mode="decode", chunk_size=chunk_size))
    for prompt, mm, expected in cases:
        first = []
        prefill.add_request("r", prompt, GREEDY, mm)
        while prefill.has_unfinished():
            first += prefill.step()
        assert first[0].handoff.mm_hashes == tuple((s.offset, s.length, s.content_hash) for s in mm)
        decode.add_handoff(first[0].handoff)
        tokens = list(first[0].new_token_ids)
        while decode.has_unfinished():
            for out in decode.step():
                tokens += out.new_token_ids
        assert tokens == expected


def test_same_placeholders_with_different_images_do_not_share_the_prefix_cache(tiny_llava_dir):
    encoder = VisionEncoder.from_pretrained(tiny_llava_dir)
    # The image right before the end of the prompt, so that it decides the first tokens.
    prompt = [1, 40, 41, 42] + [IMAGE_TOKEN] * encoder.num_image_tokens + [43]
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), (255, 255, 255)).save(buf, format="PNG")
    image_a, image_b = image_bytes(40, 50, "PNG", seed=5), buf.getvalue()
    mm_a = spans(prompt, encoder.encode([image_a]), [image_a])
    mm_b = spans(prompt, encoder.encode([image_b]), [image_b])
    expected_a = expected_tokens(tiny_llava_dir, prompt, [image_a])
    expected_b = expected_tokens(tiny_llava_dir, prompt, [image_b])
    assert expected_a != expected_b  # otherwise this test could not tell
    engine = LLMEngine(tiny_llava_dir, EngineConfig(chunk_size=64))
    for rid, mm, expected in (("a", mm_a, expected_a), ("b", mm_b, expected_b), ("a2", mm_a, expected_a)):
        engine.add_request(rid, prompt, GREEDY, mm)
        tokens = []
        while engine.has_unfinished():
            tokens += [t for o in engine.step() for t in o.new_token_ids]
        assert tokens == expected, rid


def test_bad_image_spans_fail_the_request_clearly(tiny_llava_dir, cases):
    prompt, mm, _ = cases[0]
    engine = LLMEngine(tiny_llava_dir)
    with pytest.raises(ValueError, match="mm_spans"):
        engine.add_request("outside", prompt, GREEDY, [MultimodalSpan(len(prompt) - 2, 16, "x", mm[0].embeds)])
    with pytest.raises(ValueError, match="mm_spans"):
        engine.add_request("no-embeds", prompt, GREEDY, [MultimodalSpan(mm[0].offset, 16, "x", None)])
    with pytest.raises(ValueError, match="mm_spans"):
        engine.add_request("wrong-shape", prompt, GREEDY, [MultimodalSpan(mm[0].offset, 16, "x", mm[0].embeds[:, :10])])
    assert engine.generate([prompt[:5]], GREEDY)  # still serving
