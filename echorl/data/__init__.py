"""Dataset preparation for the verl path: ``echorl.data.prepare`` (CLI: ``scripts/prepare_data.py``)."""
