"""mailbot: an email-driven approval bot for contact changes on managed services."""

__version__ = "0.1.0"
