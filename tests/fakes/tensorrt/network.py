"""The fake's logger, shapes, network and ONNX parser (``install_network``)."""

from __future__ import annotations

from typing import Any

from tests.fakes.tensorrt.onnx_rules import LayerInfo, dequantize_input_errors, layer_infos
from tests.fakes.tensorrt.state import Fake, make_enum

SEVERITY = {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}


def install_network(fk: Fake) -> None:
    """Logger, Dims, IHostMemory, ITensor, ILayer, INetworkDefinition, ParserError, OnnxParser."""
    mod: Any = fk.mod
    rec, major, ndcf = fk.rec, fk.major, fk.ndcf

    Severity = make_enum("Severity", SEVERITY)  # noqa: N806 - mirrors trt.ILogger.Severity

    class ILogger:
        ERROR = Severity.ERROR  # type: ignore[attr-defined]
        WARNING = Severity.WARNING  # type: ignore[attr-defined]
        INFO = Severity.INFO  # type: ignore[attr-defined]
        VERBOSE = Severity.VERBOSE  # type: ignore[attr-defined]
        INTERNAL_ERROR = Severity.INTERNAL_ERROR  # type: ignore[attr-defined]

        def __init__(self) -> None:
            pass

        def log(self, severity: Any, msg: str) -> None:
            raise NotImplementedError

    ILogger.Severity = Severity  # type: ignore[attr-defined]

    class Logger(ILogger):
        def __init__(self, min_severity: Any = Severity.WARNING) -> None:  # type: ignore[attr-defined]
            super().__init__()
            self.min_severity = min_severity

        def log(self, severity: Any, msg: str) -> None:
            pass

    class Dims:
        def __init__(self, shape: Any = ()) -> None:
            self._d = [int(x) for x in shape]

        def __len__(self) -> int:
            return len(self._d)

        def __getitem__(self, index: int) -> int:
            return self._d[index]

        def __iter__(self) -> Any:
            return iter(self._d)

        def __eq__(self, other: object) -> bool:
            return list(self) == list(other) if isinstance(other, Dims | list | tuple) else False

        __hash__ = None  # type: ignore[assignment]  # as in tensorrt-stubs

        def __repr__(self) -> str:
            return f"Dims({self._d})"

    class IHostMemory(bytes):
        @property
        def nbytes(self) -> int:
            return len(self)

    class ITensor:
        def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
            self.name, self.shape, self.dtype = name, Dims(shape), dtype

    class ILayer:
        """A parsed node: its name, op and output tensors (typed as strong typing infers)."""

        def __init__(self, info: LayerInfo) -> None:
            self.name, self.op = info.name, info.op
            self._outputs = [
                ITensor(o, (), getattr(mod.DataType, fk.dt_by_onnx.get(t, "FLOAT")))
                for o, t in zip(info.outputs, info.out_types, strict=True)
            ]

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_output(self, index: int) -> ITensor:
            return self._outputs[index]

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[ITensor] = []
            self.outputs: list[ITensor] = []
            self.layers: list[ILayer] = []
            #: outputs whose shape depends on the data (NonZero, NonMaxSuppression)
            self.dds: set[str] = set()
            rec.alive.add(self)

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, index: int) -> ILayer:
            return self.layers[index]

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_input(self, index: int) -> ITensor:
            return self.inputs[index]

        def get_output(self, index: int) -> ITensor:
            return self.outputs[index]

        def get_flag(self, flag: Any) -> bool:
            return bool(self.flags & (1 << int(flag)))

        @property
        def strongly_typed(self) -> bool:
            return major >= 11 or bool(self.flags & (1 << ndcf.get("STRONGLY_TYPED", 99)))

    class ParserError:
        def __init__(self, desc: str, node: int = -1) -> None:
            self._desc, self._node = desc, node

        def desc(self) -> str:
            return self._desc

        def node(self) -> int:
            return self._node

        def code(self) -> str:
            return "UNSUPPORTED_NODE"

        def __str__(self) -> str:
            return f"In node {self._node} with name: fake and operator: Fake ({self._desc})"

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
            self.network, self.logger = network, logger
            self._errors: list[ParserError] = []
            rec.record("OnnxParser")  # not the network: the recorder must not keep it alive
            rec.alive.add(self)

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> ParserError:
            return self._errors[index]

        def clear_errors(self) -> None:
            self._errors.clear()

        def parse(self, model: bytes, path: str | None = None) -> bool:
            raise AssertionError("the backend must use parse_from_file (external data)")

        def parse_from_file(self, model: str) -> bool:
            import onnx

            rec.record("parse_from_file", model)
            if major < 10 and not self.network.get_flag(
                mod.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
            ):
                self._errors.append(ParserError("Network must have the explicit batch flag"))
                return False
            if rec.parse_errors:
                self._errors += [ParserError(e, i) for i, e in enumerate(rec.parse_errors)]
                return False
            try:
                proto = onnx.load(model, load_external_data=False)
            except Exception as exc:
                self._errors.append(ParserError(f"failed to load ONNX: {exc}"))
                return False
            graph = proto.graph
            dq_errors = dequantize_input_errors(graph, major)
            if dq_errors:
                self._errors += [ParserError(msg, node) for node, msg in dq_errors]
                return False
            init = {i.name for i in graph.initializer}

            def tensor(vi: Any) -> ITensor:
                tt = vi.type.tensor_type
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
                return ITensor(vi.name, dims, getattr(mod.DataType, fk.dt_by_onnx[tt.elem_type]))

            infos, dds = layer_infos(graph)
            self.network.inputs = [tensor(v) for v in graph.input if v.name not in init]
            self.network.outputs = [tensor(v) for v in graph.output]
            self.network.layers = [ILayer(info) for info in infos]
            self.network.dds = dds & {v.name for v in graph.output}
            return True

    for obj in (
        ILogger, Logger, Dims, IHostMemory, ITensor, ILayer, INetworkDefinition, ParserError,
        OnnxParser,
    ):  # fmt: skip
        setattr(mod, obj.__name__, obj)
