"""Bit-level mixed-precision quantization (BSQ / FedMPQ) in plain PyTorch: no Flower in here."""

from fedmpq_flwr.quant.activations import QuantReLU
from fedmpq_flwr.quant.bitplanes import (
    MAX_BITS,
    MIN_BITS,
    SCALE_GRAD_MODES,
    BitTensor,
    QuantConv2d,
    QuantLinear,
    levels,
    set_scale_grad,
)
from fedmpq_flwr.quant.convert import (
    bit_regularizer,
    dequantized_state,
    layer_bits,
    prune_model,
    quant_layers,
    quantizable_layers,
    quantize_model,
    quantized_param_count,
    rebinarize_model,
)
from fedmpq_flwr.quant.payload import decode_update, encode_update, upload_bits

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "SCALE_GRAD_MODES",
    "BitTensor",
    "QuantConv2d",
    "QuantLinear",
    "QuantReLU",
    "bit_regularizer",
    "decode_update",
    "dequantized_state",
    "encode_update",
    "layer_bits",
    "levels",
    "prune_model",
    "quant_layers",
    "quantizable_layers",
    "quantize_model",
    "quantized_param_count",
    "rebinarize_model",
    "set_scale_grad",
    "upload_bits",
]
