"""The JupyterLab extension and its server side."""
