"""Configuration files shipped with the module (package data)."""
