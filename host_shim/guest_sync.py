"""After a restore: the guest's wall clock and RNG brought up to date (issue 11, guest side)."""

from .instance import Instance


async def after_restore(instance: Instance) -> None:
    """placeholder: replaced by branch resync"""
    return None
