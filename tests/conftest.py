"""Shared fixtures for every test layer."""
