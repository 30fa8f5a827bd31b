"""Thin DVC stage entry points: load the stage's params section, call the library, write declared outputs."""
