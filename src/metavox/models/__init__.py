"""Backbones: one registry, one constructor signature."""
