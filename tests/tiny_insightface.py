"""Tiny ONNX models in InsightFace's real input/output contracts (the real ArcFace and inswapper files cannot be
downloaded here), built with ``onnx.helper`` and loaded by InsightFace's own classes:

- an ArcFace-shaped embedder: input ``[batch, 3, 112, 112]`` (dynamic batch), output ``[batch, 512]``; the
  embedding is a fixed random projection of the mean-removed 8x8 colour layout of the aligned face, so the same face
  gives the same identity and different faces differ;
- swappers with the two inputs ``target [1, 3, 128, 128]`` and ``source [1, 512]``, output ``[1, 3, 128, 128]``
  in [0, 1], and ``emap`` (512 x 512) as the graph's LAST initializer, as inswapper_128 stores it:
  ``colour``: a flat face whose colour is sigmoid(source latent @ W), so a test can tell which identity reached the
  swapper; ``mirror``: returns the target face unchanged (a swap that failed); ``constant``: returns a fixed face
  image (a swap that fully replaced the face)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EMBEDDING = 512
OPSET = [helper.make_opsetid("", 13)]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="megactor-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def arcface(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((3 * 8 * 8, EMBEDDING)).astype(np.float32)
    nodes = [  # node names must not start with "Sub"/"Mul": InsightFace reads those as an MXNet model's own scaling
        helper.make_node("AveragePool", ["input.1"], ["pooled"], name="pool", kernel_shape=[14, 14], strides=[14, 14]),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        helper.make_node("ReduceMean", ["flat"], ["mean"], name="layout_mean", axes=[1], keepdims=1),
        helper.make_node("Sub", ["flat", "mean"], ["centred"], name="centre"),
        helper.make_node("MatMul", ["centred", "projection"], ["683"], name="project"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["batch", EMBEDDING])],
        [numpy_helper.from_array(projection, "projection")],
    )
    return _save(graph, path)


def emap(seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((EMBEDDING, EMBEDDING)) / np.sqrt(EMBEDDING)).astype(np.float32)


def colour_weights(seed: int = 2) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((EMBEDDING, 3)) * 4).astype(np.float32)


def swapper(path: Path, kind: str = "colour", face: np.ndarray | None = None) -> Path:
    """``kind``: colour | mirror | constant (``face``: the RGB 128x128 uint8 image it returns)."""
    inputs = [helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
              helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, EMBEDDING])]
    initializers = []
    # every variant reads both inputs: (target * 0 + source-derived) or (target + 0 * source)
    nodes = [helper.make_node("ReduceSum", ["source"], ["source_sum"], name="source_sum", keepdims=1),
             helper.make_node("Mul", ["source_sum", "zero"], ["source_zero"], name="source_zero")]
    initializers.append(numpy_helper.from_array(np.zeros((1, 1), np.float32), "zero"))
    if kind == "colour":
        initializers.append(numpy_helper.from_array(colour_weights(), "colour_weights"))
        nodes += [
            helper.make_node("MatMul", ["source", "colour_weights"], ["logits"], name="colour"),
            helper.make_node("Sigmoid", ["logits"], ["rgb"], name="squash"),
            helper.make_node("Reshape", ["rgb", "rgb_shape"], ["rgb4"], name="to_image"),
            helper.make_node("Mul", ["target", "zero4"], ["blank"], name="blank"),
            helper.make_node("Add", ["blank", "rgb4"], ["output"], name="fill"),
        ]
        initializers += [numpy_helper.from_array(np.array([1, 3, 1, 1], np.int64), "rgb_shape"),
                         numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "zero4")]
    elif kind == "mirror":
        nodes += [helper.make_node("Reshape", ["source_zero", "scalar_shape"], ["z4"], name="z4"),
                  helper.make_node("Add", ["target", "z4"], ["output"], name="same")]
        initializers.append(numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "scalar_shape"))
    elif kind == "constant":
        assert face is not None and face.shape == (128, 128, 3)
        image = (face.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        nodes += [helper.make_node("Reshape", ["source_zero", "scalar_shape"], ["z4"], name="z4"),
                  helper.make_node("Mul", ["target", "zero4"], ["blank"], name="blank"),
                  helper.make_node("Add", ["blank", "face"], ["with_face"], name="face"),
                  helper.make_node("Add", ["with_face", "z4"], ["output"], name="out")]
        initializers += [numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "scalar_shape"),
                         numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "zero4"),
                         numpy_helper.from_array(image, "face")]
    else:
        raise ValueError(kind)
    initializers.append(numpy_helper.from_array(emap(), "emap"))  # last, as inswapper_128 stores it
    graph = helper.make_graph(nodes, f"tiny_inswapper_{kind}", inputs,
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 128, 128])],
                              initializers)
    return _save(graph, path)


def expected_colour(embedding: np.ndarray) -> np.ndarray:
    """The RGB (0-255) the ``colour`` swapper paints for a normalised identity embedding, by the contract's math."""
    latent = embedding.reshape(1, -1) @ emap()
    latent /= np.linalg.norm(latent)
    return 255.0 / (1.0 + np.exp(-(latent @ colour_weights())[0]))
