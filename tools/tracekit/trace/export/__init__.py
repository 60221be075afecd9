"""One module per export format; each reads the CTS through ``tracekit.trace`` and writes its own files."""
