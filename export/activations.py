"""The MLP activations transformers implements (`transformers.activations.ACT2FN`), written with
standard ONNX ops or ONNX Runtime contrib ops and transformers' own formulas. Each entry takes the
up-projection `x` [B, T, F], its bias [F] and the layer's learned constants, and returns the
activated tensor's name."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

MS = "com.microsoft"


def _scalar(g, name: str, value: float) -> str:
    return g.const(f"act/{name}", np.array(value, dtype=np.float32))


def _biased(g, x: str, bias: str) -> str:
    return g.op("Add", [x, bias])


def _tanh_gelu(g, x, bias, params):
    # gelu_new, gelu_fast, gelu_pytorch_tanh, …: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
    return g.op("FastGelu", [x, bias], domain=MS)


def _erf_gelu(g, x, bias, params):
    # gelu: x · 0.5 · (1 + erf(x / √2))
    return g.op("BiasGelu", [x, bias], domain=MS)


def _clipped_gelu(g, x, bias, params):
    # gelu_10: clip(gelu(x), -10, 10)
    low, high = _scalar(g, "minus10", -10.0), _scalar(g, "plus10", 10.0)
    return g.op("Clip", [_erf_gelu(g, x, bias, params), low, high])


def _quick_gelu(g, x, bias, params):
    # x · sigmoid(1.702 · x)
    x = _biased(g, x, bias)
    return g.op("Mul", [x, g.op("Sigmoid", [g.op("Mul", [x, _scalar(g, "1.702", 1.702)])])])


def _silu(g, x, bias, params):
    # x · sigmoid(x)
    x = _biased(g, x, bias)
    return g.op("Mul", [x, g.op("Sigmoid", [x])])


def _laplace(g, x, bias, params):
    # 0.5 · (1 + erf((x − μ) / (σ·√2))), μ = 0.707107, σ = 0.282095
    shifted = g.op("Sub", [_biased(g, x, bias), _scalar(g, "mu", 0.707107)])
    scaled = g.op("Div", [shifted, _scalar(g, "sigma_sqrt2", 0.282095 * math.sqrt(2.0))])
    erf = g.op("Add", [_scalar(g, "one", 1.0), g.op("Erf", [scaled])])
    return g.op("Mul", [_scalar(g, "half", 0.5), erf])


def _relu2(g, x, bias, params):
    relu = g.op("Relu", [_biased(g, x, bias)])
    return g.op("Mul", [relu, relu])


def _relu6(g, x, bias, params):
    return g.op("Clip", [_biased(g, x, bias), _scalar(g, "zero", 0.0), _scalar(g, "six", 6.0)])


def _prelu(g, x, bias, params):
    # nn.PReLU: one learned slope per layer (`mlp.act.weight`, [1])
    return g.op("PRelu", [_biased(g, x, bias), params["slope"]])


def _xielu(g, x, bias, params):
    # x > 0: αp·x·x + β·x; else (expm1(min(x, ε)) − x)·αn + β·x (αp, αn already softplus-ed)
    x = _biased(g, x, bias)
    linear = g.op("Mul", [params["beta"], x])
    positive = g.op("Add", [g.op("Mul", [g.op("Mul", [params["alpha_p"], x]), x]), linear])
    expm1 = g.op("Sub", [g.op("Exp", [g.op("Min", [x, params["eps"]])]), _scalar(g, "one", 1.0)])
    negative = g.op("Mul", [g.op("Sub", [expm1, x]), params["alpha_n"]])
    negative = g.op("Add", [negative, linear])
    above = g.op("Greater", [x, _scalar(g, "zero", 0.0)])
    return g.op("Where", [above, positive, negative])


def _xielu(g, x, bias, params):
    # x > 0: αp·x·x + β·x; else (expm1(min(x, ε)) − x)·αn + β·x (αp, αn already softplus-ed)
    x = _biased(g, x, bias)
    linear = g.op("Mul", [params["beta"], x])
    positive = g.op("Add", [g.op("Mul", [g.op("Mul", [params["alpha_p"], x]), x]), linear])
    expm1 = g.op("Sub", [g.op("Exp", [g.op("Min", [x, params["eps"]])]), _scalar(g, "one", 1.0)])
    negative = g.op("Add", [g.op("Mul", [g.op("Sub", [expm1, x]), params["alpha_n"]]), linear])
    above = g.op("Greater", [x, _scalar(g, "zero", 0.0)])
    return g.op("Where", [above, positive, negative])


def _unary(op_type: str, **attrs) -> Callable:
    return lambda g, x, bias, params: g.op(op_type, [_biased(g, x, bias)], **attrs)


ACTIVATIONS: dict[str, Callable] = {
    "gelu_new": _tanh_gelu,
    "gelu_fast": _tanh_gelu,
    "gelu_pytorch_tanh": _tanh_gelu,
    "gelu_python_tanh": _tanh_gelu,
    "gelu_accurate": _tanh_gelu,
    "gelu": _erf_gelu,
    "gelu_python": _erf_gelu,
    "gelu_10": _clipped_gelu,
    "quick_gelu": _quick_gelu,
    "silu": _silu,
    "swish": _silu,
    "laplace": _laplace,
    "relu": _unary("Relu"),
    "relu2": _relu2,
    "relu6": _relu6,
    "leaky_relu": _unary("LeakyRelu", alpha=0.01),  # nn.LeakyReLU's default slope
    "linear": lambda g, x, bias, params: _biased(g, x, bias),
    "mish": _unary("Mish"),
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "prelu": _prelu,
    "xielu": _xielu,
}


def activate(g, name: str, params: dict[str, str], x: str, bias: str) -> str:
    """`name`(x + bias); `params` names the layer's learned activation constants (prelu, xielu:
    Architecture.activation_params)."""
    return ACTIVATIONS[name](g, x, bias, params)
