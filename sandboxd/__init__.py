"""sandboxd: every Jupyter kernel and every JupyterHub server in its own Linux container."""

__version__ = "0.1.0"
