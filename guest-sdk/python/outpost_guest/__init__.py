"""Write Outpost stages in Python (componentize-py).

What the Rust SDK (`outpost-guest`) gives, over the bindings componentize-py
generates for the `streaming-stage` world: typed tensors, the stage's config,
errors with kinds, models through wasi-nn, and partial outputs.

A stage is a class; `export_stage` makes the `WitWorld` componentize-py
looks for in the app module::

    import outpost_guest as og

    class Double(og.Stage):
        def __init__(self, config: og.Config):
            config.deny_unknown([])

        def describe(self) -> og.StageInfo:
            return og.stage_info("double", "0.1.0", "x * 2",
                                 inputs=[og.spec("x", og.ElementType.F32)],
                                 outputs=[og.spec("y", og.ElementType.F32)])

        def run(self, inputs: og.Inputs) -> list:
            x = inputs.take("x")
            return [og.from_f32("y", x.dims, [v * 2 for v in og.to_f32(x)])]

    WitWorld = og.export_stage(Double)

Build: ``componentize-py -d WIT_DIR -w streaming-stage componentize app
-p . -p PATH/TO/guest-sdk/python -o stage.wasm``.
"""

import json
import struct
import sys
import traceback
from array import array

import wit_world
from componentize_py_types import Err
from wit_world.imports import errors as nn_errors
from wit_world.imports import graph as nn_graph
from wit_world.imports import partials
from wit_world.imports import tensor as nn_tensor
from wit_world.imports.types import (
    Dim_Fixed,
    Dim_Symbol,
    ElementType,
    ErrorKind,
    StageInfo,
    Tensor,
    TensorSpec,
)
from wit_world.imports.types import StageError as _WitStageError

__all__ = [
    "Config", "ElementType", "ErrorKind", "Inputs", "Model", "Stage", "StageError",
    "StageInfo", "Tensor", "TensorSpec", "emit", "export_stage", "fixed", "from_f32",
    "from_i64", "from_text", "spec", "stage_info", "sym", "to_f32", "to_i64", "to_text",
]


class StageError(Exception):
    """A failure with a kind, reported to the host as the stage's typed error."""

    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    @classmethod
    def invalid_config(cls, message: str) -> "StageError":
        return cls(ErrorKind.INVALID_CONFIG, message)

    @classmethod
    def invalid_input(cls, message: str) -> "StageError":
        return cls(ErrorKind.INVALID_INPUT, message)

    @classmethod
    def inference(cls, message: str) -> "StageError":
        return cls(ErrorKind.INFERENCE, message)

    @classmethod
    def internal(cls, message: str) -> "StageError":
        return cls(ErrorKind.INTERNAL, message)


# ---- tensors ----

_SIZES = {
    ElementType.F16: 2, ElementType.F32: 4, ElementType.F64: 8, ElementType.BF16: 2,
    ElementType.U8: 1, ElementType.I32: 4, ElementType.I64: 8, ElementType.UTF8: 1,
}
_FORMATS = {
    ElementType.F32: "f", ElementType.F64: "d", ElementType.U8: "B",
    ElementType.I32: "i", ElementType.I64: "q",
}


def type_name(ty: ElementType) -> str:
    return ty.name.lower()


