"""Static files of the web server: one stylesheet and a pinned htmx (package data)."""
