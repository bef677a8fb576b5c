"""The analyzer's parts (torch-free): loading runs, statistics, figures and the report.

`fedmpq_flwr.evaluate` is the command line that ties them together.
"""
