"""LazyWeights: a checkpoint's tensors read from the file when asked for, one at a time.

Both formats are memory-mapped (safetensors by safe_open, GGUF by gguf.GGUFReader), so a reader
only records, per canonical name, how to produce the tensor and its shape. The exporter walks the
tensors once to quantize them and once more (layer by layer) for the parity check; nothing is kept
between accesses, so a 7B checkpoint costs one tensor's float32 copy at a time, not 28 GB.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping


class LazyWeights(Mapping):
    """canonical name -> weight, produced afresh by its reader on every access.

    `shapes` answers shape questions (checks, expected_shapes) without reading any data; a
    consumer that wants a tensor twice should keep the first result rather than ask again."""

    def __init__(
        self,
        readers: dict[str, Callable[[], object]],
        shapes: dict[str, tuple[int, ...]],
        row_readers: dict[str, Callable[[int, int], object]] | None = None,
    ):
        self._readers = dict(readers)
        self.shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        self._row_readers = dict(row_readers or {})

    def reads_rows(self, name: str) -> bool:
        """Whether `rows` can read part of `name` (float tensors of mapped files can)."""
        return name in self._row_readers

    def rows(self, name: str, start: int, stop: int) -> object:
        """Rows start..stop of a 2-D tensor, without reading the rest: a 128k-row token table
        is quantized and run through the reference's head in slices, never widened whole."""
        if name not in self._row_readers:
            return self[name][start:stop]
        return self._row_readers[name](start, min(stop, self.shapes[name][0]))

    def __getitem__(self, name: str) -> object:
        return self._readers[name]()

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the tensor
        return name in self._readers

    def __iter__(self) -> Iterator[str]:
        return iter(self._readers)

    def __len__(self) -> int:
        return len(self._readers)

    def without(self, name: str) -> LazyWeights:
        readers = {n: r for n, r in self._readers.items() if n != name}
        rows = {n: r for n, r in self._row_readers.items() if n != name}
        return LazyWeights(readers, {n: s for n, s in self.shapes.items() if n != name}, rows)
