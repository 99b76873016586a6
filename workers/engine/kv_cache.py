"""Each running sequence's KV kept contiguous in virtual memory, so attention reads views.

The paged cache (`BlockManager`'s blocks, `ModelRunner.kv_caches`) stays the store that
admission, preemption, prefix sharing and hand-offs account in. Beside it, every sequence
that runs holds a *region*: row `r` of a per-layer tensor [max_num_seqs, kv_heads,
max_model_len, head_dim], where its token `p`'s keys and values also live at `[r, :, p]`.
A decode step then attends over `region[lo:hi, :, :width]`, a strided view, instead of
gathering every sequence's blocks into a padded tensor each step (vAttention's idea on a CPU).

The regions are anonymous memory mappings: the operating system commits a page only when it is
first written, so memory follows the tokens actually held, not the reservation. A region
released by a finished or preempted sequence is handed back to the OS (`madvise`), so a
long-lived replica does not keep every region at its high-water mark. Pages never written read
as zeros, and positions past a sequence's length hold zeros or an earlier sequence's finite
values: masked in attention, they contribute exactly nothing.

A sequence gets its region when it first appears in a batch; the tokens already in its blocks
(a prefix-cache hit, an imported hand-off, a chunk after the region was lost) are copied in
once from the paged store. A region is freed when its sequence is no longer running (or, when
every row is taken, lent to a sequence in the batch: the one that lost it copies its KV in again).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import torch

from workers.engine.sequence import Sequence, SequenceStatus


class Reservation:
    """A tensor over anonymous memory mapped for it alone: its pages read as zeros until
    written, are committed by the OS on first write, and can be handed back row by row.

    Zeros matter: attention masks the positions past a sequence's length, but a masked
    position's value is still multiplied by a zero weight, so it must be finite. Memory from
    the allocator may hold anything; a fresh mapping holds zeros."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        numel = 1
        for n in shape:
            numel *= n
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        # private: madvise(DONTNEED) discards a private mapping's pages; a shared one keeps them
        flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
        self._map = mmap.mmap(-1, max(nbytes, 1), flags=flags) if flags else mmap.mmap(-1, max(nbytes, 1))
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            # with huge pages, a few tokens of each head row would commit 2 MiB apiece
            self._map.madvise(mmap.MADV_NOHUGEPAGE)
        self.tensor = torch.frombuffer(self._map, dtype=dtype, count=numel).view(shape)

    def release_row(self, row: int) -> None:
        """Hand the whole pages of `tensor[row]` back to the OS; they read as zeros afterwards.
        Where madvise is missing they stay committed, holding the row's old (finite) values."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        row_bytes = self.tensor[0].numel() * self.tensor.element_size()
        page = mmap.PAGESIZE
        first = -(-(row * row_bytes) // page) * page
        last = (row + 1) * row_bytes // page * page
        if last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)


@dataclass(slots=True)
class _Holder:
    seq: Sequence
    filled: int  # positions [0, filled) of the region hold this sequence's KV


class SequenceRegions:
    """Contiguous per-sequence KV beside the paged store, one region per running sequence."""

    def __init__(self, num_layers: int, max_num_seqs: int, max_model_len: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
        shape = (max_num_seqs, num_kv_heads, max_model_len, head_dim)
        # mapped, never torch.zeros: zeroing would commit every page of the reservation up front
        self._reservations = [(Reservation(shape, dtype), Reservation(shape, dtype)) for _ in range(num_layers)]
        self.layers = [(k.tensor, v.tensor) for k, v in self._reservations]
        self.max_model_len = max_model_len
        self._holders: list[_Holder | None] = [None] * max_num_seqs
        self._row_of: dict[str, int] = {}

    def row(self, seq: Sequence) -> int | None:
        return self._row_of.get(seq.request_id)

    def assign(self, seqs: list[tuple[Sequence, int]], paged: list[tuple[torch.Tensor, torch.Tensor]], paged_slots) -> list[int]:
        """The region row of each (sequence, first position computed this step).

        Frees the rows of sequences that stopped running, gives new sequences the lowest free
        rows (keeping the rows decodes span short), and copies from the paged store whatever
        a region lacks before the step's first position. `paged_slots(seq, start, end)` gives
        the paged cache slots of positions [start, end)."""
        self._free_stopped()
        in_batch = {id(seq) for seq, _ in seqs}
        rows: list[int] = []
        for seq, start in seqs:
            r = self._row_of.get(seq.request_id)
            if r is not None and self._holders[r].seq is not seq:  # the same id, a new sequence (resumed)
                self._free(r)
                r = None
            if r is None:
                r = self._vacant_row(in_batch)
                self._holders[r] = _Holder(seq, 0)
                self._row_of[seq.request_id] = r
            holder = self._holders[r]
            if holder.filled < start:  # a region holding more already has these tokens' KV
                self._copy_in(r, paged_slots(seq, 0, start), paged)
                holder.filled = start
            rows.append(r)
        return rows

    def _vacant_row(self, in_batch: set[int]) -> int:
        """The lowest free row; when none is (sequences driven by hand, never marked as
        stopped), the first row held by a sequence outside this batch, which will copy its
        KV in again from the paged store if it comes back."""
        if None in self._holders:
            return self._holders.index(None)
        for r, holder in enumerate(self._holders):
            if id(holder.seq) not in in_batch:
                self._free(r)
                return r
        raise RuntimeError("kv regions: a batch holds more sequences than max_num_seqs")

    def advance(self, seqs: list[tuple[Sequence, int]]) -> None:
        """Record that each (sequence, end position) wrote its KV up to `end`."""
        for seq, end in seqs:
            self._holders[self._row_of[seq.request_id]].filled = end

    def _copy_in(self, r: int, slots: torch.Tensor, paged: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        n = len(slots)
        for (k_region, v_region), (k_paged, v_paged) in zip(self.layers, paged):
            k_region[r, :, :n] = k_paged[slots].transpose(0, 1)
            v_region[r, :, :n] = v_paged[slots].transpose(0, 1)

    def _free_stopped(self) -> None:
        for r, holder in enumerate(self._holders):
            if holder is not None and holder.seq.status is not SequenceStatus.RUNNING:
                self._free(r)

    def _free(self, r: int) -> None:
        holder = self._holders[r]
        self._holders[r] = None
        if self._row_of.get(holder.seq.request_id) == r:
            del self._row_of[holder.seq.request_id]
        for k, v in self._reservations:
            k.release_row(r)
            v.release_row(r)
