"""The Textual terminal UI: the only package that imports textual.

``mario_cli.tui.app`` holds the app and the factories the CLI and the tests use.
"""
