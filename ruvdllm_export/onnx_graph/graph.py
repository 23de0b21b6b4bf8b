"""A thin recorder of ONNX nodes, initializers and graph inputs/outputs, with namespaced names.

Every node is named by where it sits in the model (`/model/layers.3/attn/q_proj/MatMulNBits`)
and its outputs are `<node name>/output_<i>`, as onnxruntime-genai's model builder does, so a
profile or a Netron view reads like the model's structure. Built with `onnx.helper` straight from
numpy arrays: no torch on the export path.

Given an ExternalData file, each large initializer is written there the moment it is made and the
graph keeps only its location, so building a model never holds all of its weights at once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"


class ExternalData:
    """One external data file written as initializers are made, in the layout onnx.save_model's
    save_as_external_data writes (all tensors in one file, in initializer order, no padding, the
    same size threshold), so the saved graph and data file are the ones it would write.

    A large array's bytes go from numpy straight to the file: the TensorProto only ever holds its
    name, shape and location. Setting raw_data and clearing it does not free it: protobuf's upb
    backend keeps a message's bytes in the message's arena until the message itself is freed, so a
    graph of cleared tensors held every weight it had written (the 1B export's graph phase grew by
    the whole packed model, 0.5 GB)."""

    def __init__(self, path: Path | str, size_threshold: int = 1024):
        self.path = Path(path)
        self.size_threshold = size_threshold
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed by close(), after the last layer)

    def tensor(self, name: str, array: np.ndarray) -> onnx.TensorProto | None:
        """The initializer for `array` (C-contiguous) with its bytes appended to the file, or None
        when it is under the threshold (it stays in the graph). onnx.save_model measures with
        sys.getsizeof of the raw bytes object (header included): the same rule."""
        if _BYTES_HEADER + array.nbytes < self.size_threshold:
            return None
        if array.dtype.isnative and array.dtype.kind in "fiu":
            data_type, raw = helper.np_dtype_to_tensor_dtype(array.dtype), memoryview(array).cast("B")
        else:  # what from_array converts (bool, byte order): its bytes, from a proto dropped at once
            converted = numpy_helper.from_array(array, name)
            data_type, raw = converted.data_type, converted.raw_data
        offset = self._place(name, raw)
        return external_tensor(name, data_type, array.shape, self.path.name, offset, len(raw))

    def _place(self, name: str, raw) -> int:
        """Where `raw` (the tensor `name`'s bytes) lies in the file: appended here."""
        offset = self._file.tell()
        self._file.write(raw)
        return offset

    def close(self) -> None:
        self._file.close()


_BYTES_HEADER = sys.getsizeof(b"")  # sys.getsizeof(bytes of n) == this + n


def external_tensor(
    name: str, data_type: int, shape: Sequence[int], location: str, offset: int, length: int
) -> onnx.TensorProto:
    """An initializer whose bytes are `length` bytes at `offset` of the file `location`."""
    tensor = TensorProto(name=name, data_type=data_type, dims=list(shape))
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    return tensor


class GraphBuilder:
    """Collects the pieces of one graph; `to_model()` assembles the ModelProto."""

    def __init__(self, name: str, opset: int, external: ExternalData | None = None):
        self.name = name
        self.external = external
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._node_names: set[str] = set()
        self._initializer_names: set[str] = set()
        self._constants: dict[tuple, str] = {}
        self.shared: dict[str, object] = {}  # values computed once and reused by later steps

    # --- graph interface ---------------------------------------------------------------------
    def input(self, name: str, elem_type: int, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, name: str, elem_type: int, shape: Sequence[int | str]) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    # --- weights and constants -----------------------------------------------------------------
    def initializer(self, name: str, array: np.ndarray) -> str:
        if name in self._initializer_names:
            raise ValueError(f"initializer {name!r} added twice")
        self._initializer_names.add(name)
        array = np.ascontiguousarray(array)
        tensor = None if self.external is None else self.external.tensor(name, array)
        if tensor is None:
            tensor = numpy_helper.from_array(array, name)
        self.initializers.append(tensor)
        return name

    def external_initializer(
        self, name: str, elem_type: int, shape: Sequence[int], location: str, offset: int, length: int
    ) -> str:
        """An initializer whose bytes the graph does not carry: external data at `location`, which
        the runtime supplies when it creates the session (the wasm target's widened weights)."""
        if name in self._initializer_names:
            raise ValueError(f"initializer {name!r} added twice")
        self._initializer_names.add(name)
        self.initializers.append(external_tensor(name, elem_type, shape, location, offset, length))
        return name

    def float_initializer(self, name: str, array: np.ndarray) -> str:
        """A float32 weight named `name`, stored as float16 when that round-trips exactly.

            name.f16 (float16) ─Cast(float)─► name

        The Cast reads only an initializer, so onnxruntime folds it when the session loads: the
        forward sees the same float32 values as before, and the file holds half the bytes. Exact
        float16 values are common here: GGUF block scales are float16, and so is the shipped
        conversion adapter (its scale alpha/rank a power of two)."""
        value = np.asarray(array, np.float32)
        half = value.astype(np.float16)
        if value.size < COMPACT_MIN_SIZE or not np.array_equal(half.astype(np.float32), value):
            return self.initializer(name, value)
        stored = self.initializer(f"{name}.f16", half)
        return self.op("Cast", [stored], f"/load/{name}/Cast", outputs=[name], to=FLOAT)

    def const(self, array, dtype=np.int64) -> str:
        """A small constant (shapes, axes, scalars), deduplicated by value and dtype."""
        value = np.asarray(array, dtype=dtype)
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self._constants:
            text = "_".join(str(v) for v in value.reshape(-1)[:8]) if value.size else "empty"
            name = f"/model/constants/{value.dtype.name}_{list(value.shape)}_{text}".replace(" ", "")
            if name in self._initializer_names:
                name = f"{name}_{len(self._constants)}"
            self._constants[key] = self.initializer(name, value)
        return self._constants[key]

    # --- nodes -----------------------------------------------------------------------------------
    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        name: str,
        *,
        domain: str = "",
        outputs: int | Sequence[str] = 1,
        **attributes,
    ):
        """Add one node named `name`; returns its output name (or a list when several)."""
        if name in self._node_names:
            raise ValueError(f"node {name!r} added twice")
        self._node_names.add(name)
        if isinstance(outputs, int):
            output_names = [f"{name}/output_{i}" for i in range(outputs)]
        else:
            output_names = list(outputs)
        node = helper.make_node(op_type, list(inputs), output_names, name=name, domain=domain or None)
        for key, value in attributes.items():
            if value is not None:
                node.attribute.append(helper.make_attribute(key, value))
        self.nodes.append(node)
        return output_names[0] if len(output_names) == 1 else output_names

    # --- assembly ----------------------------------------------------------------------------
    def to_model(self, doc: str = "", metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", self.opset), helper.make_opsetid(MS_DOMAIN, 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="ruvdllm", doc_string=doc)
        # IR 10 is what onnxruntime 1.20+ (and onnxruntime-web) load; the opset decides the ops.
        model.ir_version = 10
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
INT32 = TensorProto.INT32
COMPACT_MIN_SIZE = 4096  # elements: smaller float weights stay float32 (no Cast node for a few KB)


def _is_load_time(model: onnx.ModelProto) -> list[bool]:
    """Per node: are all its inputs initializers, directly or through other such nodes?"""
    known = {i.name for i in model.graph.initializer}
    flags = []
    for node in model.graph.node:  # topological order: the builder appends nodes in order
        folded = bool(node.input) and all(not i or i in known for i in node.input)
        if folded:
            known.update(node.output)
        flags.append(folded)
    return flags


def load_time_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes onnxruntime folds into initializers when the session loads: they never run per
    forward (the Cast/Pad/Concat that assemble weights stored compactly)."""
    return [n for n, folded in zip(model.graph.node, _is_load_time(model), strict=True) if folded]


def forward_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes that run on every forward (all but `load_time_nodes`)."""
    return [n for n, folded in zip(model.graph.node, _is_load_time(model), strict=True) if not folded]
