"""Web assets (Jinja2 templates and static files), installed as bambid.assets."""
