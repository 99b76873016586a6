"""Per-sequence KV regions: rows handed out and taken back, KV copied in from the paged store
when a region lacks it, pages returned to the OS on release."""

from __future__ import annotations

import sys

import torch

from workers.engine.kv_cache import Reservation, SequenceRegions
from workers.engine.sampling import SamplingParams
from workers.engine.sequence import Sequence, SequenceStatus

KVH, D, BS = 2, 4, 4


def running(request_id: str, n: int, blocks: list[int]) -> Sequence:
    seq = Sequence(request_id, list(range(n)), SamplingParams(), 0, block_table=blocks, status=SequenceStatus.RUNNING)
    return seq


def paged_store(num_blocks: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(num_blocks * BS, KVH, D, generator=g), torch.randn(num_blocks * BS, KVH, D, generator=g))]


def slots_of(seq: Sequence, start: int, end: int) -> torch.Tensor:
    return torch.tensor([seq.block_table[p // BS] * BS + p % BS for p in range(start, end)])


def test_rows_are_lowest_free_and_freed_when_a_sequence_stops():
    regions = SequenceRegions(1, 3, 32, KVH, D, torch.float32)
    paged = paged_store()
    a, b = running("a", 5, [0, 1]), running("b", 5, [2, 3])
    assert regions.assign([(a, 0), (b, 0)], paged, slots_of) == [0, 1]
    a.status = SequenceStatus.FINISHED
    c = running("c", 5, [4, 5])
    assert regions.assign([(b, 5), (c, 0)], paged, slots_of) == [1, 0]
    assert regions.row(a) is None


def test_a_region_lacking_tokens_copies_them_from_the_paged_store():
    regions = SequenceRegions(1, 2, 32, KVH, D, torch.float32)
    paged = paged_store()
    seq = running("a", 7, [5, 2])  # a prefix-cache hit or an imported hand-off: 6 tokens already in blocks
    (row,) = regions.assign([(seq, 6)], paged, slots_of)
    k_region, v_region = regions.layers[0]
    k_paged, v_paged = paged[0]
    expected = slots_of(seq, 0, 6)
    assert torch.equal(k_region[row, :, :6], k_paged[expected].transpose(0, 1))
    assert torch.equal(v_region[row, :, :6], v_paged[expected].transpose(0, 1))


def test_a_region_written_step_by_step_is_not_copied_again():
    regions = SequenceRegions(1, 2, 32, KVH, D, torch.float32)
    paged = paged_store()
    seq = running("a", 7, [5, 2])
    regions.assign([(seq, 0)], paged, slots_of)
    regions.layers[0][0][0, :, :6] = 7.0  # what the step wrote
    regions.advance([(seq, 6)])
    regions.assign([(seq, 6)], paged, slots_of)
    assert bool((regions.layers[0][0][0, :, :6] == 7.0).all())


def test_a_new_sequence_under_an_old_id_gets_a_fresh_region():
    regions = SequenceRegions(1, 2, 32, KVH, D, torch.float32)
    paged = paged_store()
    old = running("a", 4, [1])
    regions.assign([(old, 0)], paged, slots_of)
    regions.advance([(old, 4)])
    resumed = running("a", 4, [3])
    regions.assign([(resumed, 3)], paged, slots_of)
    assert torch.equal(regions.layers[0][0][0, :, :3], paged[0][0][slots_of(resumed, 0, 3)].transpose(0, 1))


def test_when_every_row_is_taken_a_sequence_outside_the_batch_lends_its_row():
    regions = SequenceRegions(1, 1, 32, KVH, D, torch.float32)
    paged = paged_store()
    a, b = running("a", 4, [0]), running("b", 4, [1])
    regions.assign([(a, 0)], paged, slots_of)
    assert regions.assign([(b, 0)], paged, slots_of) == [0]
    assert regions.row(a) is None


def test_a_reservation_reads_zeros_and_a_released_row_reads_zeros_again():
    reservation = Reservation((3, 4096), torch.float32)  # rows of 16 KiB: whole pages
    assert bool((reservation.tensor == 0).all())
    reservation.tensor.fill_(3.0)
    reservation.release_row(1)
    assert bool((reservation.tensor[1] == 0).all()) if sys.platform.startswith("linux") else True
    assert bool((reservation.tensor[0] == 3.0).all()) and bool((reservation.tensor[2] == 3.0).all())
