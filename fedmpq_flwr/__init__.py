"""FedMPQ, FedMPQ-KD and baselines for federated learning on Flower."""
