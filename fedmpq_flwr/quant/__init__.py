"""Bit-level mixed-precision quantization (BSQ / FedMPQ) in plain PyTorch: no Flower in here."""

from fedmpq_flwr.quant.activations import ACTIVATION_QUANTIZERS, QuantReLU
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
    QuantRules,
    bit_regularizer,
    dequantized_state,
    inferred_rules,
    layer_bits,
    prune_model,
    quant_layers,
    quant_rules,
    quantizable_layers,
    quantize_model,
    quantized_param_count,
    rebinarize_model,
)
from fedmpq_flwr.quant.payload import decode_update, encode_update, upload_bits
from fedmpq_flwr.quant.svd import energy_threshold, svd_decode, svd_encode, svd_rank, svd_upload_bits

__all__ = [
    "ACTIVATION_QUANTIZERS",
    "MAX_BITS",
    "MIN_BITS",
    "SCALE_GRAD_MODES",
    "BitTensor",
    "QuantConv2d",
    "QuantLinear",
    "QuantReLU",
    "QuantRules",
    "bit_regularizer",
    "decode_update",
    "dequantized_state",
    "encode_update",
    "energy_threshold",
    "inferred_rules",
    "layer_bits",
    "levels",
    "prune_model",
    "quant_layers",
    "quant_rules",
    "quantizable_layers",
    "quantize_model",
    "quantized_param_count",
    "rebinarize_model",
    "set_scale_grad",
    "svd_decode",
    "svd_encode",
    "svd_rank",
    "svd_upload_bits",
    "upload_bits",
]
