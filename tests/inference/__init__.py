"""The inference process: the OpenAI protocol, the engine, the server."""
