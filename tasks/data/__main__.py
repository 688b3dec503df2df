"""``python -m tasks.data``: list and fetch the data sets (``tasks.data.cli``)."""
from tasks.common.errors import run_cli
from tasks.data.cli import main

run_cli(main)
