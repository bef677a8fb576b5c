"""`python -m fedmpq_flwr.evaluate`: the analyzer (`fedmpq_flwr.analysis.cli`)."""

import sys

from fedmpq_flwr.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
