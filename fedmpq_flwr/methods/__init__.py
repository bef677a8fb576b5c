"""Federated methods: one module per method (its Flower client and strategy) and the torch-free catalog.

Importing this package does not import torch: the catalog is what the config, runner and analyzer
need. `fedmpq_flwr.methods.registry.load_method(name)` imports a method's implementation.
"""

from fedmpq_flwr.methods.catalog import CATALOG, FULL_PRECISION, QUANTIZED, MethodSpec, method_names, spec_of

__all__ = ["CATALOG", "FULL_PRECISION", "QUANTIZED", "MethodSpec", "method_names", "spec_of"]
