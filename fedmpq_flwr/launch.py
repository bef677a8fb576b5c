"""`python -m fedmpq_flwr.launch`: one run through a private SuperLink (`fedmpq_flwr.runner.launcher`)."""

import sys

from fedmpq_flwr.runner.launcher import main

if __name__ == "__main__":
    sys.exit(main())
