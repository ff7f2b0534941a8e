"""The decode state: the one owner of a batch's KV cache, attention mask and positions, and the
only caller of `session.run`. Generation, eval, bench, parity, the serving engine and batch jobs
all drive a model through it: `prefill` adds rows, `step` feeds a token per row, `keep` / `compact`
drop rows.

Two layouts, one interface:
- `GrowingCache` runs the portable `model.onnx` (optimum's interface): left-padded rows, a past that
  the graph copies into a longer `present` every step. Rows join by zero-padding on the left (pads
  are masked out) and leave by slicing, as text-generation-inference's CausalLMBatch does. Between
  steps the cache stays where the session put it (on the GPU under CUDA); rows joining or leaving
  go through host copies.
- `SlotCache` runs the in-place graph: one preallocated buffer per layer and kind, [rows, H, L, D],
  bound as both past and present, so GroupQueryAttention appends the new token where it lies; every
  row starts at slot position 0 and attends to its own length only (per-row `seqlens_k`), so a row's
  numbers never depend on its neighbours. It can also take a prompt in parts (`prefill_part`), so
  a server interleaves a long prompt with the other rows' steps."""

from __future__ import annotations

import mmap
from collections.abc import Sequence

import numpy as np

from ortgen.errors import ModelFolderError
from ortgen.model import Model

_LAST_ONLY = np.array([1], dtype=np.int64)  # logits_to_keep: the last position only
_ALL = np.array([0], dtype=np.int64)  # logits_to_keep: every position


class DecodeState:
    """A batch of rows being decoded; see the module docstring."""

    def __init__(self, model: Model) -> None:
        from ortgen.session import import_onnxruntime

        self.model = model
        self.manifest = model.manifest
        self._ortvalue = import_onnxruntime().OrtValue.ortvalue_from_numpy
        names = model.manifest.tensors
        self._past = _per_layer(model, names.past_key, names.past_value)
        self._present = _per_layer(model, names.present_key, names.present_value)

    @staticmethod
    def for_model(model: Model) -> DecodeState:
        return SlotCache(model) if model.slots else GrowingCache(model)

    @property
    def rows(self) -> int:
        raise NotImplementedError

    def prefill(
        self, prompts: Sequence[Sequence[int]], all_logits: bool = False, hidden: bool = False
    ) -> np.ndarray:
        """Append one row per prompt. → last-position logits [N, V] float32, or with all_logits
        [N, T, V] for every position, rows left-padded to the longest prompt (pads hold zeros).
        hidden: the final hidden states (after ln_f) instead, [N, T, D] float32, left-padded."""
        raise NotImplementedError

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Feed one token per row. ids: [rows] int → logits [rows, V] float32."""
        raise NotImplementedError

    # Chunked prefill: a prompt fed in parts gives bit for bit the numbers of a whole prefill.
    chunked = False  # whether prefill_part takes parts shorter than the prompt

    @property
    def cached(self) -> int:
        """Tokens of the row being added that earlier prefill_part calls fed (0: none)."""
        return 0

    def prefill_part(self, prompt: Sequence[int], end: int) -> np.ndarray | None:
        """Feed prompt[cached:end] into the row being added. When end reaches len(prompt) the
        row joins the batch: → its last-position logits [V] float32; before that None. A part
        is never one token of a longer prompt (that runs another kernel path): see `part_end`.
        Without `chunked`, whole prompts only."""
        if end != len(prompt):
            raise ValueError(f"{type(self).__name__} takes whole prompts, not part :{end}")
        return self.prefill([prompt])[0]

    def drop_part(self) -> None:
        """Forget the row being added (its request was cancelled)."""

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (ascending indices), in that order: finished rows leave the batch."""
        raise NotImplementedError

    def compact(self, rows: Sequence[int]) -> list[int]:
        """Keep only `rows` (ascending indices), in whichever order moves the least cache. → the
        kept rows' old indices in their new order (the caller reorders its rows alike)."""
        self.keep(rows)
        return list(rows)

    def select(self, rows: Sequence[int]) -> None:
        """New row j continues old row rows[j]: any order, repeats allowed (beam search's
        parents: a beam dropped, another one copied)."""
        raise NotImplementedError

    def _first_output(self, hidden: bool) -> str:
        """The logits, or the final hidden states where the graph has them."""
        if not hidden:
            return self.manifest.tensors.logits
        name = self.manifest.tensors.hidden_state
        if not name:
            raise ModelFolderError(
                f"{self.model.folder} has no hidden-state output (exported by an older ortgen): "
                "re-export it with `ortgen export` to get features"
            )
        return name

    def _feeds(self, ids: np.ndarray, positions: np.ndarray, all_logits: bool) -> dict:
        """Inputs common to both graphs. ids, positions: [B, T] int64."""
        names = self.manifest.tensors
        feeds = {names.input_ids: ids, names.position_ids: positions}
        if names.logits_to_keep:
            feeds[names.logits_to_keep] = _ALL if all_logits else _LAST_ONLY
        return feeds


