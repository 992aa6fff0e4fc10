"""One root exception for the project; every error says where it happened."""


class LlmflowError(Exception):
    """Root of every error llmflow raises on purpose."""


class ConfigError(LlmflowError):
    """A setting, topology file or command-line value is wrong; the message says which."""
