"""The pure core: parsing, rules and formats that do no I/O beyond files."""
