"""The control plane over Redis: task model and profiles, Lua scripts, placement and weighers, the central
scheduler, the dispatcher, the worker, status and admin. Imports ``core`` and ``node``."""
