"""Hydra configs (package data): echorl_trainer.yaml composes verl; local.yaml the embedded engine."""
