"""The ``vitkit`` command: parses arguments, calls the library, prints. No logic of its own."""
