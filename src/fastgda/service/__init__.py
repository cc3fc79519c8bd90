"""The attribution service: ``fastgda serve`` (HTTP API + web page). Needs the ``serve`` extra."""
