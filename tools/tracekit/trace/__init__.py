"""After the run: the CTS parse (raw logs -> CTS), interval arithmetic, the audit and its plots, and the
exporters under ``export/``. Imports ``core`` only."""
