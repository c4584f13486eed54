"""Typed, immutable fleet configuration and its loader."""

from modelyard.config.loader import ConfigError, load_config, parse_config
from modelyard.config.schema import (
    AliasConfig,
    DeploymentConfig,
    FleetConfig,
    ModelConfig,
    Price,
    ServerConfig,
    Timeouts,
)

__all__ = [
    "AliasConfig",
    "ConfigError",
    "DeploymentConfig",
    "FleetConfig",
    "ModelConfig",
    "Price",
    "ServerConfig",
    "Timeouts",
    "load_config",
    "parse_config",
]
