"""The ONNX file work the backends need (:class:`agent.backends.base.OnnxFiles`), done with
:mod:`agent.engine.onnxgraph`, the one home of ``onnx``, which sits above the backends. Pass
:data:`ONNX_FILES` to ``get_backend(name, onnx_files=ONNX_FILES)`` where a backend builds or
inspects."""

from __future__ import annotations

from pathlib import Path

from agent.backends.base import GraphNode
from agent.engine import onnxgraph


def _activation(node: onnxgraph.NodeProto) -> str | None:
    for attr in node.attribute:
        if attr.name == "activation" and attr.type == type(attr).STRING:
            return attr.s.decode()
    return None


class OnnxGraphFiles:
    """:class:`agent.backends.base.OnnxFiles` over :mod:`agent.engine.onnxgraph`."""

    def external_data_files(self, path: Path) -> list[str]:
        model = onnxgraph.load_model(path, external_data=False)
        return sorted(
            {
                e.value
                for t in model.graph.initializer
                if t.data_location == onnxgraph.TensorProto.EXTERNAL
                for e in t.external_data
                if e.key == "location"
            }
        )

    def save_with_data_file(self, src: Path, dst: Path) -> None:
        onnxgraph.save_model_with_data_file(onnxgraph.load_model(src), dst)

    def nodes(self, path: Path) -> list[GraphNode]:
        model = onnxgraph.load_model(path, external_data=False)
        return [
            GraphNode(
                name=node.name,
                op_type=node.op_type,
                domain=node.domain,
                inputs=tuple(node.input),
                outputs=tuple(node.output),
                activation=_activation(node),
            )
            for node in model.graph.node
        ]

    def declared_types(self, path: Path) -> dict[str, str]:
        graph = onnxgraph.load_model(path, external_data=False).graph
        types: dict[str, str] = {}
        for vi in (*graph.input, *graph.output, *graph.value_info):
            types[vi.name] = onnxgraph.elem_type_name(vi.type.tensor_type.elem_type)
        for init in graph.initializer:
            types[init.name] = onnxgraph.elem_type_name(init.data_type)
        return types


ONNX_FILES = OnnxGraphFiles()
