"""Protocol adapters: they translate SMTP, IMAP, HTTP and Maildir to calls into the service."""
