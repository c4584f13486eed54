"""Typed, immutable fleet configuration and its loader."""

from modelyard.config.loader import ConfigError, load_config, parse_config
from modelyard.config.reader import Reader
from modelyard.config.schema import (
    AliasConfig,
    BatchingPolicy,
    BreakerPolicy,
    DeploymentConfig,
    FleetConfig,
    HedgePolicy,
    IntentConfig,
    ModelConfig,
    Price,
    RetryPolicy,
    RouteRule,
    SchedulingConfig,
    ServerConfig,
    StageConfig,
    Timeouts,
    ValidatorConfig,
)

__all__ = [
    "AliasConfig",
    "BatchingPolicy",
    "BreakerPolicy",
    "ConfigError",
    "DeploymentConfig",
    "FleetConfig",
    "HedgePolicy",
    "IntentConfig",
    "ModelConfig",
    "Price",
    "RetryPolicy",
    "RouteRule",
    "SchedulingConfig",
    "Reader",
    "ServerConfig",
    "StageConfig",
    "Timeouts",
    "ValidatorConfig",
    "load_config",
    "parse_config",
]
