"""Reference classifier for tests/test_predict_pool.py: a tiny ONNX graph (conv, relu, pool, linear, sigmoid) with
seeded weights and the manifest `predict --engine` reads. Kept small enough to commit; regenerating it would make
before.jsonl meaningless, so do not (see README.md)."""
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = Path(__file__).parent / "engine"
out.mkdir(exist_ok=True)
rng = np.random.default_rng(13)
S, C = 40, ["cat", "dog", "car", "tree"]
w1 = (rng.standard_normal((8, 3, 5, 5)) * 0.2).astype(np.float32)
b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
w2 = (rng.standard_normal((len(C), 8)) * 0.8).astype(np.float32)
b2 = (rng.standard_normal(len(C)) * 0.1).astype(np.float32)
nodes = [helper.make_node("Conv", ["images", "w1", "b1"], ["c"], strides=[2, 2], pads=[2, 2, 2, 2]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1),
         helper.make_node("Sigmoid", ["logits"], ["probs"])]
graph = helper.make_graph(nodes, "predict_ref",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, S, S])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", len(C)])],
                          [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, out / "classifier.onnx")
manifest = {"files": {"fp32": "classifier.onnx"},
            "model": {"arch": "predict-ref", "classes": C, "image_size": S, "mean": [0.485, 0.456, 0.406],
                      "std": [0.229, 0.224, 0.225]}}
(out / "classifier.manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
