"""Serving RLMs to other programs: an OpenAI-compatible HTTP server (:func:`create_app`) and an
MCP server for coding agents (:func:`create_mcp_server`). Needs the ``serve`` extra."""

from ctxfold.serve.app import SERVED_ID, ServeConfig, create_app
from ctxfold.serve.mcp import create_mcp_server

__all__ = ["SERVED_ID", "ServeConfig", "create_app", "create_mcp_server"]
