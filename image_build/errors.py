"""The one exception type image_build raises for problems a user can fix."""


class BuildError(Exception):
    """A build step failed; the message says what, where and what was expected."""
