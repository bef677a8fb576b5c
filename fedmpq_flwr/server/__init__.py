"""The server's parts below the strategy: node discovery and sampling, evaluation, the round record."""
