"""Example packages and their task functions."""