def part_end(length: int, cached: int, budget: int) -> int:
    """Where the next part of a `length`-token prompt ends, `cached` tokens being fed already:
    at most `budget` tokens (≥ 2), but never leaving or making a one-token part of a longer
    prompt (a one-token run takes the decode path, whose numbers differ in the last bits)."""
    end = min(length, cached + max(budget, 2))
    return length if length - end == 1 else end


def _per_layer(model: Model, key: str, value: str) -> list[str]:
    """[key 0, value 0, key 1, value 1, …] from `{i}` name templates."""
    return [name.format(i=i) for i in range(model.manifest.num_layers) for name in (key, value)]


class GrowingCache(DecodeState):
    """Left-padded rows over the portable graph; the past grows by one copy per step."""

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        m = self.manifest
        self._mask = np.zeros((0, 0), dtype=np.int64)  # [B, P] 1 = real token
        # 2L × [B, H, P, D]: numpy arrays, or the last run's presents as ONNX Runtime values where
        # the session put them — on the GPU under CUDA, so that a step moves its tokens and logits
        # over the bus, not the whole cache twice. Rows join and leave through host copies.
        self._cache = [
            np.zeros((0, m.num_heads, 0, m.head_dim), dtype=m.kv_dtype) for _ in self._past
        ]
        self._device = "cuda" if _on_cuda(model.session) else "cpu"
        self._inputs = {i.name for i in model.session.get_inputs()}

    @property
    def rows(self) -> int:
        return self._mask.shape[0]

    def prefill(
        self, prompts: Sequence[Sequence[int]], all_logits: bool = False, hidden: bool = False
    ) -> np.ndarray:
        ids, mask = _left_pad(prompts, self.model.pad_id)  # [N, T]
        m = self.manifest
        empty = np.zeros((len(prompts), m.num_heads, 0, m.head_dim), dtype=m.kv_dtype)
        positions = _prefill_positions(mask)
        first = self._first_output(hidden)
        every = all_logits or hidden  # the hidden states come from after logits_to_keep's slice
        out, cache = self._run(ids, mask, positions, [empty] * len(self._past), every, first)
        self._join(mask, cache)
        if hidden:  # [N, T, D]; pads hold zeros, as for SlotCache
            return np.where(mask[..., None] == 1, out.astype(np.float32), np.float32(0))
        return out if all_logits else out[:, -1]

    def step(self, ids: np.ndarray) -> np.ndarray:
        self._mask = np.concatenate([self._mask, np.ones((self.rows, 1), np.int64)], axis=1)
        positions = self._mask.sum(axis=1, keepdims=True) - 1  # [B, 1]: real tokens before
        tokens = np.asarray(ids, dtype=np.int64).reshape(-1, 1)  # [B, 1]
        logits, self._cache = self._run(tokens, self._mask, positions, self._cache)
        return logits[:, -1]

    def select(self, rows: Sequence[int]) -> None:
        self.keep(rows)  # fancy indexing: any order, repeats allowed

    def keep(self, rows: Sequence[int]) -> None:
        index = np.asarray(rows, dtype=np.int64)
        if np.array_equal(index, np.arange(self.rows)):
            return  # every row stays: the cache stays where it is
        self._mask = self._mask[index]
        self._cache = [_host(c)[index] for c in self._cache]
        real = np.flatnonzero(self._mask.any(axis=0))  # columns some row still attends to
        start = int(real[0]) if real.size else self._mask.shape[1]
        if start:  # drop leading columns that are padding for every row
            self._mask = self._mask[:, start:]
            self._cache = [c[:, :, start:] for c in self._cache]

    def _run(
        self, ids, mask, positions, cache, all_logits=False, first: str | None = None
    ) -> tuple[np.ndarray, list]:
        """One graph run → logits [B, T', V] (or the `first` output) as numpy, presents 2L ×
        [B, H, P + T, D] as ONNX Runtime values. A step (one token a row) runs through an IO
        binding that leaves the presents on the session's device; a prompt through
        run_with_ort_values, which also takes `logits_to_keep` (an overridable initializer, which
        an IO binding cannot bind: without it every position's logits would be computed)."""
        feeds = self._feeds(ids, positions, all_logits)
        feeds[self.manifest.tensors.attention_mask] = mask
        feeds.update(zip(self._past, cache, strict=True))
        names = [first or self.manifest.tensors.logits, *self._present]
        if ids.shape[1] > 1:
            values = {
                name: self._ortvalue(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
                for name, v in feeds.items()
            }
            out, *present = self.model.session.run_with_ort_values(names, values)
            return out.numpy(), present
        binding = self.model.session.io_binding()
        for name, value in feeds.items():  # the binding borrows the arrays: kept in `feeds`
            if name not in self._inputs:
                continue  # logits_to_keep: at one token a row, every position is the last
            if isinstance(value, np.ndarray):
                feeds[name] = np.ascontiguousarray(value)
                binding.bind_cpu_input(name, feeds[name])
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output(names[0], "cpu")
        for name in self._present:
            binding.bind_output(name, self._device)
        self.model.session.run_with_iobinding(binding)
        out, *present = binding.get_outputs()
        return out.numpy(), present

    def _join(self, mask: np.ndarray, cache: list[np.ndarray]) -> None:
        """Append rows, zero-padding the shorter side on the left. mask: [N, P']."""
        if not self.rows:  # the first rows: their cache stays where the run left it
            self._mask, self._cache = mask, cache
            return
        width = max(self._mask.shape[1], mask.shape[1])
        self._mask = np.concatenate([_pad_left(self._mask, width), _pad_left(mask, width)])
        self._cache = [
            np.concatenate(
                [_pad_left(_host(old), width, axis=2), _pad_left(_host(new), width, axis=2)]
            )
            for old, new in zip(self._cache, cache, strict=True)
        ]


def _on_cuda(session) -> bool:
    return session.get_providers()[0] == "CUDAExecutionProvider"


def _host(value) -> np.ndarray:
    """A cache tensor as a numpy array (an ONNX Runtime value is copied out of its device)."""
    return value if isinstance(value, np.ndarray) else value.numpy()


def _stack_left_padded(rows: list[np.ndarray]) -> np.ndarray:
    """[T_i, V] arrays → [N, max T, V], each right-aligned (zeros before)."""
    width = max(len(r) for r in rows)
    return np.stack([_pad_left(r, width, axis=0) for r in rows])


def _pad_left(array: np.ndarray, width: int, axis: int = 1) -> np.ndarray:
    """Zeros before `array` along `axis` up to `width`."""
    missing = width - array.shape[axis]
    if not missing:
        return array
    pad = [(0, 0)] * array.ndim
    pad[axis] = (missing, 0)
    return np.pad(array, pad)


def left_padded(
    prompts: Sequence[Sequence[int]], pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """transformers' batch layout of `prompts` (for oracles that feed it): input_ids, attention
    mask and position ids, all [N, T] int64, pads first."""
    ids, mask = _left_pad(prompts, pad_id)
    return ids, mask, _prefill_positions(mask)


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad prompts to one length. → input_ids [N, T], attention_mask [N, T] (int64)."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def _prefill_positions(mask: np.ndarray) -> np.ndarray:
    """Positions count real tokens only: cumsum(mask) − 1; pads get 1, as transformers does.
    mask: [N, T] → [N, T] int64."""
    positions = np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 1, positions).astype(np.int64)


# Prompt tokens per graph run in SlotCache.prefill: the activations of a run grow with its tokens
# (a 900-token prompt whole: ~25 MB more peak memory), its speed stops growing well below this.
PREFILL_PART = 256


class SlotCache(DecodeState):
    """Rows in preallocated slots over the in-place graph; nothing is copied per step."""

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        m = self.manifest
        self._seqlens, self._total = m.inplace["seqlens_k"], m.inplace["total_length"]
        self._lengths = np.zeros(0, dtype=np.int32)  # [rows] tokens cached per row
        self._cached = 0  # prompt tokens of the row being added (slot `rows`), prefill_part's
        # One [slots, H, max_positions, D] buffer per layer and kind. np.zeros maps pages lazily:
        # memory is spent only where a row has written tokens.
        self._buffers = [self._zeros(0) for _ in self._past]
        self._bound = None  # (slots, buffers, IO binding) of the last run: see _binding

    @property
    def rows(self) -> int:
        return len(self._lengths)

    def prefill(
        self, prompts: Sequence[Sequence[int]], all_logits: bool = False, hidden: bool = False
    ) -> np.ndarray:
        if self._cached:
            raise ValueError("prefill() while prefill_part() is adding a row")
        first, every = self._first_output(hidden), all_logits or hidden
        out = []
        for prompt in prompts:  # alone: a row's numbers never depend on the others
            if not every:  # in parts: a long prompt's activations stay small, the same numbers
                result = None
                while result is None:
                    result = self.prefill_part(
                        prompt, part_end(len(prompt), self._cached, PREFILL_PART)
                    )
                out.append(result)
                continue
            result = self._feed(prompt, 0, len(prompt), every, first)[0]
            out.append(result.astype(np.float32, copy=False))
            self._lengths = np.append(self._lengths, np.int32(len(prompt)))
        return _stack_left_padded(out) if every else np.stack(out)

    chunked = True

    @property
    def cached(self) -> int:
        return self._cached

    def prefill_part(self, prompt: Sequence[int], end: int) -> np.ndarray | None:
        start = self._cached
        if not (start < end <= len(prompt) and (end - start > 1 or len(prompt) == 1)):
            raise ValueError(f"part {start}:{end} of a {len(prompt)}-token prompt")
        logits = self._feed(prompt, start, end)
        if end < len(prompt):
            self._cached = end
            return None
        self._cached = 0
        self._lengths = np.append(self._lengths, np.int32(end))
        return logits[0, -1]

    def drop_part(self) -> None:
        self._cached = 0

    def step(self, ids: np.ndarray) -> np.ndarray:
        tokens = np.asarray(ids, dtype=np.int64).reshape(-1, 1)  # [B, 1]
        positions = self._lengths[:, None].astype(np.int64)  # [B, 1]: the new token's slot
        total = int(self._lengths.max()) + 1
        logits = self._run(tokens, positions, slice(0, self.rows), self._lengths, total, False)
        self._lengths = self._lengths + 1
        return logits[:, -1]

    def keep(self, rows: Sequence[int]) -> None:
        # ascending: a slot moves down, never up; a row being added follows the kept rows
        for target, source in enumerate(rows):
            self._move(source, target, int(self._lengths[source]))
        self._move(self.rows, len(rows), self._cached)
        self._lengths = self._lengths[np.asarray(rows, dtype=np.int64)]

    def compact(self, rows: Sequence[int]) -> list[int]:
        # The rows beyond the new count fill the slots of those that left below it: one copy per
        # row that left, where keep() moves every row after it down one slot.
        count, kept = len(rows), set(rows)
        order = list(range(count))
        holes = [slot for slot in order if slot not in kept]
        for hole, source in zip(holes, [r for r in rows if r >= count], strict=True):
            order[hole] = source
            self._move(source, hole, int(self._lengths[source]))
        self._move(self.rows, count, self._cached)  # its slot is free now
        self._lengths = self._lengths[np.asarray(order, dtype=np.int64)]
        return order

    def _move(self, source: int, target: int, used: int) -> None:
        """Copy slot `source`'s first `used` cached positions to slot `target`."""
        if target != source and used:
            for buffer in self._buffers:
                buffer[target, :, :used] = buffer[source, :, :used]

    def select(self, rows: Sequence[int]) -> None:
        if self._cached:
            raise ValueError("select() while a row is being added")
        rows = [int(r) for r in rows]
        self._reserve(len(rows))
        moves = [(target, source) for target, source in enumerate(rows) if target != source]
        # A source slot that another row overwrites is read from a copy of its used prefix.
        overwritten = {target for target, _ in moves}
        saved = {
            source: [b[source, :, : self._lengths[source]].copy() for b in self._buffers]
            for _, source in moves
            if source in overwritten
        }
        for target, source in moves:
            used = int(self._lengths[source])
            for k, buffer in enumerate(self._buffers):
                prefix = saved[source][k] if source in saved else buffer[source, :, :used]
                buffer[target, :, :used] = prefix
        self._lengths = self._lengths[np.asarray(rows, dtype=np.int64)]

    def _feed(self, prompt, start: int, end: int, all_logits: bool = False, first=None):
        """Run prompt[start:end] into slot `rows` (the row being added), positions start… on
        top of its first `start` cached tokens. → as `_run`."""
        row = self.rows
        self._reserve(row + 1)
        ids = np.asarray([prompt[start:end]], dtype=np.int64)  # [1, T]
        positions = np.arange(start, end, dtype=np.int64)[None]  # [1, T]
        seqlens = np.array([end - 1], dtype=np.int32)
        return self._run(ids, positions, slice(row, row + 1), seqlens, end, all_logits, first)

    def _run(self, ids, positions, rows: slice, seqlens, total: int, all_logits: bool, first=None):
        """One graph run with the cache buffers bound as past and present. → logits [B, T', V]
        (or the `first` output: the hidden states [B, T, D])."""
        output = first or self.manifest.tensors.logits
        binding = self._binding(rows, output)
        binding.bind_output(output, "cpu")  # unallocated again: a fresh array each run
        feeds = self._feeds(ids, positions, all_logits)
        feeds[self._seqlens] = np.ascontiguousarray(seqlens, dtype=np.int32)  # [B] = length - 1
        feeds[self._total] = np.array(total, dtype=np.int32)  # longest row after this run
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        self.model.session.run_with_iobinding(binding)
        # the first output only: get_outputs() wraps all 2L + 1 (where this onnxruntime can)
        outputs = getattr(binding, "get_outputs_as_ortvaluevector", binding.get_outputs)()
        return outputs[0].numpy()

    def _binding(self, rows: slice, output: str):
        """An IO binding with `output` first (get_outputs()[0]) and the cache of slots `rows` bound
        as past and present (the same memory in and out: appended in place). Kept while the
        slots, output and buffers stay the same — every decode step of a steady batch — so a step
        rebinds only its few small inputs. Every run rebinds all of them (the binding borrows
        their numpy memory, which the previous run's feeds no longer own)."""
        key = (rows.start, rows.stop, output)
        if self._bound is not None and self._bound[0] == key and self._bound[1] is self._buffers:
            return self._bound[2]
        binding = self.model.session.io_binding()
        binding.bind_output(output, "cpu")
        for past, present, buffer in zip(self._past, self._present, self._buffers, strict=True):
            shared = self._ortvalue(self._layout(buffer[rows]))
            binding.bind_ortvalue_input(past, shared)
            binding.bind_ortvalue_output(present, shared)
        self._bound = (key, self._buffers, binding)
        return binding

    def _reserve(self, slots: int) -> None:
        """At least `slots` rows of buffer, keeping the cached tokens of existing rows."""
        have = self._buffers[0].shape[0]
        if slots <= have:
            return
        grown = [self._zeros(max(slots, 2 * have)) for _ in self._buffers]
        for row, used in enumerate([*self._lengths.tolist(), self._cached][:have]):
            for old, new in zip(self._buffers, grown, strict=True):
                new[row, :, :used] = old[row, :, :used]
        self._buffers = grown

    def _zeros(self, slots: int) -> np.ndarray:
        """A [slots, H, max_positions, record] view (record: Model.kv_record) of a
        [slots, max_positions, H, record] array where the graph's caches are laid out so (the
        copies here index heads, then positions)."""
        m, record = self.manifest, self.model.kv_record
        if self.model.kv_positions_first:
            shape = (slots, m.max_positions, m.num_heads, record)
            return _lazy_zeros(shape, self.model.kv_dtype).transpose(0, 2, 1, 3)
        return _lazy_zeros((slots, m.num_heads, m.max_positions, record), self.model.kv_dtype)

    def _layout(self, rows: np.ndarray) -> np.ndarray:
        """The graph's own (contiguous) layout of buffer rows `_zeros` made."""
        return rows.transpose(0, 2, 1, 3) if self.model.kv_positions_first else rows


def _lazy_zeros(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Zeros in an anonymous memory map: the kernel supplies zero pages when first touched, so a
    slot costs memory for the tokens written, not for max_positions. (np.zeros promises this only
    above malloc's mmap threshold, which glibc raises after frees: then every page is touched.)"""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if not size:
        return np.zeros(shape, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, size), dtype=dtype).reshape(shape)
