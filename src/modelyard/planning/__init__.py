"""Capacity and cost planning: traces, real replay against an endpoint (and, next, simulation)."""