def _count(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def from_values(name: str, ty: ElementType, dims, values) -> Tensor:
    """A tensor of `values` (row-major) with `dims`; their number must match.

    f32 values are rounded as a C cast rounds them: past the f32 range they
    become infinities (struct.pack would refuse them)."""
    dims = [int(d) for d in dims]
    if len(values) != _count(dims):
        raise StageError.internal(
            f"tensor '{name}': {len(values)} values do not fill dims {dims}")
    if ty == ElementType.F32:
        data = array("f", values)
        if sys.byteorder != "little":
            data.byteswap()
        return Tensor(name, dims, ty, data.tobytes())
    return Tensor(name, dims, ty, struct.pack(f"<{len(values)}{_FORMATS[ty]}", *values))


def from_f32(name: str, dims, values) -> Tensor:
    return from_values(name, ElementType.F32, dims, values)


def from_i64(name: str, dims, values) -> Tensor:
    return from_values(name, ElementType.I64, dims, values)


def from_text(name: str, text: str) -> Tensor:
    data = text.encode("utf-8")
    return Tensor(name, [len(data)], ElementType.UTF8, data)


def expect_type(tensor: Tensor, ty: ElementType) -> None:
    if tensor.element_type != ty:
        raise StageError.invalid_input(
            f"tensor '{tensor.name}' holds {type_name(tensor.element_type)} elements, "
            f"expected {type_name(ty)}")


def expect_rank(tensor: Tensor, rank: int) -> list:
    """The tensor's dims, after checking it has `rank` of them."""
    if len(tensor.dims) != rank:
        raise StageError.invalid_input(
            f"tensor '{tensor.name}' has shape {list(tensor.dims)} (rank {len(tensor.dims)}), "
            f"expected rank {rank}")
    return list(tensor.dims)


def to_values(tensor: Tensor, ty: ElementType) -> list:
    """The elements of a numeric tensor of type `ty`, checked against its dims."""
    expect_type(tensor, ty)
    n = _count(tensor.dims)
    if len(tensor.data) != n * _SIZES[ty]:
        raise StageError.invalid_input(
            f"tensor '{tensor.name}': shape {list(tensor.dims)} of {type_name(ty)} needs "
            f"{n * _SIZES[ty]} bytes but it holds {len(tensor.data)}")
    return list(struct.unpack(f"<{n}{_FORMATS[ty]}", tensor.data))


def to_f32(tensor: Tensor) -> list:
    return to_values(tensor, ElementType.F32)


def to_i64(tensor: Tensor) -> list:
    return to_values(tensor, ElementType.I64)


def to_text(tensor: Tensor) -> str:
    """The text of a utf8 tensor (raw u8 tensors too, when they hold UTF-8)."""
    if tensor.element_type not in (ElementType.UTF8, ElementType.U8):
        expect_type(tensor, ElementType.UTF8)
    try:
        return tensor.data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StageError.invalid_input(f"tensor '{tensor.name}' is not valid UTF-8: {e}") from None


class Inputs:
    """The tensors a call received, taken by name."""

    def __init__(self, tensors):
        self._tensors = {}
        for t in tensors:
            # The first of two with one name, as the Rust SDK takes it.
            self._tensors.setdefault(t.name, t)

    def take(self, name: str) -> Tensor:
        tensor = self._tensors.pop(name, None)
        if tensor is None:
            raise StageError.invalid_input(
                f"missing input tensor '{name}'; received: [{', '.join(self._tensors)}]")
        return tensor

    def take_optional(self, name: str):
        return self._tensors.pop(name, None)

    def names(self) -> list:
        return list(self._tensors)


# ---- config ----

class Config:
    """A stage's config: each key's value as the pipeline gave it (TOML, as JSON)."""

    def __init__(self, raw):
        self._entries = dict(raw.entries)
        self._files = {f.name: f.data for f in raw.files}

    def keys(self) -> list:
        return list(self._entries)

    def get(self, key: str, default=None):
        """The key's value (str, int, float, bool, list or dict), or `default`."""
        if key not in self._entries:
            return default
        try:
            return json.loads(self._entries[key])
        except ValueError as e:
            raise StageError.invalid_config(
                f"config key '{key}' = {self._entries[key]}: {e}") from None

    def get_typed(self, key: str, kind, default=None):
        """Like `get`, checked to be of `kind` (bool is not an int here; an int
        is a float, as TOML's 2 is the number 2.0)."""
        value = self.get(key, default)
        if value is None:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise StageError.invalid_config(
                f"config key '{key}' must be {kind.__name__}, got {json.dumps(value)}")
        return value

    def require(self, key: str):
        if key not in self._entries:
            raise StageError.invalid_config(
                f"config key '{key}' is required; add `{key} = ...` to the stage's [config] table")
        return self.get(key)

    def file(self, name: str):
        """The bytes of the file the pipeline gives as `name`, or None."""
        return self._files.get(name)

    def deny_unknown(self, known) -> None:
        for key in self._entries:
            if key not in known:
                raise StageError.invalid_config(
                    f"unknown config key '{key}'; this stage knows: {', '.join(known)}")


# ---- describe ----

def sym(name: str):
    """A dimension known per request (`batch`)."""
    return Dim_Symbol(name)


def fixed(size: int):
    """A dimension of this exact size."""
    return Dim_Fixed(int(size))


def spec(name: str, ty=None, dims=None) -> TensorSpec:
    """A tensor spec: `ty` None takes any type, `dims` None any shape."""
    return TensorSpec(name, ty, None if dims is None else list(dims))


def stage_info(name: str, version: str, description: str, inputs=(), outputs=()) -> StageInfo:
    return StageInfo(name, version, description, list(inputs), list(outputs))


# ---- wasi-nn ----

_NN_TYPES = {
    ElementType.F16: nn_tensor.TensorType.FP16, ElementType.F32: nn_tensor.TensorType.FP32,
    ElementType.F64: nn_tensor.TensorType.FP64, ElementType.BF16: nn_tensor.TensorType.BF16,
    ElementType.U8: nn_tensor.TensorType.U8, ElementType.I32: nn_tensor.TensorType.I32,
    ElementType.I64: nn_tensor.TensorType.I64,
}
_FROM_NN = {v: k for k, v in _NN_TYPES.items()}


def _nn_error(model: str, call: str, e: Err) -> StageError:
    error = e.value
    if isinstance(error, nn_errors.Error):
        return StageError.inference(f"model '{model}': {call} failed ({error.code().name}): {error.data()}")
    return StageError.inference(f"model '{model}': {call} failed: {error!r}")


class Model:
    """A model the host preloaded for this stage, loaded by name."""

    def __init__(self, name: str, graph, context):
        self.name = name
        self._graph = graph
        self._context = context

    @classmethod
    def load(cls, name: str) -> "Model":
        try:
            graph = nn_graph.load_by_name(name)
        except Err as e:
            raise _nn_error(name, "load-by-name", e) from None
        try:
            context = graph.init_execution_context()
        except Err as e:
            raise _nn_error(name, "init-execution-context", e) from None
        return cls(name, graph, context)

    def compute(self, inputs) -> list:
        """Runs the model on named tensors; returns its named outputs."""
        named = []
        for t in inputs:
            ty = _NN_TYPES.get(t.element_type)
            if ty is None:
                raise StageError.invalid_input(
                    f"tensor '{t.name}' of {type_name(t.element_type)} cannot be given to model "
                    f"'{self.name}': wasi-nn has no such element type")
            named.append((t.name, nn_tensor.Tensor(list(t.dims), ty, bytes(t.data))))
        try:
            outputs = self._context.compute(named)
        except Err as e:
            raise _nn_error(self.name, "compute", e) from None
        return [Tensor(name, t.dimensions(), _FROM_NN[t.ty()], t.data()) for name, t in outputs]


# ---- partial outputs ----

def emit(outputs) -> bool:
    """Sends partial outputs to the request's client now; False once nobody listens."""
    return partials.emit(list(outputs))


# ---- the export ----

class Stage:
    """Subclass with `__init__(self, config)`, `describe(self)` and `run(self, inputs)`."""

    def __init__(self, config: Config):
        pass

    def describe(self) -> StageInfo:
        raise NotImplementedError

    def run(self, inputs: Inputs) -> list:
        raise NotImplementedError


_MESSAGE_LIMIT = 4096


def _as_wit(error: BaseException) -> Err:
    if isinstance(error, StageError):
        return Err(_WitStageError(error.kind, error.message))
    # A bug in the stage: its traceback is the message (stderr goes nowhere).
    text = "".join(traceback.format_exception(error)).strip()
    if len(text) > _MESSAGE_LIMIT:
        # Deep recursion makes long tracebacks: keep their ends.
        half = _MESSAGE_LIMIT // 2
        text = f"{text[:half]}\n[...]\n{text[-half:]}"
    return Err(_WitStageError(ErrorKind.INTERNAL, text))


def export_stage(stage_class):
    """The `WitWorld` class componentize-py exports, running `stage_class`.

    componentize-py makes a new `WitWorld` object for each call, so the
    stage object lives here, made by `init`."""
    slot = {}

    class Export(wit_world.WitWorld):
        def init(self, config) -> None:
            try:
                slot["stage"] = stage_class(Config(config))
            except MemoryError:
                # Past its memory limit the stage traps, and the host says so.
                raise
            except Exception as e:  # noqa: BLE001 - every failure becomes a typed error
                raise _as_wit(e) from None

        def describe(self) -> StageInfo:
            return slot["stage"].describe()

        def run(self, inputs) -> list:
            try:
                return list(slot["stage"].run(Inputs(inputs)))
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001
                raise _as_wit(e) from None

    return Export
