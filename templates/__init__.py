"""Jinja2 templates of the web server (package data)."""
