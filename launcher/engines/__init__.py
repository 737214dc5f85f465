"""Engine facts as data: flags per release, start-up commands, readiness signals, version translation.

``launcher.plan`` is the public entry point; the modules here are its parts.
"""
