"""`python -m fedmpq_flwr.main`: the experiment runner (`fedmpq_flwr.runner.cli`)."""

import sys

from fedmpq_flwr.runner.cli import main

if __name__ == "__main__":
    sys.exit(main())
