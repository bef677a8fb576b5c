"""`python -m fedmpq_flwr.deploy`: Flower's Deployment Engine helpers (`fedmpq_flwr.runner.deploy`)."""

import sys

from fedmpq_flwr.runner.deploy import main

if __name__ == "__main__":
    sys.exit(main())
