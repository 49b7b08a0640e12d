"""A domain-generalization research harness in the DomainBed / SWAD tradition."""

from domainbed.errors import UsageError

__all__ = ["UsageError"]
